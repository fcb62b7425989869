package engine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/vmm"
)

// TestForSnapshot: a run from a snapshot takes its VMM and acceleration
// where the options leave them to be chosen, and keeps those given (the
// run then refuses the snapshot); a directory without a manifest is an
// error before any engine exists.
func TestForSnapshot(t *testing.T) {
	dir := t.TempDir()
	manifest := `{"format":1,"image_file":{"path":"/i.erofs","size":1},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"cloud-hypervisor","accel":"kvm"}`
	if err := os.WriteFile(filepath.Join(dir, SnapshotManifestFile), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name             string
		vmm, accel       string
		wantVMM, wantAcc string
	}{
		{"auto", VMMAuto, vmm.AccelAuto, "cloud-hypervisor", "kvm"},
		{"unset", "", "", "cloud-hypervisor", "kvm"},
		{"given", "qemu", vmm.AccelTCG, "qemu", vmm.AccelTCG},
		{"accel given", VMMAuto, vmm.AccelTCG, "cloud-hypervisor", vmm.AccelTCG},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts, err := ForSnapshot(Options{VMM: c.vmm, Accel: c.accel}, dir)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([2]string{c.wantVMM, c.wantAcc}, [2]string{opts.VMM, opts.Accel}); diff != "" {
				t.Errorf("VMM, accel (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := ForSnapshot(Options{}, filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "no manifest.json") {
		t.Errorf("ForSnapshot of a directory without a manifest: %v", err)
	}
}

// TestSnapshotDirName: a pool's directory names are file names, distinct
// for names that clean to the same text, and bounded.
func TestSnapshotDirName(t *testing.T) {
	a, b := snapshotDirName("docker.io/library/gcc:14"), snapshotDirName("docker.io/library/gcc_14")
	if a == b || strings.ContainsAny(a, "/:") || !strings.HasPrefix(a, "docker.io_library_gcc_14-") {
		t.Errorf("snapshotDirName: %q and %q", a, b)
	}
	if long := snapshotDirName(strings.Repeat("x", 300)); len(long) != 64+1+8 {
		t.Errorf("snapshotDirName of 300 bytes: %d bytes long", len(long))
	}
}

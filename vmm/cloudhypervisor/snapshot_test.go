package cloudhypervisor

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/vmm"
)

func TestRestoreArgs(t *testing.T) {
	got := RestoreArgs("/w/restore", "/w/api.sock")
	want := []string{"--restore", "source_url=file:///w/restore,memory_restore_mode=ondemand,resume=false", "--api-socket", "path=/w/api.sock"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// A path with a separator is quoted.
	if got := RestoreArgs("/w/a,b", "/s"); got[1] != `source_url="file:///w/a,b",memory_restore_mode=ondemand,resume=false` {
		t.Errorf("quoted: %q", got[1])
	}
}

// TestRewriteConfig gives a snapshot's config.json the run's disks, a
// serial socket and the data channel's socket, keeping everything else.
func TestRewriteConfig(t *testing.T) {
	in := `{"payload":{"kernel":"/k"},"memory":{"size":536870912,"shared":false},
		"disks":[{"path":"/img.erofs","readonly":true,"id":"_disk0"},{"path":"/old/io.img","id":"_disk1"}],
		"serial":{"mode":"File","file":"/old/console.log"},"console":{"mode":"Socket","socket":"/old/stream.sock","iommu":false}}`
	out, err := RewriteConfig([]byte(in), []vmm.Disk{{Path: "/img.erofs", ReadOnly: true}, {Path: "/new/io.img"}}, "/w/serial.sock", "/w/stream.sock")
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"payload": map[string]any{"kernel": "/k"},
		"memory":  map[string]any{"size": 536870912.0, "shared": false},
		"disks": []any{
			map[string]any{"path": "/img.erofs", "readonly": true, "id": "_disk0"},
			map[string]any{"path": "/new/io.img", "id": "_disk1"},
		},
		"serial":  map[string]any{"mode": "Socket", "socket": "/w/serial.sock"},
		"console": map[string]any{"mode": "Socket", "socket": "/w/stream.sock", "iommu": false},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// A snapshot whose console was off (an older pe's) keeps it off.
	off := strings.Replace(in, `{"mode":"Socket","socket":"/old/stream.sock","iommu":false}`, `{"mode":"Off"}`, 1)
	out, err = RewriteConfig([]byte(off), []vmm.Disk{{Path: "/img.erofs", ReadOnly: true}, {Path: "/new/io.img"}}, "/w/serial.sock", "/w/stream.sock")
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	json.Unmarshal(out, &got)
	if diff := cmp.Diff(map[string]any{"mode": "Off"}, got["console"]); diff != "" {
		t.Errorf("console off (-want +got):\n%s", diff)
	}
	for _, c := range []struct {
		disks []vmm.Disk
		want  string
	}{
		{[]vmm.Disk{{Path: "/a"}}, "2 disks, the run has 1"},
		{[]vmm.Disk{{Path: "/a"}, {Path: "/b"}}, "read-only"},
	} {
		if _, err := RewriteConfig([]byte(in), c.disks, "/s", "/t"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("RewriteConfig(%v): %v, want an error with %q", c.disks, err, c.want)
		}
	}
	if _, err := RewriteConfig([]byte("{"), nil, "/s", "/t"); err == nil {
		t.Error("RewriteConfig of broken JSON: no error")
	}
}

func TestSnapshotNeedsKVM(t *testing.T) {
	b := &Backend{Binary: "/nonexistent/cloud-hypervisor"}
	_, err := b.RestoreSnapshot(t.Context(), &vmm.Config{Kernel: "/k", Accel: vmm.AccelTCG}, t.TempDir(), []byte("\n"))
	if err == nil {
		t.Error("RestoreSnapshot without a snapshot: no error")
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, SnapshotConfigFile), []byte(`{"payload":{"kernel":"/k"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = b.RestoreSnapshot(t.Context(), &vmm.Config{Kernel: kernel, Accel: vmm.AccelTCG}, dir, []byte("\n"))
	if !errors.Is(err, ErrNeedsKVM) {
		t.Errorf("RestoreSnapshot under TCG: %v, want ErrNeedsKVM", err)
	}
}

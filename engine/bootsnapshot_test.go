package engine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestPruneBootSnapshots removes the boot snapshots (and failure notes)
// unused for bootSnapshotUnused, and the snapshots beyond the
// bootSnapshotsKept last used, but never the one in use, its note or a
// maker's temporary directory.
func TestPruneBootSnapshots(t *testing.T) {
	parent := t.TempDir()
	now := time.Now()
	old := now.Add(-bootSnapshotUnused - time.Hour)
	for name, mtime := range map[string]time.Time{
		"512m-1c-old":            old,
		"512m-1c-keep":           old,
		"256m-1c-recent":         now.Add(-time.Hour),
		"512m-1c-r2":             now.Add(-2 * time.Hour),
		"512m-1c-r3":             now.Add(-3 * time.Hour),
		"512m-1c-r4":             now.Add(-4 * time.Hour),
		"512m-1c-new.tmp-123456": old,
		"512m-1c-keep.failed":    old,
		"512m-1c-other.failed":   old,
		"512m-1c-r9.failed":      now.Add(-9 * time.Hour),
	} {
		d := filepath.Join(parent, name)
		if filepath.Ext(name) == bootSnapshotFailedSuffix {
			os.WriteFile(d, []byte("why"), 0o644)
		} else if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		} else {
			os.WriteFile(filepath.Join(d, "mem"), []byte("ram"), 0o644)
		}
		if err := os.Chtimes(d, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	pruneBootSnapshots(parent, filepath.Join(parent, "512m-1c-keep"), testLogger(t))
	want := []string{"256m-1c-recent", "512m-1c-keep", "512m-1c-keep.failed", "512m-1c-new.tmp-123456", "512m-1c-r2", "512m-1c-r3", "512m-1c-r9.failed"}
	if diff := cmp.Diff(want, dirEntries(t, parent)); diff != "" {
		t.Errorf("after pruning (-want +got):\n%s", diff)
	}
}

// TestReadSnapshotManifestBoot: a boot snapshot names no image file, an
// image's snapshot must, or an s3:// image instead.
func TestReadSnapshotManifestBoot(t *testing.T) {
	for _, c := range []struct {
		name, manifest string
		ok             bool
	}{
		{"boot", `{"format":1,"boot":true,"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, true},
		{"image", `{"format":1,"image_file":{"path":"/i.erofs","size":1},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, true},
		{"image without its file", `{"format":1,"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, false},
		{"boot with an image file", `{"format":1,"boot":true,"image_file":{"path":"/i.erofs","size":1},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, false},
		{"s3 image", `{"format":1,"image_s3":{"reference":"s3://b/p/n@sha256:ab","size":4096},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, true},
		{"s3 image without size", `{"format":1,"image_s3":{"reference":"s3://b/p/n@sha256:ab"},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, false},
		{"s3 image and a file", `{"format":1,"image_s3":{"reference":"s3://b/p/n@sha256:ab","size":4096},"image_file":{"path":"/i.erofs","size":1},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, false},
		{"boot with an s3 image", `{"format":1,"boot":true,"image_s3":{"reference":"s3://b/p/n@sha256:ab","size":4096},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, SnapshotManifestFile), []byte(c.manifest), 0o644)
			_, err := ReadSnapshotManifest(dir)
			if (err == nil) != c.ok {
				t.Errorf("ReadSnapshotManifest: %v, want ok %v", err, c.ok)
			}
		})
	}
}

// TestHostCPU identifies this host's CPU by its model and flags.
func TestHostCPU(t *testing.T) {
	id := hostCPU()
	if _, err := os.Stat("/proc/cpuinfo"); err != nil {
		t.Skip("no /proc/cpuinfo")
	}
	if !strings.Contains(id, "\n") || !strings.Contains(id, " fpu ") && !strings.HasPrefix(strings.SplitN(id, "\n", 2)[1], "fpu ") {
		t.Errorf("hostCPU() = %.200q, want the model name and the flags (fpu among them)", id)
	}
}

package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// entries lists dir's names and their modes.
func entries(t *testing.T, dir string) map[string]fs.FileMode {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]fs.FileMode{}
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			t.Fatal(err)
		}
		m[de.Name()] = fi.Mode()
	}
	return m
}

func TestWrite(t *testing.T) {
	for _, tt := range []struct {
		name string
		o    Options
		want fs.FileMode
	}{
		{"default mode", Options{}, 0o600},
		{"0644 synced", Options{Perm: 0o644, Sync: true, SyncDir: true}, 0o644},
		{"pattern", Options{Pattern: ".x-*.tmp", Perm: 0o640}, 0o640},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "f")
			if err := os.WriteFile(p, []byte("old"), 0o666); err != nil {
				t.Fatal(err)
			}
			if err := Write(p, []byte("new"), tt.o); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(p)
			if err != nil || string(b) != "new" {
				t.Errorf("read %q, %v; want new", b, err)
			}
			if diff := cmp.Diff(map[string]fs.FileMode{"f": tt.want}, entries(t, dir)); diff != "" {
				t.Errorf("directory (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAbortLeavesThePath(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Create(p, Options{Pattern: ".pe-*"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("half"); err != nil {
		t.Fatal(err)
	}
	if got := len(entries(t, dir)); got != 2 {
		t.Errorf("%d entries while writing, want the file and its temporary file", got)
	}
	f.Abort()
	f.Abort() // twice is fine
	if err := f.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "old" {
		t.Errorf("read %q, %v; want old", b, err)
	}
	if diff := cmp.Diff(map[string]fs.FileMode{"f": 0o644}, entries(t, dir)); diff != "" {
		t.Errorf("directory after Abort (-want +got):\n%s", diff)
	}
}

func TestCommitFailureCleansUp(t *testing.T) {
	dir := t.TempDir()
	// A directory at the path: the rename fails.
	p := filepath.Join(dir, "d")
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Write(p, []byte("data"), Options{Perm: 0o644})
	if err == nil {
		t.Fatal("Write over a non-empty directory succeeded")
	}
	if diff := cmp.Diff(map[string]fs.FileMode{"d": fs.ModeDir | 0o755}, entries(t, dir)); diff != "" {
		t.Errorf("directory after a failed Commit (-want +got):\n%s", diff)
	}
	// A missing directory: Create fails, nothing is made.
	if _, err := Create(filepath.Join(dir, "no", "f"), Options{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Create in a missing directory: %v, want ErrNotExist", err)
	}
}

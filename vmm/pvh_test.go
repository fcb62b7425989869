package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestExtractVmlinuxRejects(t *testing.T) {
	hdr := make([]byte, 0x400)
	copy(hdr[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(hdr[0x206:], 0x20f)
	hdr[0x1f1] = 1
	binary.LittleEndian.PutUint32(hdr[0x248:], 0x10)
	binary.LittleEndian.PutUint32(hdr[0x24c:], 0x20)
	for _, c := range []struct {
		desc string
		b    []byte
	}{
		{"empty", nil},
		{"not a bzImage", bytes.Repeat([]byte("x"), 4096)},
		{"payload outside", func() []byte { b := bytes.Clone(hdr); binary.LittleEndian.PutUint32(b[0x24c:], 1<<20); return b }()},
		{"unknown compression", hdr},
		{"old protocol", func() []byte { b := bytes.Clone(hdr); binary.LittleEndian.PutUint16(b[0x206:], 0x204); return b }()},
	} {
		if _, err := ExtractVmlinux(c.b); !errors.Is(err, ErrNoPVH) {
			t.Errorf("%s: %v, want ErrNoPVH", c.desc, err)
		}
	}
}

// TestBootImage extracts the installed guest kernel, when there is one.
func TestBootImage(t *testing.T) {
	k, err := FindKernel("")
	if err != nil {
		t.Skip(err)
	}
	cache := t.TempDir()
	p, err := BootImage(k, cache)
	if err != nil {
		t.Fatalf("BootImage: %v (Debian's cloud kernel has CONFIG_PVH=y)", err)
	}
	if filepath.Dir(p) != filepath.Join(cache, "kernel") {
		t.Errorf("BootImage = %s, want a file in the cache", p)
	}
	b, err := os.ReadFile(p)
	if err != nil || !hasPVHNote(b) {
		t.Errorf("%s: no PVH note (%v)", p, err)
	}
	fi, _ := os.Stat(p)
	if p2, err := BootImage(k, cache); err != nil || p2 != p {
		t.Errorf("second BootImage = %s, %v", p2, err)
	}
	if fi2, _ := os.Stat(p); !fi2.ModTime().Equal(fi.ModTime()) {
		t.Error("the cached image was rewritten")
	}
	// A file that is no bzImage is booted as it is.
	other := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(other, []byte("\x7fELF..."), 0o644)
	if p, err := BootImage(&Kernel{Vmlinuz: other}, cache); p != other || !errors.Is(err, ErrNoPVH) {
		t.Errorf("BootImage(non-bzImage) = %s, %v", p, err)
	}
}

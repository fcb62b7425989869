package qemu

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/jail"
)

// TestConfinedArgs runs the real argument step of a confined backend on
// real files and checks QEMU's arguments and the descriptors it inherits.
func TestConfinedArgs(t *testing.T) {
	if level, why := jail.Available(); level != jail.LevelFull {
		t.Skip(why)
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	initramfs := filepath.Join(dir, "initramfs,1.cpio")
	image := filepath.Join(dir, "rootfs.erofs")
	io := filepath.Join(dir, "io.img")
	for p, mode := range map[string]os.FileMode{kernel: 0o644, initramfs: 0o600, image: 0o644, io: 0o600} {
		if err := os.WriteFile(p, []byte(filepath.Base(p)), mode); err != nil {
			t.Fatal(err)
		}
	}
	cfg := (&vmm.Config{
		Kernel: kernel, Initramfs: initramfs,
		Cmdline: "quiet pe.image=/dev/vda pe.io=/dev/vdb",
		Disks:   []vmm.Disk{{Path: image, ReadOnly: true}, {Path: io}},
		Accel:   vmm.AccelTCG, WorkDir: dir,
	}).WithDefaults()
	b := &Backend{TSCKHz: func() int64 { return 2445426 }}
	var got *vmm.Launch
	errStop := errors.New("stop here")
	steps := b.DefaultSteps().Replace(vmm.StepStartProcess.Name, vmm.Step{Name: "capture", Fn: func(ctx context.Context, l *vmm.Launch) error {
		got = l
		// Read the descriptors before the cleanups close them.
		for i, f := range l.ExtraFiles {
			var st syscall.Stat_t
			if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			fl, _ := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
			b, _ := os.ReadFile(procFD(int(f.Fd())))
			kind := accessMode(fl)
			if link, _ := os.Readlink(procFD(int(f.Fd()))); strings.HasPrefix(link, "/memfd:") {
				kind = "memfd"
			}
			fds = append(fds, strconv.Itoa(3+i)+" "+string(b)+" "+kind)
		}
		return errStop
	}})
	if _, err := steps.Run(t.Context(), &vmm.Launch{Config: cfg, VMM: Name}); !errors.Is(err, errStop) {
		t.Fatalf("steps: %v", err)
	}
	golden(t, "confined-run", got.Args)
	want := []string{
		"3 vmlinux ro",
		"4 initramfs,1.cpio memfd", // 0600: a sealed copy
		"5 rootfs.erofs ro",
		"6 io.img ro", "7 io.img rw",
	}
	if diff := cmp.Diff(want, fds); diff != "" {
		t.Errorf("descriptors (-want +got):\n%s", diff)
	}
	if got.Jail == nil || got.Jail.UID != jail.UID || !strings.HasPrefix(got.Jail.Root, dir+"/root-") {
		t.Errorf("jail %+v, want uid %d and a root in %s", got.Jail, jail.UID, dir)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 4 {
		t.Errorf("the failed start left files: %v", ents)
	}
	b.NoConfine = true
	steps = b.DefaultSteps().Replace(vmm.StepStartProcess.Name, vmm.Step{Name: "capture", Fn: func(ctx context.Context, l *vmm.Launch) error {
		got = l
		return errStop
	}})
	steps.Run(t.Context(), &vmm.Launch{Config: cfg, VMM: Name})
	if diff := cmp.Diff(unconfinedArgs(cfg, 2445426), got.Args); diff != "" || got.Jail != nil || len(got.ExtraFiles) != 0 {
		t.Errorf("unconfined: jail %v, %d files, args (-want +got):\n%s", got.Jail, len(got.ExtraFiles), diff)
	}
}

// TestJailSpecHugePages checks that a confined QEMU goes without
// transparent huge pages under TCG only.
func TestJailSpecHugePages(t *testing.T) {
	for _, c := range []struct {
		accel  string
		userNS bool
		want   bool
	}{
		{vmm.AccelTCG, false, true},
		{vmm.AccelTCG, true, true},
		{vmm.AccelKVM, false, false},
		{vmm.AccelKVM, true, false},
	} {
		l := &vmm.Launch{Config: &vmm.Config{Accel: c.accel}, WorkDir: t.TempDir()}
		s, err := jailSpec(l, c.userNS)
		if err != nil {
			t.Fatal(err)
		}
		if s.NoHugePages != c.want {
			t.Errorf("%s (user namespace %v): NoHugePages %v, want %v", c.accel, c.userNS, s.NoHugePages, c.want)
		}
	}
}

// fds collects what TestConfinedArgs's capture step saw.
var fds []string

func accessMode(flags int) string {
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		return "ro"
	case unix.O_RDWR:
		return "rw"
	}
	return "wo"
}

func TestSealedCopy(t *testing.T) {
	const page = 4096
	src, err := os.Create(filepath.Join(t.TempDir(), "mem"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	size := int64(300 * page)
	src.Truncate(size)
	want := make([]byte, size)
	// Data, a zero page inside data, data across the 1 MiB buffer's end,
	// a hole, and data at the very end.
	for _, off := range []int64{0, 2*page + 17, 255*page + 4000, 299*page + page - 2} {
		want[off], want[off+1] = 0xaa, 0x55
		src.WriteAt(want[off:off+2], off)
	}
	src.WriteAt(make([]byte, page), page) // zeros written as data
	cp, err := sealedCopy("test", src)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	got := make([]byte, size+1)
	n, _ := cp.ReadAt(got, 0)
	if int64(n) != size || !bytes.Equal(got[:n], want) {
		t.Errorf("the copy differs (%d bytes)", n)
	}
	if _, err := cp.WriteAt([]byte{1}, 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("writing the sealed copy: %v, want EPERM", err)
	}
	if err := cp.Truncate(0); err == nil {
		t.Error("the sealed copy shrank")
	}
	// A private writable mapping (what QEMU makes) still works.
	m, err := syscall.Mmap(int(cp.Fd()), 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("private mapping: %v", err)
	}
	m[0] = 7
	syscall.Munmap(m)
	if b := make([]byte, 1); func() bool { cp.ReadAt(b, 0); return b[0] != 0xaa }() {
		t.Error("a private mapping changed the copy")
	}
}

func TestConfinementString(t *testing.T) {
	if got := (&Backend{NoConfine: true}).Confinement(); got.Sandbox || got.Jail || !strings.Contains(got.String(), ConfineEnv) {
		t.Errorf("NoConfine: %+v %q", got, got)
	}
	t.Setenv(ConfineEnv, "0")
	if !New("").NoConfine {
		t.Errorf("%s=0 leaves confinement on", ConfineEnv)
	}
	t.Setenv(ConfineEnv, "")
	if New("").NoConfine {
		t.Errorf("confinement is off by default")
	}
}

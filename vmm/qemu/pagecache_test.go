package qemu

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/internal/atomicfile"
	"github.com/pe-project/pe/vmm"
)

// TestRestoreKeepsPageCache restores a snapshot whose disk is a file the
// host has in its page cache: the restore must leave that cache alone.
// QEMU drops a file disk's page cache at the end of an incoming migration
// unless told not to (drop-cache), so every run restored from the boot
// snapshot read its image from disk again (52 MB per gcc run of the
// lazy benchmark's image, measured with perf's block:block_rq_issue).
// The restored guest does not read the disk, so whatever is missing
// afterwards was dropped.
func TestRestoreKeepsPageCache(t *testing.T) {
	k, busybox := nbdVMNeeds(t)
	dir := t.TempDir()
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type == unix.TMPFS_MAGIC {
		t.Skipf("%s is on tmpfs, whose pages a restore cannot drop: the test needs a disk filesystem (set TMPDIR)", dir)
	}
	disk := filepath.Join(dir, "disk.img")
	// Written out, so that its pages are clean: dirty pages are not
	// dropped.
	if err := atomicfile.Write(disk, randomImage(4<<20, 5, 6), atomicfile.Options{Perm: 0o600, Sync: true}); err != nil {
		t.Fatal(err)
	}
	initrd := hashInitrd(t, k, busybox, "echo snap-ready\nread line\npoweroff -f\n")
	cfg := &vmm.Config{
		Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
		Disks: []vmm.Disk{{Path: disk, ReadOnly: true}},
		Accel: vmm.AccelTCG, MemoryMiB: 256,
	}
	b := New("")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	snap := t.TempDir()
	if err := b.SaveSnapshot(ctx, cfg, snap, []byte("snap-ready")); err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	// Read the whole file into the page cache, then restore.
	if _, err := os.ReadFile(disk); err != nil {
		t.Fatal(err)
	}
	if got, total := residentPages(t, disk); got != total {
		t.Fatalf("before the restore, %d of the disk's %d pages are in the page cache; want all (reading it should have put them there)", got, total)
	}
	m, err := b.RestoreSnapshot(ctx, cfg, snap, []byte("\n"))
	if err != nil {
		t.Fatalf("RestoreSnapshot: %v", err)
	}
	defer m.Kill()
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v\nconsole:\n%s", err, m.ConsoleLog())
	}
	if got, total := residentPages(t, disk); got != total {
		t.Errorf("after the restore, %d of the disk's %d pages are in the page cache; the restore dropped the rest", got, total)
	}
}

// residentPages returns how many of path's pages are in the page cache,
// and how many pages it has.
func residentPages(t *testing.T, path string) (resident, total int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	page := os.Getpagesize()
	vec := make([]byte, (len(mem)+page-1)/page)
	// x/sys/unix has no Mincore wrapper.
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(len(mem)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore %s: %v", path, errno)
	}
	for _, v := range vec {
		resident += int(v & 1)
	}
	return resident, len(vec)
}

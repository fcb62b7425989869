package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore/nbd"
	"github.com/pe-project/pe/internal/initrdtest"
	"github.com/pe-project/pe/vmm"
)

// TestNBDArgs checks the -drive of an NBD disk: QEMU's NBD client on the
// socket QEMU inherits, by number, with the export's name escaped.
func TestNBDArgs(t *testing.T) {
	_, theirs := socketPair(t)
	cfg := (&vmm.Config{
		Kernel: "/k/vmlinuz", Cmdline: "quiet",
		Disks: []vmm.Disk{{NBD: theirs, Export: "img,1", ReadOnly: true}, {Path: "/tmp/io.img"}},
	}).WithDefaults()
	l := &vmm.Launch{Config: cfg}
	a, err := pathAccess(cfg, fdTable{l})
	if err != nil {
		t.Fatal(err)
	}
	defer l.ExtraFiles[0].Close()
	args := argsWith(cfg, 0, a)
	i := slices.Index(args, "-drive")
	want := []string{
		"-drive", "id=disk0,format=raw,if=none,file.driver=nbd,file.server.type=fd,file.server.str=3,file.export=img,,1,readonly=on",
		"-device", "virtio-blk-device,drive=disk0,cyls=16383,heads=16,secs=63",
		"-drive", "id=disk1,file=/tmp/io.img,file.drop-cache=off,format=raw,if=none,cache=unsafe",
		"-device", "virtio-blk-device,drive=disk1,cyls=16383,heads=16,secs=63",
		"-device", "virtio-serial-device",
		"-chardev", "null,id=pe-stream",
		"-device", "virtserialport,chardev=pe-stream,name=pe.stream",
	}
	if i < 0 || !slices.Equal(args[i:], want) {
		t.Errorf("disk arguments %q, want %q", args[max(i, 0):], want)
	}
	if len(l.ExtraFiles) != 1 || l.ExtraFiles[0].Fd() == theirs.Fd() {
		t.Fatalf("QEMU inherits %v, want a copy of the NBD socket", l.ExtraFiles)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(l.ExtraFiles[0].Fd()), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		t.Errorf("descriptor 3 is not a socket: %v %o", err, st.Mode)
	}
}

// TestBootNBD boots the guest, confined and not, with its disk an export
// of pe's NBD server reached through a socket pair whose one end QEMU
// inherits; the guest hashes /dev/vda, which must match the image.
func TestBootNBD(t *testing.T) {
	k, busybox := nbdVMNeeds(t)
	img := randomImage(3<<20, 1, 2)
	want := fmt.Sprintf("%x  /dev/vda", sha256.Sum256(img))
	initrd := hashInitrd(t, k, busybox, "sha256sum /dev/vda\npoweroff -f\n")
	for _, confined := range []bool{true, false} {
		t.Run(fmt.Sprintf("confined=%v", confined), func(t *testing.T) {
			b := New("")
			b.NoConfine = !confined
			if c := b.Confinement(); c.Jail != confined {
				t.Skipf("confinement: %s", c)
			}
			s, theirs := serveNBD(t, img)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			start := time.Now()
			m, err := b.Start(ctx, &vmm.Config{
				Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
				Disks: []vmm.Disk{{NBD: theirs, Export: "img", ReadOnly: true}},
				Accel: vmm.AccelTCG, MemoryMiB: 256, WorkDir: t.TempDir(),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Kill()
			theirs.Close() // QEMU has its copy
			if err := m.Wait(ctx); err != nil {
				t.Fatalf("Wait: %v\nconsole:\n%s", err, m.ConsoleLog())
			}
			t.Logf("guest hashed the NBD disk in %v; server: %+v", time.Since(start), s.Stats())
			if !strings.Contains(string(m.ConsoleLog()), want) {
				t.Errorf("the guest's hash of /dev/vda is not %s; console:\n%s", want, m.ConsoleLog())
			}
			if st := s.Stats(); st.ReadBytes < uint64(len(img)) {
				t.Errorf("the server sent %d bytes, fewer than the image's %d", st.ReadBytes, len(img))
			}
			// QEMU says NBD_CMD_DISC as it exits: the server's connection ends.
			for deadline := time.Now().Add(10 * time.Second); s.Stats().Connections != 0; time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the server's connection outlived QEMU")
				}
			}
		})
	}
}

// serveNBD serves img as export "img" of a new NBD server over a new
// socket pair and returns the server and the pair's other end, both
// closed when the test ends.
func serveNBD(t *testing.T, img []byte) (*nbd.Server, *os.File) {
	t.Helper()
	s := nbd.NewServer(nbd.Options{Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { s.Close() })
	if err := s.AddExport(nbd.Export{Name: "img", Data: bytes.NewReader(img), Size: int64(len(img))}); err != nil {
		t.Fatal(err)
	}
	mine, theirs := socketPair(t)
	nc, err := net.FileConn(mine)
	if err != nil {
		t.Fatal(err)
	}
	// nc holds a copy: closing mine leaves the connection's end to nc
	// alone, so that QEMU sees the end when the server closes it.
	mine.Close()
	if err := s.ServeConn(nc); err != nil {
		t.Fatal(err)
	}
	return s, theirs
}

// TestSnapshotNBD saves a snapshot of a guest whose disk is an NBD export
// over an inherited socket, confined, and restores it with a new
// connection to another server of the same image: the restored guest,
// its page cache dropped, hashes /dev/vda through the new connection.
func TestSnapshotNBD(t *testing.T) {
	k, busybox := nbdVMNeeds(t)
	img := randomImage(3<<20, 3, 4)
	want := fmt.Sprintf("%x  /dev/vda", sha256.Sum256(img))
	initrd := hashInitrd(t, k, busybox, `echo snap-ready
read line
echo 3 > /proc/sys/vm/drop_caches
sha256sum /dev/vda
poweroff -f
`)
	b := New("")
	t.Logf("confinement: %s", b.Confinement())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cfg := func(nbdSock *os.File) *vmm.Config {
		return &vmm.Config{
			Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
			Disks: []vmm.Disk{{NBD: nbdSock, Export: "img", ReadOnly: true}},
			Accel: vmm.AccelTCG, MemoryMiB: 256,
		}
	}
	_, saveSock := serveNBD(t, img)
	if err := b.SaveSnapshot(ctx, cfg(saveSock), dir, []byte("snap-ready")); err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	s, restoreSock := serveNBD(t, img)
	start := time.Now()
	m, err := b.RestoreSnapshot(ctx, cfg(restoreSock), dir, []byte("\n"))
	if err != nil {
		t.Fatalf("RestoreSnapshot: %v", err)
	}
	defer m.Kill()
	restoreSock.Close()
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v\nconsole:\n%s", err, m.ConsoleLog())
	}
	t.Logf("restored guest hashed the NBD disk in %v; server: %+v", time.Since(start), s.Stats())
	if !strings.Contains(string(m.ConsoleLog()), want) {
		t.Errorf("the restored guest's hash of /dev/vda is not %s; console:\n%s", want, m.ConsoleLog())
	}
	if st := s.Stats(); st.ReadBytes < uint64(len(img)) {
		t.Errorf("the restore's server sent %d bytes, fewer than the image's %d", st.ReadBytes, len(img))
	}
}

// TestNBDServerGone ends the NBD connection once QEMU has opened the
// disk: the guest's reads fail with I/O errors (QEMU cannot reconnect
// an inherited socket) and the VM still powers off; nothing hangs.
func TestNBDServerGone(t *testing.T) {
	k, busybox := nbdVMNeeds(t)
	img := make([]byte, 1<<20)
	initrd := hashInitrd(t, k, busybox, "sha256sum /dev/vda || echo hash-failed\npoweroff -f\n")
	s, theirs := serveNBD(t, img)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	m, err := New("").Start(ctx, &vmm.Config{
		Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
		Disks: []vmm.Disk{{NBD: theirs, Export: "img", ReadOnly: true}},
		Accel: vmm.AccelTCG, MemoryMiB: 256,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	theirs.Close()
	// QEMU reads the disk's first sector when it opens it, before the
	// guest runs.
	for s.Stats().Reads == 0 {
		if ctx.Err() != nil {
			t.Fatal("QEMU never read the disk")
		}
		time.Sleep(time.Millisecond)
	}
	s.RemoveExport("img")
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v\nconsole:\n%s", err, m.ConsoleLog())
	}
	if !strings.Contains(string(m.ConsoleLog()), "hash-failed") {
		t.Errorf("the guest read the disk after its server had gone; console:\n%s", m.ConsoleLog())
	}
}

// socketPair returns the two ends of a connected Unix stream socket pair,
// closed when the test ends.
func socketPair(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, b := os.NewFile(uintptr(fds[0]), "pe-end"), os.NewFile(uintptr(fds[1]), "qemu-end")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// nbdVMNeeds skips the test with -short or when QEMU, the guest kernel or
// busybox is missing, and returns the kernel and busybox.
func nbdVMNeeds(t *testing.T) (*vmm.Kernel, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if _, err := Find(""); err != nil {
		t.Skip(err)
	}
	k, err := vmm.FindKernel("")
	if err != nil {
		t.Skip(err)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("needs busybox (busybox-static)")
	}
	return k, busybox
}

// randomImage returns n bytes from a generator seeded with seed1, seed2.
func randomImage(n int, seed1, seed2 uint64) []byte {
	img := make([]byte, n)
	r := rand.New(rand.NewPCG(seed1, seed2))
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	return img
}

// hashInitrd writes a gzipped newc initramfs: busybox, the virtio-mmio
// block modules of kernel k, and an init that waits for /dev/vda and runs
// script.
func hashInitrd(t *testing.T, k *vmm.Kernel, busybox, script string) string {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"bin/busybox": bb}
	for _, m := range []string{"drivers/virtio/virtio.ko", "drivers/virtio/virtio_ring.ko",
		"drivers/virtio/virtio_mmio.ko", "drivers/block/virtio_blk.ko"} {
		if k.ModulesDir == "" {
			break
		}
		b, err := os.ReadFile(filepath.Join(k.ModulesDir, m))
		if os.IsNotExist(err) {
			continue // built in
		} else if err != nil {
			t.Fatal(err)
		}
		files["lib/"+filepath.Base(m)] = b
	}
	// QEMU's microvm describes its virtio-mmio devices in ACPI tables:
	// virtio_mmio needs no device= parameters.
	files["init"] = []byte(`#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk; do [ -f /lib/$m.ko ] && insmod /lib/$m.ko; done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
` + script)
	return initrdtest.Write(t, files)
}

package nbd

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/pe-project/pe/internal/initrdtest"
)

// TestVMReadsEROFS boots the guest kernel under QEMU with an EROFS image
// served by this server as its disk (-drive file=nbd+unix://…, QEMU's own
// NBD client, as pe's VMs will use it). The guest hashes the whole device
// and every file of the mounted image; the hashes must match the host's.
func TestVMReadsEROFS(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	qemu := needTool(t, "qemu-system-x86_64", "qemu-system-x86")
	needTool(t, "mkfs.erofs", "erofs-utils")
	busybox := needTool(t, "busybox", "busybox-static")
	kdir := guestKernelDir()
	if _, err := os.Stat(filepath.Join(kdir, "vmlinuz")); err != nil {
		t.Skipf("no guest kernel in %s (make kernel): %v", kdir, err)
	}

	tree := t.TempDir()
	want := map[string]string{}
	for i, size := range []int{0, 1, 4095, 70000, 3 << 20} {
		name := fmt.Sprintf("f%d", i)
		b := randomBytes(size, uint64(100+i))
		if err := os.WriteFile(filepath.Join(tree, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		want["./"+name] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	img := filepath.Join(t.TempDir(), "img.erofs")
	if out, err := exec.CommandContext(t.Context(), "mkfs.erofs", img, tree).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs: %v\n%s", err, out)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	imgBytes, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	want["/dev/vda"] = fmt.Sprintf("%x", sha256.Sum256(imgBytes))
	ts := startServer(t, Options{}, Export{Name: "img", Data: f, Size: st.Size()})

	initrd := vmInitrd(t, kdir, busybox)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-M", "q35", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
		"-kernel", filepath.Join(kdir, "vmlinuz"), "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet",
		"-drive", "file="+ts.url("img")+",format=raw,if=none,id=d0,readonly=on", "-device", "virtio-blk-pci,drive=d0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qemu: %v\n%s", err, out)
	}
	got := map[string]string{}
	// The firmware's escape codes may precede the first line.
	for _, m := range regexp.MustCompile(`([0-9a-f]{64})  (\S+)`).FindAllStringSubmatch(string(out), -1) {
		got[m[2]] = m[1]
	}
	for p, sum := range want {
		if got[p] != sum {
			t.Errorf("guest sha256 of %s: %q, want %s", p, got[p], sum)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", out)
	}
}

func guestKernelDir() string {
	if d := os.Getenv("PE_DATA_DIR"); d != "" {
		return filepath.Join(d, "kernel")
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "pe", "kernel")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "pe", "kernel")
}

// vmInitrd writes a gzipped newc initramfs: busybox, the virtio-blk and
// erofs modules, and an init that hashes /dev/vda and the files of the
// EROFS on it.
func vmInitrd(t *testing.T, kdir, busybox string) string {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{"bin/busybox": bb}
	for _, m := range []string{"drivers/virtio/virtio.ko", "drivers/virtio/virtio_ring.ko",
		"drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
		"drivers/virtio/virtio_pci.ko", "drivers/block/virtio_blk.ko", "lib/libcrc32c.ko", "fs/erofs/erofs.ko"} {
		b, err := os.ReadFile(filepath.Join(kdir, "modules", m))
		if os.IsNotExist(err) {
			continue // built in
		} else if err != nil {
			t.Fatal(err)
		}
		files["lib/"+filepath.Base(m)] = b
	}
	files["init"] = []byte(`#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for _ in 1 2 3; do for m in /lib/*.ko; do insmod $m 2>/dev/null; done; done
for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 1; done
sha256sum /dev/vda
mount -t erofs -o ro /dev/vda /mnt && (cd /mnt && find . -type f | sort | xargs sha256sum)
poweroff -f
`)
	return initrdtest.Write(t, files)
}

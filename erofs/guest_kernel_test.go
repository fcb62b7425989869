package erofs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestGuestKernelReadsCompressed boots the guest kernel (Debian's 6.1
// cloud kernel, installed by scripts/get-kernel.sh) under QEMU with
// compressed images attached, and has it mount them and hash every file:
// the kernel pe's VMs run must read what the writer makes, not only the
// host's newer one. It takes a minute under TCG, so it runs only with
// PE_TEST_GUEST_KERNEL=1.
func TestGuestKernelReadsCompressed(t *testing.T) {
	if os.Getenv("PE_TEST_GUEST_KERNEL") != "1" {
		t.Skip("boots the guest kernel under QEMU; set PE_TEST_GUEST_KERNEL=1 (after scripts/get-kernel.sh)")
	}
	kdir := guestKernelDir()
	for _, need := range []string{"qemu-system-x86_64", "busybox"} {
		if _, err := exec.LookPath(need); err != nil {
			t.Skipf("needs %s", need)
		}
	}
	if _, err := os.Stat(filepath.Join(kdir, "vmlinuz")); err != nil {
		t.Skipf("no guest kernel in %s (run scripts/get-kernel.sh): %v", kdir, err)
	}
	spec := zTree(3 << 20)
	var imgs []string
	for _, o := range []WriterOptions{
		{Compression: CompressionLZ4HC},
		{Compression: CompressionLZ4, CompressIndex: IndexFull},
		{Compression: CompressionLZ4HC, PclusterSize: 65536},
		{Compression: CompressionLZ4HC, PclusterSize: 16384, CompressIndex: IndexFull},
	} {
		imgs = append(imgs, spec.write(t, o))
	}
	want := map[string]string{}
	for p, f := range spec.expected(t, WriterOptions{}) {
		if f.Type == "file" {
			want["./"+p] = f.Digest
		}
	}
	initrd := guestInitrd(t, kdir, len(imgs))
	args := []string{"-M", "q35", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot",
		"-kernel", filepath.Join(kdir, "vmlinuz"), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet"}
	for _, img := range imgs {
		args = append(args, "-drive", "file="+img+",format=raw,if=virtio,readonly=on")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu: %v\n%s", err, out)
	}
	// The init prints "IMAGE n" before each image's "sha256  path" lines
	// and "MOUNT-FAILED n" when a mount fails.
	got := make([]map[string]string, len(imgs))
	cur := -1
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(strings.ReplaceAll(sc.Text(), "\r", ""))
		var n int
		if i := strings.Index(line, "IMAGE "); i >= 0 { // after the firmware's escape codes
			line = line[i:]
		}
		if _, err := fmt.Sscanf(line, "IMAGE %d", &n); err == nil && n < len(imgs) {
			cur = n
			got[cur] = map[string]string{}
			continue
		}
		if strings.HasPrefix(line, "MOUNT-FAILED") {
			t.Errorf("the guest kernel could not mount an image: %s", line)
		}
		if sum, path, ok := strings.Cut(line, "  "); ok && cur >= 0 && len(sum) == 64 {
			got[cur][path] = sum
		}
	}
	for i := range imgs {
		if len(got[i]) != len(want) {
			t.Errorf("image %d: the guest hashed %d files, want %d\n%s", i, len(got[i]), len(want), out)
			continue
		}
		for p, d := range want {
			if got[i][p] != d {
				t.Errorf("image %d: %s: guest sha256 %s, want %s", i, p, got[i][p], d)
			}
		}
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

// guestInitrd writes a gzipped newc initramfs: busybox, the modules for
// virtio-blk and erofs, and an init that mounts /dev/vda, vdb, ... and
// hashes their files.
func guestInitrd(t *testing.T, kdir string, disks int) string {
	t.Helper()
	bb, err := os.ReadFile(mustLookPath(t, "busybox"))
	if err != nil {
		t.Fatal(err)
	}
	mods := []string{"drivers/virtio/virtio.ko", "drivers/virtio/virtio_ring.ko",
		"drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
		"drivers/virtio/virtio_pci.ko", "drivers/block/virtio_blk.ko", "lib/libcrc32c.ko", "fs/erofs/erofs.ko"}
	var script strings.Builder
	script.WriteString("#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n" +
		"mkdir -p /proc /sys /dev /mnt\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\n")
	files := map[string][]byte{"bin/busybox": bb}
	for _, m := range mods {
		b, err := os.ReadFile(filepath.Join(kdir, "modules", m))
		if err != nil {
			if os.IsNotExist(err) {
				continue // built in
			}
			t.Fatal(err)
		}
		name := "lib/" + filepath.Base(m)
		files[name] = b
	}
	// Dependencies first whatever the list order: retry what failed.
	script.WriteString("for _ in 1 2 3; do for m in /lib/*.ko; do insmod $m 2>/dev/null; done; done\n")
	for i := range disks {
		dev := fmt.Sprintf("/dev/vd%c", 'a'+i)
		fmt.Fprintf(&script, "for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b %[1]s ] && break; sleep 1; done\n"+
			"mkdir -p /mnt/%[2]d\nif mount -t erofs -o ro %[1]s /mnt/%[2]d; then echo IMAGE %[2]d; "+
			"(cd /mnt/%[2]d && find . -type f | sort | xargs sha256sum); else echo MOUNT-FAILED %[2]d; fi\n", dev, i)
	}
	script.WriteString("poweroff -f\n")
	files["init"] = []byte(script.String())

	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	names := []string{"bin", "lib"}
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for i, n := range names {
		mode, data := uint32(0o040755), []byte(nil)
		if b, ok := files[n]; ok {
			mode, data = 0o100755, b
		}
		cpioEntry(zw, i+1, n, mode, data)
	}
	cpioEntry(zw, 0, "TRAILER!!!", 0, nil)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "initrd.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// cpioEntry writes one newc record.
func cpioEntry(w *gzip.Writer, ino int, name string, mode uint32, data []byte) {
	fmt.Fprintf(w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.Write(append([]byte(name), 0))
	pad := func(n int) { w.Write(make([]byte, (4-n%4)%4)) }
	pad(110 + len(name) + 1)
	w.Write(data)
	pad(len(data))
}

func mustLookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s", name)
	}
	return p
}

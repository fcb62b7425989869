package qemu

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/fusedisk"
	"github.com/pe-project/pe/vmm"
)

// The FUSE disk is how cloud-hypervisor, which has no NBD client, reads a
// lazy image: a regular file on pe's FUSE mount. cloud-hypervisor needs
// KVM, which this host lacks, so these tests give the same file to QEMU
// as a plain file disk, QEMU standing in for cloud-hypervisor.
const fuseStandIn = "cloud-hypervisor (needs KVM) cannot run here; QEMU reads the FUSE file in its place"

// fuseVMNeeds skips unless a VM can boot and FUSE can be mounted.
func fuseVMNeeds(t *testing.T) (*vmm.Kernel, string) {
	t.Helper()
	k, busybox := nbdVMNeeds(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse (%v); %s", err, fuseStandIn)
	}
	if os.Geteuid() != 0 {
		t.Skipf("needs root: pe's FUSE mount must allow QEMU's user (allow_other); %s", fuseStandIn)
	}
	return k, busybox
}

// lazyImage writes img to a file and returns its index and a fetcher
// reading it: a remote image whose chunks come through the store.
func lazyImage(t *testing.T, img []byte) (*blockstore.Index, blockstore.Fetcher) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "remote.img")
	if err := os.WriteFile(p, img, 0o600); err != nil {
		t.Fatal(err)
	}
	ix, err := blockstore.BuildIndexFile(t.Context(), p, 512<<10)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return ix, blockstore.FileFetcher{R: f}
}

// fuseMount mounts pe's FUSE file system in a directory only root can
// search (allow_other lets QEMU's user read the files it is handed, not
// find them), closed when the test ends, when nothing may stay mounted.
func fuseMount(t *testing.T) *fusedisk.FS {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := fusedisk.Mount(dir, fusedisk.Options{AllowOther: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("closing the FUSE mount: %v", err)
		}
		info, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		if fusedisk.MountedIn(info, m.Dir()) {
			t.Errorf("%s is still mounted", m.Dir())
		}
	})
	return m
}

// TestBootFUSE boots the guest, confined and not, with its disk a file
// on pe's FUSE mount that reads a lazy image through a chunk store; the
// guest hashes /dev/vda, which must match the image. The first run finds
// the store cold (every chunk fetched), the second all cached.
func TestBootFUSE(t *testing.T) {
	k, busybox := fuseVMNeeds(t)
	t.Log(fuseStandIn)
	img := randomImage(3<<20+4096, 5, 6)
	want := fmt.Sprintf("%x  /dev/vda", sha256.Sum256(img))
	initrd := hashInitrd(t, k, busybox, "sha256sum /dev/vda\npoweroff -f\n")
	ix, fetcher := lazyImage(t, img)
	store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	m := fuseMount(t)
	for run, confined := range []bool{true, false} {
		t.Run(fmt.Sprintf("confined=%v", confined), func(t *testing.T) {
			b := New("")
			b.NoConfine = !confined
			if c := b.Confinement(); c.Jail != confined {
				t.Skipf("confinement: %s", c)
			}
			image, err := store.Open(ix, fetcher)
			if err != nil {
				t.Fatal(err)
			}
			defer image.Close()
			// A new name each run: a new inode, no page cache, so the
			// second run's reads reach the store.
			name := fmt.Sprintf("run%d.img", run)
			path, err := m.Add(name, image, image.Size())
			if err != nil {
				t.Fatal(err)
			}
			defer m.Remove(name)
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			start := time.Now()
			vm, err := b.Start(ctx, &vmm.Config{
				Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
				Disks: []vmm.Disk{{Path: path, ReadOnly: true}},
				Accel: vmm.AccelTCG, MemoryMiB: 256, WorkDir: t.TempDir(),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill()
			if err := vm.Wait(ctx); err != nil {
				t.Fatalf("Wait: %v\nconsole:\n%s", err, vm.ConsoleLog())
			}
			st := image.Stats()
			t.Logf("guest hashed the FUSE disk in %v; store: %+v", time.Since(start), st)
			if !strings.Contains(string(vm.ConsoleLog()), want) {
				t.Errorf("the guest's hash of /dev/vda is not %s; console:\n%s", want, vm.ConsoleLog())
			}
			if run == 0 && (st.Gets == 0 || st.Misses != int64(len(ix.Chunks))) {
				t.Errorf("cold store: %d GETs and %d misses for an image of %d chunks", st.Gets, st.Misses, len(ix.Chunks))
			}
			if run == 1 && (st.Gets != 0 || st.Misses != 0 || st.Hits == 0) {
				t.Errorf("warm store: %d GETs, %d misses, %d hits; want hits only", st.Gets, st.Misses, st.Hits)
			}
		})
	}
}

// TestSnapshotFUSE saves a snapshot of a confined guest whose disk is a
// FUSE file and restores it with the disk a new file of the same image
// on the mount, read through a cold store: the restored guest, its page
// cache dropped, hashes /dev/vda through the new file.
func TestSnapshotFUSE(t *testing.T) {
	k, busybox := fuseVMNeeds(t)
	t.Log(fuseStandIn)
	img := randomImage(3<<20, 7, 8)
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
	ix, fetcher := lazyImage(t, img)
	m := fuseMount(t)
	add := func(name string) (string, *blockstore.Image) {
		t.Helper()
		store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		image, err := store.Open(ix, fetcher)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { image.Close() })
		path, err := m.Add(name, image, image.Size())
		if err != nil {
			t.Fatal(err)
		}
		return path, image
	}
	cfg := func(path string) *vmm.Config {
		return &vmm.Config{
			Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
			Disks: []vmm.Disk{{Path: path, ReadOnly: true}},
			Accel: vmm.AccelTCG, MemoryMiB: 256,
		}
	}
	dir := t.TempDir()
	savePath, _ := add("save.img")
	if err := b.SaveSnapshot(ctx, cfg(savePath), dir, []byte("snap-ready")); err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	if err := m.Remove("save.img"); err != nil {
		t.Fatal(err)
	}
	restorePath, image := add("restore.img")
	start := time.Now()
	vm, err := b.RestoreSnapshot(ctx, cfg(restorePath), dir, []byte("\n"))
	if err != nil {
		t.Fatalf("RestoreSnapshot: %v", err)
	}
	defer vm.Kill()
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v\nconsole:\n%s", err, vm.ConsoleLog())
	}
	st := image.Stats()
	t.Logf("restored guest hashed the FUSE disk in %v; store: %+v", time.Since(start), st)
	if !strings.Contains(string(vm.ConsoleLog()), want) {
		t.Errorf("the restored guest's hash of /dev/vda is not %s; console:\n%s", want, vm.ConsoleLog())
	}
	if st.Misses != int64(len(ix.Chunks)) {
		t.Errorf("the restore's cold store missed %d chunks, want all %d", st.Misses, len(ix.Chunks))
	}
}

// failAfter is a Fetcher whose reads past the image's first chunk fail
// for good: storage gone once QEMU has opened the disk.
type failAfter struct {
	blockstore.Fetcher
	chunk int64
}

func (f failAfter) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	if off >= f.chunk {
		return nil, blockstore.Permanent(fmt.Errorf("object gone (test) at %d", off))
	}
	return f.Fetcher.Fetch(ctx, off, length)
}

// TestFUSEFetchFails: chunks that cannot be fetched are I/O errors in the
// confined guest, which still powers off; nothing hangs, and the mount
// closes.
func TestFUSEFetchFails(t *testing.T) {
	k, busybox := fuseVMNeeds(t)
	t.Log(fuseStandIn)
	img := randomImage(2<<20, 9, 10)
	initrd := hashInitrd(t, k, busybox, "sha256sum /dev/vda || echo hash-failed\npoweroff -f\n")
	ix, fetcher := lazyImage(t, img)
	store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: 10 * time.Second, Attempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	image, err := store.Open(ix, failAfter{fetcher, ix.ChunkSize})
	if err != nil {
		t.Fatal(err)
	}
	defer image.Close()
	m := fuseMount(t)
	path, err := m.Add("img", image, image.Size())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	vm, err := New("").Start(ctx, &vmm.Config{
		Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
		Disks: []vmm.Disk{{Path: path, ReadOnly: true}},
		Accel: vmm.AccelTCG, MemoryMiB: 256,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v\nconsole:\n%s", err, vm.ConsoleLog())
	}
	t.Logf("store: %+v", image.Stats())
	if !strings.Contains(string(vm.ConsoleLog()), "hash-failed") {
		t.Errorf("the guest read the whole disk though its chunks could not be fetched; console:\n%s", vm.ConsoleLog())
	}
}

// hangAfter is a Fetcher whose reads past the image's first chunk hang
// until their context ends: storage that stopped answering.
type hangAfter struct {
	blockstore.Fetcher
	chunk   int64
	started chan struct{}
	once    *sync.Once
}

func (f hangAfter) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	if off < f.chunk {
		return f.Fetcher.Fetch(ctx, off, length)
	}
	f.once.Do(func() { close(f.started) })
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestFUSECloseWhileVMReads closes the mount while QEMU, confined or
// not, is blocked reading a chunk that never comes: Close returns within
// its timeout, QEMU's read fails, the guest sees an I/O error and powers
// off, and nothing stays mounted.
func TestFUSECloseWhileVMReads(t *testing.T) {
	k, busybox := fuseVMNeeds(t)
	t.Log(fuseStandIn)
	for _, confined := range []bool{true, false} {
		t.Run(fmt.Sprintf("confined=%v", confined), func(t *testing.T) {
			b := New("")
			b.NoConfine = !confined
			if c := b.Confinement(); c.Jail != confined {
				t.Skipf("confinement: %s", c)
			}
			closeWhileVMReads(t, b, k, busybox)
		})
	}
}

func closeWhileVMReads(t *testing.T, b *Backend, k *vmm.Kernel, busybox string) {
	img := randomImage(2<<20, 11, 12)
	// The guest lives on after the failed read, keeping QEMU's descriptor
	// open: Close has to abort the connection.
	initrd := hashInitrd(t, k, busybox, "sha256sum /dev/vda || echo hash-failed\nsleep 600\npoweroff -f\n")
	ix, fetcher := lazyImage(t, img)
	store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: time.Hour, Attempts: 1, HedgeAfter: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	hang := hangAfter{fetcher, ix.ChunkSize, make(chan struct{}), new(sync.Once)}
	image, err := store.Open(ix, hang)
	if err != nil {
		t.Fatal(err)
	}
	defer image.Close()
	dir := filepath.Join(t.TempDir(), "fuse")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := fusedisk.Mount(dir, fusedisk.Options{AllowOther: true, CloseTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	path, err := m.Add("img", image, image.Size())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	vm, err := b.Start(ctx, &vmm.Config{
		Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
		Disks: []vmm.Disk{{Path: path, ReadOnly: true}},
		Accel: vmm.AccelTCG, MemoryMiB: 256,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	select {
	case <-hang.started:
	case <-ctx.Done():
		t.Fatalf("the guest never read past the first chunk; console:\n%s", vm.ConsoleLog())
	}
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	t.Logf("Close took %v with QEMU blocked on the mount", time.Since(start))
	if d := time.Since(start); d < time.Second || d > 10*time.Second {
		t.Errorf("Close took %v, want its 1 s timeout (QEMU holds the file open), then the abort", d)
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if fusedisk.MountedIn(info, dir) {
		t.Errorf("%s still mounted after Close", dir)
	}
	for !strings.Contains(string(vm.ConsoleLog()), "hash-failed") {
		if ctx.Err() != nil {
			t.Fatalf("the guest's read of the unfetchable chunk did not fail; console:\n%s", vm.ConsoleLog())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

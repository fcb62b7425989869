package engine

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/fusedisk"
)

// TestLazyFUSEDisk checks the path of a VMM that cannot read NBD disks
// (anything but QEMU: cloud-hypervisor, which cannot run here; a fake
// stands in): the run's lazy image reaches it as a file on a FUSE mount,
// whose bytes are the image's, read through the chunk store, and the
// mount is gone when the run is.
func TestLazyFUSEDisk(t *testing.T) {
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs /dev/fuse and root (a FUSE mount without fusermount3)")
	}
	env := newFakeEnv(t)
	ix, err := blockstore.BuildIndexFile(t.Context(), env.erofs, blockstore.DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(env.erofs)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	im, err := store.Open(ix, blockstore.FileFetcher{R: f})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	want, err := os.ReadFile(env.erofs)
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{readImage: true}
	e, _ := env.engine(t, b, Options{Images: StaticSource{"s3://b/lazy:1": {Reference: "s3://b/lazy:1", Digest: "sha256:abc", Lazy: im}}})
	res, err := e.Run(t.Context(), &RunRequest{Image: "s3://b/lazy:1", Overrides: Overrides{Cmd: []string{"echo"}, User: "alice"}})
	if err != nil {
		t.Fatalf("Run of a lazy image on %s: %v", b.Name(), err)
	}
	b.mu.Lock()
	path, got, readErr := b.lastCfg.Disks[0].Path, b.image, b.imageErr
	b.mu.Unlock()
	if readErr != nil || !bytes.Equal(got, want) {
		t.Fatalf("the VMM read %d bytes of %s (error %v); want the image's %d bytes", len(got), path, readErr, len(want))
	}
	if !strings.Contains(path, "/"+lazyFUSEDir+"/") || b.lastCfg.Disks[0].NBD != nil {
		t.Errorf("image disk %+v: want a file on the run's FUSE mount", b.lastCfg.Disks[0])
	}
	if res.ImageBlocks == nil || res.ImageBlocks.Hits+res.ImageBlocks.Misses == 0 {
		t.Errorf("run counters %+v: want the FUSE reads counted as the store's", res.ImageBlocks)
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if dir := strings.TrimSuffix(path, "/"+pathBase(path)); fusedisk.MountedIn(info, dir) {
		t.Errorf("%s is still mounted after the run", dir)
	}
	if e.lazyDisks.Load() != 0 {
		t.Errorf("%d lazy disks still served", e.lazyDisks.Load())
	}
}

func pathBase(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

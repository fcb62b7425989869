package engine

import (
	"os"
	"strings"
	"testing"

	"github.com/pe-project/pe/blockstore"
)

// TestLazyNeedsQEMU checks that a lazy image on a VMM that cannot read NBD
// disks (anything but QEMU; cloud-hypervisor for now) fails the run with
// an error saying so, before any VM starts, and leaves nothing served.
func TestLazyNeedsQEMU(t *testing.T) {
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
	b := &fakeBackend{}
	e, _ := env.engine(t, b, Options{Images: StaticSource{"s3://b/lazy:1": {Reference: "s3://b/lazy:1", Digest: "sha256:abc", Lazy: im}}})
	_, err = e.Run(t.Context(), &RunRequest{Image: "s3://b/lazy:1", Overrides: Overrides{Cmd: []string{"echo"}, User: "alice"}})
	if err == nil || !strings.Contains(err.Error(), "lazy s3 images need QEMU") || !strings.Contains(err.Error(), "s3://b/lazy:1") {
		t.Errorf("Run of a lazy image on %s: %v; want an error saying it needs QEMU", b.Name(), err)
	}
	if b.starts.Load() != 0 || e.lazyDisks.Load() != 0 {
		t.Errorf("%d VM starts, %d lazy disks served; want none", b.starts.Load(), e.lazyDisks.Load())
	}
	// The image's /etc/passwd was read through the lazy image (user alice).
	if st := im.Stats(); st.Gets == 0 {
		t.Errorf("the lazy image was not read: %+v", st)
	}
}

package engine

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/fusedisk"
)

// TestLazyFUSEDisk checks the path of a VMM that cannot read NBD disks
// (anything but QEMU: cloud-hypervisor, which cannot run here; a fake
// stands in): the run's lazy image reaches it as a file on a FUSE mount,
// whose bytes are the image's, read through the chunk store, and the
// mount is gone when the run is.
func TestLazyFUSEDisk(t *testing.T) {
	needFUSE(t)
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
	if dir := filepath.Dir(path); fusedisk.MountedIn(info, dir) {
		t.Errorf("%s is still mounted after the run", dir)
	}
	if e.lazyDisks.Load() != 0 {
		t.Errorf("%d lazy disks still served", e.lazyDisks.Load())
	}
}

// needFUSE skips a test that mounts FUSE where pe cannot: without
// /dev/fuse, or without root (pe mounts with mount(2), no fusermount3).
func needFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		t.Skip("needs /dev/fuse and root (a FUSE mount without fusermount3)")
	}
}

// TestSweepDetachesFUSE: the work directory of a pe killed during a lazy
// run on cloud-hypervisor still holds that run's FUSE mount; the next pe's
// sweep detaches it, so that the directory can go.
func TestSweepDetachesFUSE(t *testing.T) {
	needFUSE(t)
	tmp := t.TempDir()
	work := filepath.Join(tmp, runDirPrefix+"killed")
	mnt := filepath.Join(work, lazyFUSEDir)
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	// No process has this PID: the owner is gone.
	if err := os.WriteFile(filepath.Join(work, runDirOwner), []byte("2147483646"), 0o600); err != nil {
		t.Fatal(err)
	}
	fs, err := fusedisk.Mount(mnt, fusedisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close() // a no-op once detached
	if _, err := fs.Add("image.erofs", bytes.NewReader(make([]byte, 4096)), 4096); err != nil {
		t.Fatal(err)
	}
	sweepRunDirs(tmp, testLogger(t))
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if fusedisk.MountedIn(info, mnt) {
		t.Errorf("%s is still mounted after the sweep", mnt)
	}
	if _, err := os.Stat(work); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed pe's work directory is still there: %v", err)
	}
}

// failingFetcher fails every fetch for good, counting them.
type failingFetcher struct{ n atomic.Int64 }

func (f *failingFetcher) Fetch(context.Context, int64, int64) ([]byte, error) {
	f.n.Add(1)
	return nil, blockstore.Permanent(errors.New("the bucket is gone"))
}

// TestProcessCarriedUserFiles: a lazy image whose index carries its user
// database has its user looked up there, with no read of the image (which
// costs round trips to the bucket before the VM can start); without them,
// the image is read.
func TestProcessCarriedUserFiles(t *testing.T) {
	env := newFakeEnv(t)
	ix, err := blockstore.BuildIndexFile(t.Context(), env.erofs, blockstore.DefaultChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	fetcher := &failingFetcher{}
	im, err := store.Open(ix, fetcher)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	cfg := &v1.ConfigFile{Config: v1.Config{User: "ada", Cmd: []string{"id"}}}
	users := fstest.MapFS{
		"etc/passwd": {Data: []byte("root:x:0:0::/root:/bin/sh\nada:x:1000:1001::/home/ada:/bin/sh\n")},
		"etc/group":  {Data: []byte("staff:x:50:ada\n")},
	}
	e := &Engine{}
	p, err := e.process(t.Context(), &ResolvedImage{Reference: "s3://b/ada", Lazy: im, UserFiles: users, Config: cfg}, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	got := []any{p.UID, p.GID, p.Groups, p.Env}
	want := []any{uint32(1000), uint32(1001), []uint32{50}, []string{"PATH=" + DefaultPath, "HOME=/home/ada"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("process from the carried files (-want +got):\n%s", diff)
	}
	if n := fetcher.n.Load(); n != 0 {
		t.Errorf("the image was fetched from %d times; want none", n)
	}
	_, err = e.process(t.Context(), &ResolvedImage{Reference: "s3://b/ada", Lazy: im, Config: cfg}, Overrides{})
	if err == nil || fetcher.n.Load() == 0 {
		t.Errorf("without carried files: error %v after %d fetches; want the image read, and its failure", err, fetcher.n.Load())
	}
}

// TestRunReader reads a run's disk served before its image was known: the
// reads wait for the image, read it, and read zeros past its end (the
// disk has the size of a boot snapshot's image disk); a run without an
// image, or one that ended, reads an error.
func TestRunReader(t *testing.T) {
	img := []byte("0123456789")
	zeros := func(n int) string { return string(make([]byte, n)) }
	for _, c := range []struct {
		name string
		off  int64
		n    int
		want string
	}{
		{"inside", 2, 4, "2345"},
		{"to the end", 6, 4, "6789"},
		{"across the end", 8, 6, "89" + zeros(4)},
		{"past the end", 20, 5, zeros(5)},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &runReader{ctx: t.Context(), ready: make(chan struct{})}
			type read struct {
				b   []byte
				n   int
				err error
			}
			got := make(chan read, 1)
			go func() {
				b := bytes.Repeat([]byte{0xee}, c.n)
				n, err := r.ReadAt(b, c.off)
				got <- read{b, n, err}
			}()
			select {
			case g := <-got:
				t.Fatalf("ReadAt returned %d, %v before the image was there", g.n, g.err)
			case <-time.After(20 * time.Millisecond):
			}
			r.src, r.size = bytes.NewReader(img), int64(len(img))
			close(r.ready)
			g := <-got
			if g.err != nil || g.n != c.n {
				t.Fatalf("ReadAt = %d, %v; want %d, nil", g.n, g.err, c.n)
			}
			if diff := cmp.Diff(c.want, string(g.b)); diff != "" {
				t.Errorf("bytes (-want +got):\n%s", diff)
			}
			if r.failed.Load() != 0 || r.pending.Load() != 0 {
				t.Errorf("failed %d, pending %d; want 0, 0", r.failed.Load(), r.pending.Load())
			}
		})
	}
	t.Run("no image", func(t *testing.T) {
		r := &runReader{ctx: t.Context(), ready: make(chan struct{})}
		close(r.ready)
		if _, err := r.ReadAt(make([]byte, 4), 0); !errors.Is(err, errNoImage) {
			t.Errorf("ReadAt: %v; want errNoImage", err)
		}
	})
	t.Run("run ended", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		r := &runReader{ctx: ctx, ready: make(chan struct{})}
		cancel()
		if _, err := r.ReadAt(make([]byte, 4), 0); !errors.Is(err, context.Canceled) {
			t.Errorf("ReadAt: %v; want context.Canceled", err)
		}
	})
}

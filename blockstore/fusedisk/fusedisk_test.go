package fusedisk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/blockstore"
)

// needFUSE skips the test where FUSE cannot be mounted: no /dev/fuse, or
// not root and no fusermount3.
func needFUSE(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse to mount FUSE (not on this host: %v)", err)
	}
	if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			t.Skip("needs root or the fusermount3 binary (apt install fuse3) to mount FUSE")
		}
	}
}

// mountT mounts a new FS on a temporary directory; when the test ends it
// closes it and checks that the mount is gone.
func mountT(t *testing.T, o Options) *FS {
	t.Helper()
	needFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := Mount(dir, o)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	if !isMounted(t, m.Dir()) {
		t.Fatalf("%s is not in /proc/self/mountinfo after Mount", m.Dir())
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if isMounted(t, m.Dir()) {
			t.Errorf("%s is still mounted after Close", m.Dir())
		}
	})
	return m
}

func isMounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return MountedIn(b, dir)
}

func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed+1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// countingReader is a bytes.Reader that records its calls and the
// largest read asked for.
type countingReader struct {
	r     *bytes.Reader
	calls atomic.Int64
	most  atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.calls.Add(1)
	for {
		m := c.most.Load()
		if int64(len(p)) <= m || c.most.CompareAndSwap(m, int64(len(p))) {
			break
		}
	}
	return c.r.ReadAt(p, off)
}

// TestContents reads a file through os.ReadFile and through ReadAt at
// odd offsets and lengths: the bytes must be the source's, short only at
// the end; its attributes say a read-only regular file of the size.
func TestContents(t *testing.T) {
	m := mountT(t, Options{})
	data := randomBytes(3<<20+123, 1)
	src := &countingReader{r: bytes.NewReader(data)}
	path, err := m.Add("img.erofs", src, int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(m.Dir(), "img.erofs"); path != want {
		t.Errorf("Add returned %s, want %s", path, want)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o444 || fi.Size() != int64(len(data)) {
		t.Errorf("stat: mode %v size %d, want -r--r--r-- %d", fi.Mode(), fi.Size(), len(data))
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("os.ReadFile returned %d bytes that differ from the source's %d", len(got), len(data))
	}
	t.Logf("largest read the reader saw: %d bytes in %d calls", src.most.Load(), src.calls.Load())
	if src.most.Load() <= 128<<10 {
		t.Errorf("largest read was %d bytes: FUSE reads stayed at the kernel's default 128 KiB", src.most.Load())
	}

	// FOPEN_KEEP_CACHE: a new open finds the pages cached, the reader
	// sees nothing (without it the kernel drops them on open).
	calls := src.calls.Load()
	if again, err := os.ReadFile(path); err != nil || !bytes.Equal(again, data) {
		t.Fatalf("second read: %d bytes, %v", len(again), err)
	}
	if n := src.calls.Load() - calls; n != 0 {
		t.Errorf("reading the file again made %d reads of the source, want 0 (page cache kept)", n)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := int64(len(data))
	for _, tt := range []struct {
		off    int64
		n      int
		wantN  int
		wantIO error
	}{
		{0, 1, 1, nil},
		{1, 4095, 4095, nil},
		{4097, 1<<20 + 3, 1<<20 + 3, nil},
		{(512 << 10) - 7, 14, 14, nil},
		{size - 5, 10, 5, io.EOF},
		{size, 1, 0, io.EOF},
		{size + 4096, 1, 0, io.EOF},
	} {
		t.Run(fmt.Sprintf("off=%d,n=%d", tt.off, tt.n), func(t *testing.T) {
			p := make([]byte, tt.n)
			n, err := f.ReadAt(p, tt.off)
			if n != tt.wantN || err != tt.wantIO {
				t.Fatalf("ReadAt = %d, %v; want %d, %v", n, err, tt.wantN, tt.wantIO)
			}
			if n > 0 && !bytes.Equal(p[:n], data[tt.off:tt.off+int64(n)]) {
				t.Errorf("bytes at %d differ from the source's", tt.off)
			}
		})
	}
}

// TestConcurrentReaders reads random ranges of two files from many
// goroutines at once, each through its own descriptor.
func TestConcurrentReaders(t *testing.T) {
	m := mountT(t, Options{})
	files := map[string][]byte{"a": randomBytes(5<<20+1, 2), "b": randomBytes(2<<20-3, 3)}
	paths := map[string]string{}
	for name, data := range files {
		p, err := m.Add(name, bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		paths[name] = p
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			name := []string{"a", "b"}[g%2]
			data := files[name]
			f, err := os.Open(paths[name])
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			for range 50 {
				off := r.Int64N(int64(len(data)))
				p := make([]byte, 1+r.IntN(300<<10))
				n, err := f.ReadAt(p, off)
				if err != nil && err != io.EOF {
					errs <- fmt.Errorf("%s at %d: %w", name, off, err)
					return
				}
				if !bytes.Equal(p[:n], data[off:off+int64(n)]) {
					errs <- fmt.Errorf("%s: %d bytes at %d differ from the source's", name, n, off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// failingReader fails every read.
type failingReader struct{}

func (failingReader) ReadAt(p []byte, off int64) (int, error) {
	return 0, errors.New("chunk 3 could not be fetched")
}

// shortReader holds fewer bytes than the size given to Add.
type shortReader struct{ failingReader }

func (shortReader) ReadAt(p []byte, off int64) (int, error) { return 0, io.EOF }

// TestFailingReader: a reader's error reaches the file's reader as EIO,
// as does a reader shorter than its declared size.
func TestFailingReader(t *testing.T) {
	m := mountT(t, Options{})
	for _, tt := range []struct {
		name string
		r    io.ReaderAt
	}{
		{"failing", failingReader{}},
		{"short", shortReader{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path, err := m.Add(tt.name, tt.r, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			_, err = os.ReadFile(path)
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("reading a file whose reader fails: %v, want EIO", err)
			}
		})
	}
}

// blockingReader blocks every read until release is closed; with ctx,
// it implements ReaderAtContext and also gives up when ctx ends.
type blockingReader struct {
	started chan struct{}
	once    sync.Once
	release chan struct{}
}

func newBlockingReader() *blockingReader {
	return &blockingReader{started: make(chan struct{}), release: make(chan struct{})}
}

func (b *blockingReader) ReadAt(p []byte, off int64) (int, error) {
	b.once.Do(func() { close(b.started) })
	<-b.release
	return 0, errors.New("released")
}

type blockingContextReader struct{ *blockingReader }

func (b blockingContextReader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	b.once.Do(func() { close(b.started) })
	select {
	case <-b.release:
		return 0, errors.New("released")
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// TestCloseWithHangingRead closes the mount while a read is blocked in
// the backing reader (one that ignores contexts, one that honours them)
// and the file is open: Close returns within its timeout, the reader gets
// an error, and the mount is gone.
func TestCloseWithHangingRead(t *testing.T) {
	for _, withCtx := range []bool{false, true} {
		t.Run(fmt.Sprintf("ctx=%v", withCtx), func(t *testing.T) {
			needFUSE(t)
			dir := filepath.Join(t.TempDir(), "mnt")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			m, err := Mount(dir, Options{CloseTimeout: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			br := newBlockingReader()
			defer close(br.release)
			var r io.ReaderAt = br
			if withCtx {
				r = blockingContextReader{br}
			}
			path, err := m.Add("hang", r, 1<<20)
			if err != nil {
				m.Close()
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				m.Close()
				t.Fatal(err)
			}
			defer f.Close()
			readErr := make(chan error, 1)
			go func() {
				_, err := f.ReadAt(make([]byte, 4096), 0)
				readErr <- err
			}()
			select {
			case <-br.started:
			case <-time.After(30 * time.Second):
				m.Close()
				t.Fatal("the read never reached the reader")
			}
			start := time.Now()
			closed := make(chan error, 1)
			go func() { closed <- m.Close() }()
			select {
			case err := <-closed:
				if err != nil {
					t.Errorf("Close: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Close hung with a read blocked")
			}
			t.Logf("Close took %v", time.Since(start))
			select {
			case err := <-readErr:
				if err == nil {
					t.Error("the blocked read succeeded")
				}
			case <-time.After(10 * time.Second):
				t.Error("the blocked read did not end after Close")
			}
			if isMounted(t, dir) {
				t.Errorf("%s still mounted after Close", dir)
			}
		})
	}
}

// TestCloseWithOpenFile closes the mount while a file is held open (a
// VMM still running): Close returns after its timeout, the mount is gone,
// and the held descriptor fails instead of hanging.
func TestCloseWithOpenFile(t *testing.T) {
	needFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := Mount(dir, Options{CloseTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(1<<20, 4)
	path, err := m.Add("img", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		m.Close()
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	if isMounted(t, dir) {
		t.Errorf("%s still mounted after Close", dir)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 8192); err == nil {
		t.Error("a read of a file held open across Close succeeded")
	}
	if _, err := m.Add("late", bytes.NewReader(nil), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close: %v, want ErrClosed", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestReadOnly tries every way to change a file or the mount: each
// fails, and the file's bytes stay the same.
func TestReadOnly(t *testing.T) {
	if path := os.Getenv("FUSEDISK_MMAP_FILE"); path != "" {
		mmapHelper(t, path)
		return
	}
	m := mountT(t, Options{})
	data := randomBytes(64<<10, 5)
	path, err := m.Add("img", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	refused := func(err error) bool {
		return errors.Is(err, syscall.EROFS) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM)
	}
	for _, tt := range []struct {
		name string
		do   func() error
	}{
		{"open O_WRONLY", func() error { f, err := os.OpenFile(path, os.O_WRONLY, 0); f.Close(); return err }},
		{"open O_RDWR", func() error { f, err := os.OpenFile(path, os.O_RDWR, 0); f.Close(); return err }},
		{"open O_TRUNC", func() error { f, err := os.OpenFile(path, os.O_RDONLY|os.O_TRUNC, 0); f.Close(); return err }},
		{"truncate", func() error { return os.Truncate(path, 0) }},
		{"chmod", func() error { return os.Chmod(path, 0o666) }},
		{"utimes", func() error { return os.Chtimes(path, time.Now(), time.Now()) }},
		{"remove", func() error { return os.Remove(path) }},
		{"rename", func() error { return os.Rename(path, path+".2") }},
		{"create", func() error { return os.WriteFile(filepath.Join(m.Dir(), "new"), nil, 0o644) }},
		{"mkdir", func() error { return os.Mkdir(filepath.Join(m.Dir(), "d"), 0o755) }},
		{"mmap shared writable", func() error {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			b, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err == nil {
				unix.Munmap(b)
			}
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !refused(err) {
				t.Errorf("%s: %v, want EROFS or EACCES", tt.name, err)
			}
		})
	}
	// A private read-only mapping works and reads the bytes lazily (the
	// way cloud-hypervisor's --pmem would). In another process: a page
	// fault on the mount blocks its thread without the Go runtime knowing,
	// and a garbage collection that starts meanwhile waits for that thread
	// while the file system's goroutines wait for the collection.
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestReadOnly$")
	cmd.Env = append(os.Environ(), "FUSEDISK_MMAP_FILE="+path)
	out, err := cmd.Output()
	sum := sha256.Sum256(data)
	if want := "mapped " + hex.EncodeToString(sum[:]); err != nil || !strings.Contains(string(out), want) {
		t.Errorf("read-only mapping in a child process: %v, output %q, want it to say %q", err, out, want)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("the file changed: %v", err)
	}
}

// mmapHelper is TestReadOnly's child: it maps path privately, read-only,
// and prints the sha256 of the mapped bytes.
func mmapHelper(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(info.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap read-only: %v", err)
	}
	defer unix.Munmap(b)
	sum := sha256.Sum256(b)
	fmt.Printf("mapped %x\n", sum)
}

// TestRemoveWhileOpen removes a file a reader has open: the name is gone
// at once, the open descriptor still reads the old bytes, and the name
// can be added again with other contents.
func TestRemoveWhileOpen(t *testing.T) {
	m := mountT(t, Options{})
	old, fresh := randomBytes(256<<10, 6), randomBytes(100<<10, 7)
	path, err := m.Add("img", bytes.NewReader(old), int64(len(old)))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := m.Remove("img"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of a removed file: %v, want ENOENT", err)
	}
	got, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(got, old) {
		t.Errorf("reading a removed, open file: %d bytes, %v; want the old %d bytes", len(got), err, len(old))
	}
	if _, err := m.Add("img", bytes.NewReader(fresh), int64(len(fresh))); err != nil {
		t.Fatalf("adding the name again: %v", err)
	}
	got, err = os.ReadFile(path)
	if err != nil || !bytes.Equal(got, fresh) {
		t.Errorf("reading the name added again: %d bytes, %v; want the new %d bytes", len(got), err, len(fresh))
	}
	if err := m.Remove("never-added"); err != nil {
		t.Errorf("removing an unknown name: %v", err)
	}
}

// TestAddErrors: names that are not plain, a name taken twice, no reader.
func TestAddErrors(t *testing.T) {
	m := mountT(t, Options{})
	if _, err := m.Add("taken", bytes.NewReader(nil), 0); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		r    io.ReaderAt
		size int64
		is   error
	}{
		{"", bytes.NewReader(nil), 0, nil},
		{".", bytes.NewReader(nil), 0, nil},
		{"..", bytes.NewReader(nil), 0, nil},
		{"a/b", bytes.NewReader(nil), 0, nil},
		{"nul\x00", bytes.NewReader(nil), 0, nil},
		{string(bytes.Repeat([]byte("x"), 256)), bytes.NewReader(nil), 0, nil},
		{"noreader", nil, 0, nil},
		{"negative", bytes.NewReader(nil), -1, nil},
		{"taken", bytes.NewReader(nil), 0, ErrExist},
	} {
		_, err := m.Add(tt.name, tt.r, tt.size)
		if err == nil {
			t.Errorf("Add(%q, size %d) succeeded", tt.name, tt.size)
		} else if tt.is != nil && !errors.Is(err, tt.is) {
			t.Errorf("Add(%q): %v, want %v", tt.name, err, tt.is)
		}
	}
	entries, err := os.ReadDir(m.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"taken"}, names); diff != "" {
		t.Errorf("directory listing (-want +got):\n%s", diff)
	}
}

// TestMountErrors: mounting on a path that is not a directory fails and
// leaves nothing mounted.
func TestMountErrors(t *testing.T) {
	needFUSE(t)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(t.TempDir(), "missing"), file} {
		m, err := Mount(dir, Options{})
		if err == nil {
			m.Close()
			t.Errorf("Mount(%s) succeeded", dir)
		}
		if isMounted(t, dir) {
			t.Errorf("%s mounted after a failed Mount", dir)
		}
	}
}

// TestStoreImage serves a blockstore.Image: the first read fetches
// through the store (GETs on a cold cache), a chunk that cannot be
// fetched is EIO to the reader.
func TestStoreImage(t *testing.T) {
	m := mountT(t, Options{})
	data := randomBytes(3<<20+4096, 8)
	src := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ix, err := blockstore.BuildIndexFile(t.Context(), src, 512<<10)
	if err != nil {
		t.Fatal(err)
	}
	store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: 5 * time.Second, Attempts: 2, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	sf, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()
	img, err := store.Open(ix, blockstore.FileFetcher{R: sf})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	path, err := m.Add("img", img, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reading the image through FUSE: %d bytes, %v", len(got), err)
	}
	st := img.Stats()
	t.Logf("store: %+v", st)
	if st.Gets == 0 || st.Misses != int64(len(ix.Chunks)) {
		t.Errorf("cold read of %d chunks: %d GETs, %d misses", len(ix.Chunks), st.Gets, st.Misses)
	}

	// An image whose object is gone: its reads fail with EIO.
	store2, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: 5 * time.Second, Attempts: 2, Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer store2.Close()
	gone, err := store2.Open(ix, blockstore.FileFetcher{R: failingReader{}})
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close()
	path, err = m.Add("gone", gone, gone.Size())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.ReadFile(path); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading an image whose chunks cannot be fetched: %v, want EIO", err)
	}
}

// TestMountedIn parses mountinfo lines, escapes included.
func TestMountedIn(t *testing.T) {
	info := []byte(`22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /tmp/a\040b rw,nosuid - fuse.pe pe-lazy ro
91 22 0:51 / /tmp/x\134y rw - fuse.pe pe-lazy ro
`)
	for _, tt := range []struct {
		dir  string
		want bool
	}{
		{"/", true},
		{"/tmp/a b", true},
		{`/tmp/x\y`, true},
		{`/tmp/a\040b`, false},
		{"/tmp", false},
	} {
		if got := MountedIn(info, tt.dir); got != tt.want {
			t.Errorf("MountedIn(%q) = %v, want %v", tt.dir, got, tt.want)
		}
	}
}

// TestMountsUnder lists the mounts below a directory, unescaped, and not
// the directory itself or a sibling sharing its prefix.
func TestMountsUnder(t *testing.T) {
	info := []byte(`22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
89 22 0:49 / /tmp/run rw - tmpfs tmpfs rw
90 22 0:50 / /tmp/run/lazy rw,nosuid - fuse.pe pe-image ro
91 22 0:51 / /tmp/run/a\040b rw - fuse.pe pe-image ro
92 22 0:52 / /tmp/runner/lazy rw - fuse.pe pe-image ro
`)
	for _, tt := range []struct {
		dir  string
		want []string
	}{
		{"/tmp/run", []string{"/tmp/run/lazy", "/tmp/run/a b"}},
		{"/tmp/run/", []string{"/tmp/run/lazy", "/tmp/run/a b"}},
		{"/tmp/run/lazy", nil},
		{"/srv", nil},
	} {
		if diff := cmp.Diff(tt.want, MountsUnder(info, tt.dir)); diff != "" {
			t.Errorf("MountsUnder(%q) (-want +got):\n%s", tt.dir, diff)
		}
	}
}

// TestFsTypeIn reads the type of the topmost mount on a directory.
func TestFsTypeIn(t *testing.T) {
	info := []byte(`22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /m rw,nosuid shared:7 master:1 - tmpfs none rw
91 90 0:51 / /m rw - fuse.pe pe-lazy ro
92 22 0:52 / /bad rw
`)
	for _, tt := range []struct {
		dir, want string
		ok        bool
	}{
		{"/", "ext4", true},
		{"/m", "fuse.pe", true},
		{"/bad", "", true},
		{"/none", "", false},
	} {
		got, ok := fsTypeIn(info, tt.dir)
		if got != tt.want || ok != tt.ok {
			t.Errorf("fsTypeIn(%q) = %q, %v; want %q, %v", tt.dir, got, ok, tt.want, tt.ok)
		}
	}
}

// TestStaleMount: a process that mounted and was killed leaves a dead
// mount behind; the next Mount on the same directory replaces it. A
// live mount there is refused.
func TestStaleMount(t *testing.T) {
	if dir := os.Getenv("FUSEDISK_HELPER_DIR"); dir != "" {
		// The helper process: mount, say so, wait to be killed.
		if _, err := Mount(dir, Options{}); err != nil {
			fmt.Println("mount failed:", err)
			os.Exit(1)
		}
		fmt.Println("mounted")
		time.Sleep(time.Hour)
		return
	}
	needFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestStaleMount$")
	cmd.Env = append(os.Environ(), "FUSEDISK_HELPER_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 64)
	n, _ := out.Read(line)
	cmd.Process.Kill()
	cmd.Wait()
	if !bytes.HasPrefix(line[:n], []byte("mounted")) {
		t.Fatalf("helper: %q", line[:n])
	}
	t.Cleanup(func() {
		if isMounted(t, dir) {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("statfs of the killed process's mount: %v, want ENOTCONN", err)
	}
	m, err := Mount(dir, Options{})
	if err != nil {
		t.Fatalf("Mount over a dead mount: %v", err)
	}
	data := []byte("fresh")
	path, err := m.Add("f", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Errorf("reading from the new mount: %q, %v", got, err)
	}
	if m2, err := Mount(dir, Options{}); err == nil {
		m2.Close()
		t.Error("a second Mount over a live one succeeded")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if isMounted(t, dir) {
		t.Errorf("%s still mounted after Close", dir)
	}
}

// TestNonRoot mounts as an unprivileged user (nobody), as a pe run
// without root does: through fusermount3 when it is installed (mount,
// read, Close, nothing left mounted), else Mount fails with
// ErrUnavailable, naming the binary to install.
func TestNonRoot(t *testing.T) {
	if dir := os.Getenv("FUSEDISK_NONROOT_DIR"); dir != "" {
		nonRootHelper(dir)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a helper as another user")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse (%v)", err)
	}
	// A copy of this test binary and a mount point the other user can
	// reach.
	top, err := os.MkdirTemp("", "fusedisk-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	bin := filepath.Join(top, "fusedisk.test")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(top, "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(top, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if isMounted(t, dir) {
			t.Errorf("%s left mounted by the unprivileged helper", dir)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	cmd := exec.CommandContext(t.Context(), bin, "-test.run=^TestNonRoot$")
	cmd.Env = append(os.Environ(), "FUSEDISK_NONROOT_DIR="+dir, "HOME=/nonexistent")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	t.Logf("helper as uid %d: %s", nobody, out)
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	_, haveFusermount := exec.LookPath("fusermount3")
	switch {
	case haveFusermount == nil && !bytes.Contains(out, []byte("helper: ok")):
		t.Error("fusermount3 is installed, yet the unprivileged mount did not work")
	case haveFusermount != nil && !bytes.Contains(out, []byte("helper: unavailable")):
		t.Error("without fusermount3, Mount as a user did not fail with ErrUnavailable")
	case haveFusermount != nil && !bytes.Contains(out, []byte("fusermount3")):
		t.Error("the error does not name fusermount3")
	}
}

// nonRootHelper is TestNonRoot's other process.
func nonRootHelper(dir string) {
	if !userAllowOther("/etc/fuse.conf") {
		if m, err := Mount(dir, Options{AllowOther: true}); err == nil {
			m.Close()
			fmt.Println("helper: mounted with allow_other though fuse.conf does not allow it")
			os.Exit(1)
		} else if !errors.Is(err, ErrUnavailable) {
			fmt.Println("helper: allow_other refused without ErrUnavailable:", err)
			os.Exit(1)
		}
	}
	m, err := Mount(dir, Options{CloseTimeout: time.Second})
	if errors.Is(err, ErrUnavailable) {
		fmt.Println("helper: unavailable:", err)
		return
	}
	if err != nil {
		fmt.Println("helper: mount failed:", err)
		os.Exit(1)
	}
	fail := func(format string, args ...any) {
		fmt.Printf("helper: "+format+"\n", args...)
		m.Close()
		os.Exit(1)
	}
	data := randomBytes(1<<20+5, 11)
	path, err := m.Add("img", bytes.NewReader(data), int64(len(data)))
	if err != nil {
		fail("Add: %v", err)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		fail("read %d bytes, %v", len(got), err)
	}
	if err := os.WriteFile(path, nil, 0); err == nil {
		fail("wrote to the file")
	}
	// Close with the file held open: the unmount must not depend on it.
	f, err := os.Open(path)
	if err != nil {
		fail("open: %v", err)
	}
	defer f.Close()
	if err := m.Close(); err != nil {
		fail("Close: %v", err)
	}
	if mounted(dir) {
		fail("still mounted after Close")
	}
	fmt.Println("helper: ok")
}

// TestUserAllowOther reads fuse.conf's user_allow_other.
func TestUserAllowOther(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		conf string
		want bool
	}{
		{"user_allow_other\n", true},
		{"# mount_max = 1000\n  user_allow_other  \n", true},
		{"#user_allow_other\n", false},
		{"mount_max = 1000\n", false},
		{"", false},
	} {
		p := filepath.Join(dir, "fuse.conf")
		if err := os.WriteFile(p, []byte(tt.conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := userAllowOther(p); got != tt.want {
			t.Errorf("userAllowOther(%q) = %v, want %v", tt.conf, got, tt.want)
		}
	}
	if userAllowOther(filepath.Join(dir, "missing")) {
		t.Error("a missing fuse.conf allows allow_other")
	}
}

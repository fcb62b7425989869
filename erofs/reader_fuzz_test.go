package erofs

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzReader opens arbitrary bytes as an image and reads everything in it.
// It must never panic or hang; errors are expected. The seed corpus in
// testdata/fuzz/FuzzReader comes from TestReaderFuzzCorpus.
func FuzzReader(f *testing.F) {
	f.Add(readerSynthImage(9, true).img)
	f.Add(readerSynthImage(10, false).img)
	f.Fuzz(func(t *testing.T, data []byte) {
		fsys, err := Open(boundedReaderAt{t, bytes.NewReader(data)})
		if err != nil {
			return
		}
		readerFuzzWalk(t, fsys)
	})
}

// boundedReaderAt fails the test when the reader asks for bytes outside
// the image: every offset taken from an image must be checked against its
// size before it is read, so a fuzzed image never leads a read astray.
type boundedReaderAt struct {
	t testing.TB
	r *bytes.Reader
}

func (b boundedReaderAt) Size() int64 { return b.r.Size() }

func (b boundedReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > b.r.Size() || int64(len(p)) > b.r.Size()-off {
		b.t.Fatalf("read of %d bytes at offset %d outside the %d-byte image", len(p), off, b.r.Size())
	}
	return b.r.ReadAt(p, off)
}

// readerFuzzWalk visits at most 2000 entries, 32 directories deep, each
// directory inode once, reading at most 16 MiB of file data in all.
func readerFuzzWalk(t *testing.T, fsys *FS) {
	entries := 2000
	budget := int64(16 << 20)
	visited := make(map[uint64]bool)
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		d, err := fsys.Open(dir)
		if err != nil {
			return
		}
		defer d.Close()
		rd, ok := d.(fs.ReadDirFile)
		if !ok {
			t.Fatalf("%q: directory does not implement fs.ReadDirFile", dir)
		}
		ents, err := rd.ReadDir(-1)
		if err != nil {
			return
		}
		for _, e := range ents {
			if entries--; entries < 0 {
				return
			}
			if n := e.Name(); n == "" || n == "." || n == ".." || strings.Contains(n, "/") {
				t.Fatalf("%q: bad entry name %q", dir, n)
			}
			name := path.Join(dir, e.Name())
			e.Info()
			fsys.Stat(name)
			fi, err := fsys.Lstat(name)
			if err != nil {
				continue
			}
			st := fi.Sys().(*Stat)
			for k, v := range st.Xattrs {
				_, _ = k, v
			}
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				fsys.ReadLink(name)
				if f, err := fsys.Open(name); err == nil {
					f.Close()
				}
			case fi.IsDir():
				if !visited[st.Nid] && depth < 32 {
					visited[st.Nid] = true
					walk(name, depth+1)
				}
			default:
				budget -= readerFuzzFile(t, fsys, name, fi, budget)
			}
		}
	}
	visited[fsys.root.nid] = true
	walk(".", 0)
}

// readerFuzzFile reads one file in several ways and returns the bytes read.
func readerFuzzFile(t *testing.T, fsys *FS, name string, fi fs.FileInfo, budget int64) int64 {
	if budget <= 0 {
		return 0
	}
	f, err := fsys.Open(name)
	if err != nil {
		return 0
	}
	defer f.Close()
	limit := min(budget, 4<<20)
	n, err := io.Copy(io.Discard, io.LimitReader(f, limit))
	if err == nil && fi.Mode().IsRegular() && n < limit && n != fi.Size() {
		t.Fatalf("%q: read %d bytes, size %d", name, n, fi.Size())
	}
	if ra, ok := f.(io.ReaderAt); ok {
		p := make([]byte, 100)
		for _, off := range []int64{0, 4095, fi.Size() - 50, fi.Size() + 1, 1 << 40} {
			if off >= 0 {
				ra.ReadAt(p, off)
			}
		}
	}
	if sk, ok := f.(io.Seeker); ok {
		sk.Seek(-10, io.SeekEnd)
		f.Read(make([]byte, 20))
	}
	if fi.Size() <= 1<<20 && budget > 1<<20 {
		if b, err := fsys.ReadFile(name); err == nil && fi.Mode().IsRegular() && int64(len(b)) != fi.Size() {
			t.Fatalf("%q: ReadFile gave %d bytes, size %d", name, len(b), fi.Size())
		}
		n += min(fi.Size(), 1<<20)
	}
	return n + 200
}

// TestReaderFuzzCorpus regenerates the committed seed corpus from small
// mkfs.erofs images. It only runs when PE_EROFS_WRITE_CORPUS=1, since the
// images change with mkfs versions and build times:
//
//	PE_EROFS_WRITE_CORPUS=1 go test ./erofs -run TestReaderFuzzCorpus
func TestReaderFuzzCorpus(t *testing.T) {
	if os.Getenv("PE_EROFS_WRITE_CORPUS") != "1" {
		t.Skip("set PE_EROFS_WRITE_CORPUS=1 to rewrite testdata/fuzz/FuzzReader")
	}
	requireTool(t, "mkfs.erofs")
	small := readerSmallTree(t)
	links := readerSymlinkTree(t)
	varied := readerVariedTree(t)
	seeds := map[string][]byte{}
	image := func(src string, args ...string) []byte {
		b, err := os.ReadFile(mkfsImage(t, src, args...))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	seeds["small-default"] = image(small)
	seeds["small-compact-nosbcrc"] = image(small, "-T0", "--ignore-mtime", "-Enosbcrc")
	seeds["small-chunked"] = image(small, "--chunksize=4096", "-Enosbcrc")
	seeds["small-noinline-extended"] = image(small, "-Enoinline_data", "-Eforce-inode-extended")
	seeds["small-lz4"] = image(small, "-zlz4", "-Enosbcrc")
	seeds["symlinks"] = image(links, "-T0", "-Enosbcrc")
	seeds["varied"] = image(varied, "-T0", "-Enosbcrc")
	seeds["synthetic-512"] = readerSynthImage(9, false).img
	seeds["synthetic-1024-csum"] = readerSynthImage(10, true).img

	base := seeds["small-compact-nosbcrc"]
	seeds["truncated-5000"] = base[:5000]
	seeds["truncated-superblock"] = base[:superOffset+100]
	flipped := bytes.Clone(base)
	for _, off := range []int{superOffset + 200, superOffset + 300, superOffset + 444, superOffset + 900} {
		flipped[off] ^= 0x5a
	}
	seeds["bitflip-meta"] = flipped

	dir := filepath.Join("testdata", "fuzz", "FuzzReader")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range seeds {
		if len(data) > 64<<10 {
			t.Fatalf("seed %s is %d bytes; keep seeds within 64 KiB", name, len(data))
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// readerVariedTree has one of each file type, xattrs (shared and inline) and
// a directory spanning several blocks, small enough for a fuzz seed.
func readerVariedTree(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "varied")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "many"), 0o755))
	for i := range 300 {
		must(os.WriteFile(filepath.Join(root, "many", fmt.Sprintf("f%03d", i)), nil, 0o644))
	}
	must(os.WriteFile(filepath.Join(root, "tail"), bytes.Repeat([]byte{7}, 100), 0o4755))
	must(os.WriteFile(filepath.Join(root, "caf\xe9"), []byte("x"), 0o644))
	must(syscall.Mkfifo(filepath.Join(root, "fifo"), 0o600))
	must(os.Symlink("tail", filepath.Join(root, "link")))
	for _, n := range []string{"tail", "caf\xe9", "many"} {
		readerSetxattr(t, filepath.Join(root, n), "user.shared", []byte("same"))
	}
	readerSetxattr(t, filepath.Join(root, "tail"), "user.own", []byte("mine"))
	if os.Geteuid() == 0 {
		must(unix.Mknod(filepath.Join(root, "chr"), unix.S_IFCHR|0o600, int(unix.Mkdev(4, 5))))
		must(unix.Mknod(filepath.Join(root, "blk"), unix.S_IFBLK|0o600, int(unix.Mkdev(8, 1))))
		readerSetxattr(t, filepath.Join(root, "many"), "trusted.overlay.opaque", []byte("y"))
		must(os.Lchown(filepath.Join(root, "tail"), 70000, 80000))
	}
	return root
}

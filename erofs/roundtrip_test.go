package erofs

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// specItem is one entry of a test tree: an Entry with its data, or a hard
// link to an earlier path.
type specItem struct {
	entry    Entry
	data     []byte
	linkTo   string
	dataFunc func() io.Reader // for data too large to hold
	digest   string           // with dataFunc
}

// treeSpec is a tree to write and the snapshot every reader must see.
type treeSpec struct {
	items []specItem
}

func (s *treeSpec) add(e Entry, data []byte) {
	if e.Mode.IsRegular() {
		e.Size = int64(len(data))
	}
	s.items = append(s.items, specItem{entry: e, data: data})
}

func (s *treeSpec) link(path, target string) {
	s.items = append(s.items, specItem{entry: Entry{Path: path}, linkTo: target})
}

// write builds the image with w's options into a new file.
func (s *treeSpec) write(t testing.TB, opts WriterOptions) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "test.erofs")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := NewWriter(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range s.items {
		if it.linkTo != "" {
			if err := w.Link(it.entry.Path, it.linkTo); err != nil {
				t.Fatalf("Link: %v", err)
			}
			continue
		}
		var r io.Reader = bytes.NewReader(it.data)
		if it.dataFunc != nil {
			r = it.dataFunc()
		}
		if err := w.Add(it.entry, r); err != nil {
			t.Fatalf("Add: %v", err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return img
}

// expected computes what a reader must find, applying the writer's rules:
// implicit parents, last entry wins, hard links share one inode, directory
// link counts are 2 plus subdirectories.
func (s *treeSpec) expected(t testing.TB, opts WriterOptions) snapshot {
	t.Helper()
	snap := snapshot{"": {Type: "dir", Perm: 0o755, MtimeNano: 0}}
	if opts.ModTime != nil {
		snap[""] = facts{Type: "dir", Perm: 0o755, MtimeNano: opts.ModTime.UnixNano()}
	}
	ids := map[string]int{} // path → inode identity, for link counts
	nextID := 1
	clean := func(p string) string { return strings.Trim(p, "/") }
	mtime := func(tm time.Time) int64 {
		if opts.ModTime != nil {
			return opts.ModTime.UnixNano()
		}
		if opts.ClampModTime != nil && tm.After(*opts.ClampModTime) {
			return opts.ClampModTime.UnixNano()
		}
		return tm.UnixNano()
	}
	ensureParents := func(p string) {
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			if _, ok := snap[d]; !ok {
				snap[d] = facts{Type: "dir", Perm: 0o755, MtimeNano: mtime(time.Unix(0, 0))}
			}
		}
	}
	for _, it := range s.items {
		p := clean(it.entry.Path)
		if it.linkTo != "" {
			ensureParents(p)
			snap[p] = snap[clean(it.linkTo)]
			ids[p] = ids[clean(it.linkTo)]
			continue
		}
		e := it.entry
		f := facts{
			Type:      TypeName(e.Mode),
			Perm:      permBits(e.Mode),
			UID:       e.UID,
			GID:       e.GID,
			MtimeNano: mtime(e.ModTime),
			Xattrs:    stringMap(e.Xattrs),
		}
		switch f.Type {
		case "file":
			f.Size = e.Size
			if it.dataFunc != nil {
				f.Digest = it.digest
			} else {
				f.Digest = digestReader(t, bytes.NewReader(it.data))
			}
		case "symlink":
			f.Target = e.Linkname
			f.Size = int64(len(e.Linkname))
		case "char", "block":
			f.Dev = [2]uint32{e.DevMajor, e.DevMinor}
		}
		ensureParents(p)
		snap[p] = f
		ids[p] = nextID
		nextID++
	}
	// Link counts.
	count := map[int]uint32{}
	for p, f := range snap {
		if f.Type != "dir" {
			count[ids[p]]++
		}
	}
	for p, f := range snap {
		if f.Type == "dir" {
			n := uint32(2)
			for q, g := range snap {
				if g.Type == "dir" && q != "" && filepath.Dir(q) == p || (p == "" && g.Type == "dir" && q != "" && !strings.Contains(q, "/")) {
					n++
				}
			}
			f.Nlink = n
		} else {
			f.Nlink = count[ids[p]]
		}
		snap[p] = f
	}
	return snap
}

// fullTree is a tree with every kind of object and attribute the writer
// must carry.
func fullTree(bigDirEntries int) *treeSpec {
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	t0 := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	s := &treeSpec{}
	s.add(Entry{Path: "/", Mode: fs.ModeDir | 0o755, ModTime: t0, Xattrs: map[string][]byte{"user.root": []byte("r")}}, nil)
	for _, n := range []int{0, 1, 100, 2048, 4000, 4031, 4032, 4095, 4096, 4097, 8191, 8192, 8193, 12289, 3<<20 + 17} {
		s.add(Entry{Path: fmt.Sprintf("sizes/f%d", n), Mode: 0o644, ModTime: t0}, random(n))
	}
	// Tails that only fit inline without xattrs, and xattrs that push the
	// tail out of line.
	s.add(Entry{Path: "sizes/tail-xattr", Mode: 0o644, ModTime: t0,
		Xattrs: map[string][]byte{"user.big": bytes.Repeat([]byte("v"), 1500)}}, random(3000))
	s.add(Entry{Path: "compressible", Mode: 0o644, ModTime: t0}, bytes.Repeat([]byte("hello pe "), 100000))

	// A big directory: long names, non-UTF-8 names, many blocks.
	for i := range bigDirEntries {
		var name string
		switch i % 5 {
		case 0:
			name = fmt.Sprintf("%05d-%s", i, strings.Repeat("L", 249))
		case 1:
			name = fmt.Sprintf("\xff\xfe%05d\x80", i)
		default:
			name = fmt.Sprintf("e%d", i)
		}
		s.add(Entry{Path: "big/" + name, Mode: 0o600, ModTime: t0.Add(time.Duration(i%3) * time.Second)}, random(i%50))
	}
	s.add(Entry{Path: strings.Repeat("n", 255), Mode: 0o644, ModTime: t0}, []byte("255"))
	s.add(Entry{Path: "caf\xe9/na\xefve", Mode: 0o644, ModTime: t0}, []byte("latin-1"))
	s.add(Entry{Path: "-dash", Mode: 0o644, ModTime: t0}, []byte("sorts before dot"))

	// Symlinks.
	s.add(Entry{Path: "links/short", Mode: fs.ModeSymlink | 0o777, Linkname: "../sizes/f1", ModTime: t0}, nil)
	s.add(Entry{Path: "links/abs", Mode: fs.ModeSymlink | 0o777, Linkname: "/etc/passwd", ModTime: t0}, nil)
	s.add(Entry{Path: "links/long", Mode: fs.ModeSymlink | 0o777, Linkname: strings.Repeat("abcdefghi/", 400), ModTime: t0}, nil)
	s.add(Entry{Path: "links/longx", Mode: fs.ModeSymlink | 0o777, Linkname: strings.Repeat("z", 4095), ModTime: t0,
		Xattrs: map[string][]byte{"trusted.overlay.redirect": []byte("/x")}}, nil)

	// Hard links, one through a later directory.
	s.add(Entry{Path: "hard/a", Mode: 0o640, UID: 7, GID: 8, ModTime: t0}, random(5000))
	s.link("hard/b", "hard/a")
	s.link("hard/sub/c", "/hard/a")
	s.add(Entry{Path: "hard/tiny", Mode: 0o640, ModTime: t0}, []byte("x"))
	s.link("hard/tiny2", "hard/tiny")

	// Special files.
	s.add(Entry{Path: "dev/null", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, DevMajor: 1, DevMinor: 3, ModTime: t0}, nil)
	s.add(Entry{Path: "dev/sda1", Mode: fs.ModeDevice | 0o660, DevMajor: 8, DevMinor: 1, GID: 6, ModTime: t0}, nil)
	s.add(Entry{Path: "dev/bigminor", Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, DevMajor: 4095, DevMinor: 1048575, ModTime: t0}, nil)
	s.add(Entry{Path: "dev/fifo", Mode: fs.ModeNamedPipe | 0o644, ModTime: t0}, nil)
	s.add(Entry{Path: "dev/sock", Mode: fs.ModeSocket | 0o755, ModTime: t0}, nil)

	// Permissions and owners.
	s.add(Entry{Path: "perm/setuid", Mode: fs.ModeSetuid | 0o755, ModTime: t0}, []byte("#!/bin/true\n"))
	s.add(Entry{Path: "perm/setgid", Mode: fs.ModeSetgid | 0o711, ModTime: t0}, []byte("g"))
	s.add(Entry{Path: "perm/sticky", Mode: fs.ModeDir | fs.ModeSticky | 0o777, ModTime: t0}, nil)
	s.add(Entry{Path: "perm/none", Mode: 0, ModTime: t0}, []byte("no access"))
	s.add(Entry{Path: "perm/all", Mode: fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky | 0o777, ModTime: t0}, nil)
	for _, id := range []uint32{0, 1000, 65535, 65536, 4000000000} {
		s.add(Entry{Path: fmt.Sprintf("owners/u%d", id), Mode: 0o644, UID: id, GID: id/2 + 1, ModTime: t0}, []byte("o"))
	}

	// Times: the build time, nanoseconds, old and new.
	for i, tm := range []time.Time{t0, time.Unix(0, 0), time.Unix(1, 1), time.Unix(1<<31+5, 999999999), time.Unix(1<<33, 5)} {
		s.add(Entry{Path: fmt.Sprintf("times/t%d", i), Mode: 0o644, ModTime: tm}, []byte("t"))
	}

	// Extended attributes: inline, shared (the same on several files),
	// every prefix, binary values.
	capability := []byte{1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	for i := range 3 {
		s.add(Entry{Path: fmt.Sprintf("xattr/shared%d", i), Mode: 0o755, ModTime: t0, Xattrs: map[string][]byte{
			"user.shared":                []byte("same everywhere"),
			"security.capability":        capability,
			fmt.Sprintf("user.own%d", i): []byte(fmt.Sprint(i)),
		}}, random(10))
	}
	s.add(Entry{Path: "xattr/opaque", Mode: fs.ModeDir | 0o755, ModTime: t0, Xattrs: map[string][]byte{
		"trusted.overlay.opaque": []byte("y"),
	}}, nil)
	s.add(Entry{Path: "xattr/opaque/child", Mode: 0o644, ModTime: t0}, nil)
	s.add(Entry{Path: "xattr/empty-value", Mode: 0o644, ModTime: t0, Xattrs: map[string][]byte{"user.empty": {}}}, nil)
	many := map[string][]byte{}
	for i := range 40 {
		many[fmt.Sprintf("user.attr%02d", i)] = bytes.Repeat([]byte{byte(i)}, i*7)
	}
	s.add(Entry{Path: "xattr/many", Mode: 0o644, ModTime: t0, Xattrs: many}, random(700))

	// A directory that arrives after its children; replaced files.
	s.add(Entry{Path: "late/child", Mode: 0o644, ModTime: t0}, []byte("child"))
	s.add(Entry{Path: "late", Mode: fs.ModeDir | 0o750, UID: 3, GID: 4, ModTime: t0.Add(time.Hour)}, nil)
	s.add(Entry{Path: "late/replaced", Mode: 0o644, ModTime: t0}, []byte("old"))
	s.add(Entry{Path: "late/replaced", Mode: 0o600, ModTime: t0}, []byte("new content"))
	return s
}

func TestRoundTripMount(t *testing.T) {
	t.Parallel()
	requireRootTool(t, "mount")
	for _, tc := range []struct {
		name string
		opts WriterOptions
	}{
		{"default", WriterOptions{}},
		{"fixed-mtime", WriterOptions{ModTime: ptr(time.Unix(1700000000, 0))}},
		{"clamped", WriterOptions{ClampModTime: ptr(time.Unix(1<<31, 0))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := fullTree(10000)
			img := spec.write(t, tc.opts)
			want := spec.expected(t, tc.opts)
			got := hostSnapshot(t, mountImage(t, img))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("mounted image differs from the source (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRoundTripFsckExtract(t *testing.T) {
	t.Parallel()
	requireRootTool(t, "fsck.erofs")
	spec := fullTree(2000)
	img := spec.write(t, WriterOptions{})
	if out, err := exec.Command("fsck.erofs", img).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "x")
	if out, err := exec.Command("fsck.erofs", "--extract="+dir, "--preserve", img).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs --extract: %v\n%s", err, out)
	}
	// fsck.erofs 1.5 extracts contents, types, owners, permission bits and
	// times, but not hard links (each name becomes a file), xattrs, the
	// setuid/setgid bits, or sockets' and the root's metadata.
	norm := func(p string, f facts) facts {
		f.Nlink = 0
		f.Xattrs = nil
		f.Perm &= 0o1777
		if f.Type == "dir" {
			f.MtimeNano = 0 // written before the directory's children
		}
		return f
	}
	want := spec.expected(t, WriterOptions{}).project(norm)
	got := hostSnapshot(t, dir).project(norm)
	delete(want, "")
	delete(got, "")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fsck.erofs --extract differs from the source (-want +got):\n%s", diff)
	}
}

func TestDeterministic(t *testing.T) {
	t.Parallel()
	spec := fullTree(300)
	a, err := os.ReadFile(spec.write(t, WriterOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(spec.write(t, WriterOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("two builds of the same input differ (%d and %d bytes)", len(a), len(b))
	}
}

func ptr[T any](v T) *T { return &v }

package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pe-project/pe/erofs"
)

// lent is one entry of a layer made by a test.
type lent struct {
	name   string
	typ    byte   // tar type flag; 0 is a regular file
	data   string // regular files
	link   string // symlink or hard link target
	mode   int64  // 0: 0644 for files, 0755 for directories, 0777 for symlinks
	uid    int
	xattrs map[string]string
	format tar.Format
	dev    [2]int64          // major and minor of char and block devices
	pax    map[string]string // a global header's PAX records
}

func tFile(name, data string) lent   { return lent{name: name, data: data} }
func tDir(name string) lent          { return lent{name: name, typ: tar.TypeDir} }
func tSym(name, target string) lent  { return lent{name: name, typ: tar.TypeSymlink, link: target} }
func tHard(name, target string) lent { return lent{name: name, typ: tar.TypeLink, link: target} }

// tDev is a char (typ tar.TypeChar) or block (tar.TypeBlock) device.
func tDev(name string, typ byte, major, minor int64) lent {
	return lent{name: name, typ: typ, mode: 0o660, dev: [2]int64{major, minor}}
}

// tGlobal is a PAX global header with the given records.
func tGlobal(records map[string]string) lent {
	return lent{name: "pax_global_header", typ: tar.TypeXGlobalHeader, pax: records}
}

// with returns e with the given mode and owner.
func (e lent) with(mode int64, uid int) lent { e.mode, e.uid = mode, uid; return e }

// perm is the permission an entry gets in the tar.
func (e lent) perm() int64 {
	switch {
	case e.mode != 0:
		return e.mode
	case e.typ == tar.TypeDir:
		return 0o755
	case e.typ == tar.TypeSymlink:
		return 0o777
	}
	return 0o644
}

// layerTar writes entries as a tar archive.
func layerTar(t testing.TB, ents []lent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		if e.typ == tar.TypeXGlobalHeader {
			h := tar.Header{Name: e.name, Typeflag: e.typ, PAXRecords: e.pax}
			if err := tw.WriteHeader(&h); err != nil {
				t.Fatalf("writing global header %q: %v", h.Name, err)
			}
			continue
		}
		h := tar.Header{
			Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.perm(),
			Uid: e.uid, Gid: e.uid, ModTime: t0, Format: e.format,
			Devmajor: e.dev[0], Devminor: e.dev[1],
		}
		if e.typ == 0 {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		for k, v := range e.xattrs {
			if h.PAXRecords == nil {
				h.PAXRecords = map[string]string{}
			}
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("writing tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil {
			t.Fatalf("writing tar data %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// testLayer is a layer of a test case.
type testLayer struct {
	name     string // FlattenLayer.Name
	ents     []lent
	plain    bool // a plain tarball: Whiteouts false
	strip    int
	prefix   string
	compress string // "", "gzip", "zstd", "xz"
	raw      []byte // the stream, instead of ents
}

// stream is a layer stream that records how it was used.
type stream struct {
	r       *bytes.Reader
	atEOF   bool
	closed  bool
	readErr error
}

func (s *stream) Read(p []byte) (int, error) {
	if s.closed {
		return 0, errors.New("read after close")
	}
	n, err := s.r.Read(p)
	if err == io.EOF {
		s.atEOF = true
	}
	return n, err
}

func (s *stream) Close() error {
	if s.closed {
		return errors.New("closed twice")
	}
	s.closed = true
	return nil
}

// opener makes FlattenLayers of test layers and remembers the streams
// Flatten opened.
type opener struct {
	streams map[int][]*stream // by layer index
}

func (o *opener) layers(t testing.TB, tls []testLayer) []FlattenLayer {
	t.Helper()
	o.streams = map[int][]*stream{}
	var out []FlattenLayer
	for i, tl := range tls {
		b := tl.raw
		if b == nil {
			b = compress(t, tl.compress, layerTar(t, tl.ents))
		}
		out = append(out, FlattenLayer{
			Name: tl.name,
			Open: func() (io.ReadCloser, error) {
				s := &stream{r: bytes.NewReader(b)}
				o.streams[i] = append(o.streams[i], s)
				return s, nil
			},
			StripComponents: tl.strip,
			Prefix:          tl.prefix,
			Whiteouts:       !tl.plain,
		})
	}
	return out
}

// check verifies that every stream was closed and, after a successful
// Flatten, read to its end, each layer once except those listed in rereads.
func (o *opener) check(t testing.TB, n int, ok bool, rereads []int) {
	t.Helper()
	for i := range n {
		ss := o.streams[i]
		if ok {
			want := 1
			if slices.Contains(rereads, i) {
				want = 2
			}
			if len(ss) != want {
				t.Errorf("layer %d opened %d times, want %d", i+1, len(ss), want)
			}
		}
		for _, s := range ss {
			if !s.closed {
				t.Errorf("layer %d: stream not closed", i+1)
			}
			if ok && !s.atEOF {
				t.Errorf("layer %d: stream not read to its end", i+1)
			}
		}
	}
}

// node is what the tests compare of each path of a flattened image.
type node struct {
	Mode     fs.FileMode
	UID, GID uint32
	Size     int64     // regular files
	Data     string    // regular files
	Link     string    // symlinks
	Nlink    uint32    // non-directories
	Dev      [2]uint32 // char and block devices: major, minor
	Xattrs   map[string]string
}

func nDir() node { return node{Mode: fs.ModeDir | 0o755} }
func nDirM(perm fs.FileMode, id uint32) node {
	return node{Mode: fs.ModeDir | perm, UID: id, GID: id}
}
func nFile(data string) node { return nLinks(data, 1) }
func nLinks(data string, nlink uint32) node {
	return node{Mode: 0o644, Size: int64(len(data)), Data: data, Nlink: nlink}
}
func nSym(target string) node { return node{Mode: fs.ModeSymlink | 0o777, Link: target, Nlink: 1} }

// snapshot reads every path of an image: the tree, and which paths share
// an inode (groups of two or more, sorted).
func snapshot(t testing.TB, img []byte) (map[string]node, [][]string) {
	t.Helper()
	fsys, err := erofs.Open(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("erofs.Open: %v", err)
	}
	got := map[string]node{}
	byNid := map[uint64][]string{}
	err = walkImage(t, fsys, func(p string, fc facts, st *erofs.Stat) {
		if fc.Mode&fs.ModeDir == 0 {
			byNid[st.Nid] = append(byNid[st.Nid], p)
		}
		got[p] = node{
			Mode: fc.Mode, UID: fc.UID, GID: fc.GID, Size: fc.Size, Data: fc.Data,
			Link: fc.Link, Nlink: fc.Nlink, Dev: fc.Dev, Xattrs: fc.Xattrs,
		}
	})
	if err != nil {
		t.Fatalf("walking the image: %v", err)
	}
	return got, groups(slices.Collect(maps.Values(byNid)))
}

// groups keeps the groups of two or more names, sorted.
func groups(in [][]string) [][]string {
	var out [][]string
	for _, g := range in {
		if len(g) > 1 {
			out = append(out, slices.Sorted(slices.Values(g)))
		}
	}
	slices.SortFunc(out, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// flattenBytes flattens layers into an image in memory.
func flattenBytes(t testing.TB, layers []FlattenLayer) ([]byte, error) {
	t.Helper()
	out := new(memFile)
	w, err := erofs.NewWriter(out, erofs.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := Flatten(t.Context(), w, layers, Limits{}); err != nil {
		w.Discard()
		return nil, err
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close after a successful Flatten: %v", err)
	}
	return out.b, nil
}

// ---- The reference model ----
//
// refFlatten applies layers bottom-up to a map of paths, the way an
// extracting unpacker does, with the rules written out one by one. It is
// meant to be obviously right rather than fast, and is what FuzzFlatten
// checks Flatten against.

type refInode struct{ e lent }

type refNode struct {
	dir   bool
	meta  *lent     // directories: the entry that set the metadata; nil if implied
	ino   *refInode // non-directories
	layer int       // the layer that made it
}

type refTree map[string]*refNode

// refName maps a tar name as the layer's options say, or reports that the
// entry is skipped.
func (tl testLayer) refName(raw string) (string, bool) {
	var comps []string
	for c := range strings.SplitSeq(raw, "/") {
		if c != "" {
			comps = append(comps, c)
		}
	}
	if len(comps) <= tl.strip && tl.strip > 0 {
		return "", false
	}
	comps = comps[tl.strip:]
	comps = slices.DeleteFunc(comps, func(c string) bool { return c == "." })
	if len(comps) == 0 && tl.strip > 0 {
		return "", false
	}
	if p := strings.Trim(tl.prefix, "/"); p != "" {
		comps = append(strings.Split(p, "/"), comps...)
	}
	if len(comps) == 0 {
		return ".", true
	}
	return strings.Join(comps, "/"), true
}

func refParent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return "."
}

func refBase(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

// under reports whether p is below dir.
func under(p, dir string) bool { return dir == "." && p != "." || strings.HasPrefix(p, dir+"/") }

func (m refTree) delTree(p string) {
	for k := range m {
		if k == p || under(k, p) {
			delete(m, k)
		}
	}
}

func (m refTree) delBelow(dir string) {
	for k := range m {
		if under(k, dir) {
			delete(m, k)
		}
	}
}

// ensureParents makes every directory above p exist, as an unpacker's
// MkdirAll does: a missing one is created with default metadata, and a
// lower layer's non-directory in the way is replaced (overlayfs), but one
// of the same layer is an error (ENOTDIR).
func (m refTree) ensureParents(p string, layer int) error {
	if p == "." {
		return nil
	}
	parts := strings.Split(p, "/")
	for i := 1; i < len(parts); i++ {
		a := strings.Join(parts[:i], "/")
		n := m[a]
		switch {
		case n == nil:
			m[a] = &refNode{dir: true, layer: layer}
		case !n.dir && n.layer == layer:
			return fmt.Errorf("%q: %w", a, erofs.ErrNotDir)
		case !n.dir:
			m.delTree(a)
			m[a] = &refNode{dir: true, layer: layer}
		}
	}
	return nil
}

func refFlatten(tls []testLayer) (refTree, error) {
	m := refTree{".": {dir: true}}
	for i, tl := range tls {
		if err := m.apply(i, tl); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i+1, err)
		}
	}
	return m, nil
}

func (m refTree) apply(layer int, tl testLayer) error {
	type op struct {
		kind byte // 'e' entry, 'w' whiteout, 'o' opaque marker
		path string
		e    lent
	}
	var ops []op
	for _, e := range tl.ents {
		if e.typ == tar.TypeXGlobalHeader {
			continue // tar readers do not apply global headers; nor does docker
		}
		p, ok := tl.refName(e.name)
		if !ok {
			continue
		}
		kind := byte('e')
		if !tl.plain && p != "." {
			base := refBase(p)
			switch {
			case base == ".wh..wh..opq":
				kind = 'o'
			case strings.HasPrefix(base, ".wh..wh."):
				continue
			case strings.HasPrefix(base, ".wh."):
				kind = 'w'
			case strings.Contains("/"+p, "/.wh..wh."):
				continue
			}
		}
		ops = append(ops, op{kind, p, e})
	}
	// Whiteouts and opaque markers apply to the layers below only: first.
	for _, o := range ops {
		switch o.kind {
		case 'w':
			m.delTree(filepath.Join(refParent(o.path), strings.TrimPrefix(refBase(o.path), ".wh.")))
		case 'o':
			if n := m[refParent(o.path)]; n != nil && n.dir {
				m.delBelow(refParent(o.path))
			}
		}
	}
	for _, o := range ops {
		if err := m.ensureParents(o.path, layer); err != nil {
			return fmt.Errorf("%q: %w", o.e.name, err)
		}
		if o.kind != 'e' {
			continue
		}
		e := o.e
		switch e.typ {
		case tar.TypeDir:
			if n := m[o.path]; n != nil && n.dir {
				n.meta = &e
			} else {
				m.delTree(o.path)
				m[o.path] = &refNode{dir: true, meta: &e, layer: layer}
			}
		case tar.TypeLink:
			t, _ := tl.refName(e.link)
			if o.path == t || under(o.path, t) || under(t, o.path) {
				return fmt.Errorf("%q: link to itself or a relative", e.name)
			}
			m.delTree(o.path)
			tn := m[t]
			if tn == nil || tn.dir {
				return fmt.Errorf("%q: hard link to %q: %w", e.name, e.link, erofs.ErrNotExist)
			}
			m[o.path] = &refNode{ino: tn.ino, layer: layer}
		default:
			if o.path == "." {
				return fmt.Errorf("%q: the root must be a directory", e.name)
			}
			m.delTree(o.path)
			m[o.path] = &refNode{ino: &refInode{e}, layer: layer}
		}
	}
	return nil
}

// view renders the model like snapshot renders an image.
func (m refTree) view() (map[string]node, [][]string) {
	out := map[string]node{}
	names := map[*refInode][]string{}
	for p, n := range m {
		if !n.dir {
			names[n.ino] = append(names[n.ino], p)
		}
	}
	for p, n := range m {
		if n.dir {
			v := nDir()
			if n.meta != nil {
				v = node{Mode: fs.ModeDir | tarPerm(n.meta.perm()), UID: uint32(n.meta.uid), GID: uint32(n.meta.uid), Xattrs: n.meta.xattrs}
			}
			out[p] = v
			continue
		}
		e := n.ino.e
		v := node{Mode: tarPerm(e.perm()), UID: uint32(e.uid), GID: uint32(e.uid), Nlink: uint32(len(names[n.ino])), Xattrs: e.xattrs}
		switch e.typ {
		case tar.TypeSymlink:
			v.Mode |= fs.ModeSymlink
			v.Link = e.link
		case tar.TypeFifo:
			v.Mode |= fs.ModeNamedPipe
		case tar.TypeChar, tar.TypeBlock:
			v.Mode |= fs.ModeDevice
			if e.typ == tar.TypeChar {
				v.Mode |= fs.ModeCharDevice
			}
			v.Dev = [2]uint32{uint32(e.dev[0]), uint32(e.dev[1])}
		default:
			v.Size, v.Data = int64(len(e.data)), e.data
		}
		out[p] = v
	}
	return out, groups(slices.Collect(maps.Values(names)))
}

// ---- Table tests ----

var longName = "long/" + strings.Repeat("directory-name-", 8) + "/" + strings.Repeat("file-name-", 12)

func TestFlatten(t *testing.T) {
	type tree = map[string]node
	gnu := func(e lent) lent { e.format = tar.FormatGNU; return e }
	pax := func(e lent) lent { e.format = tar.FormatPAX; return e }
	xattr := func(e lent, k, v string) lent { e.xattrs = map[string]string{k: v}; e.format = tar.FormatPAX; return e }
	tests := []struct {
		name    string
		layers  []testLayer
		want    tree
		rereads []int // layers (0-based) read twice
	}{
		{
			name: "file deleted by whiteout",
			layers: []testLayer{
				{ents: []lent{tDir("a/"), tFile("a/x", "x"), tFile("a/y", "y")}},
				{ents: []lent{tFile("a/.wh.x", "")}},
			},
			want: tree{".": nDir(), "a": nDir(), "a/y": nFile("y")},
		},
		{
			name: "directory deleted with its children",
			layers: []testLayer{
				{ents: []lent{tDir("d/"), tFile("d/a", "a"), tDir("d/sub/"), tFile("d/sub/b", "b"), tFile("keep", "k")}},
				{ents: []lent{tFile(".wh.d", "")}},
			},
			want: tree{".": nDir(), "keep": nFile("k")},
		},
		{
			name: "whiteout of a path no lower layer has",
			layers: []testLayer{
				{ents: []lent{tFile("a", "a")}},
				{ents: []lent{tFile(".wh.nothing", ""), tFile("sub/.wh.nothing", "")}},
			},
			want: tree{".": nDir(), "a": nFile("a"), "sub": nDir()},
		},
		{
			name: "opaque directory, marker first",
			layers: []testLayer{
				{ents: []lent{tDir("d/"), tFile("d/old", "o"), tDir("d/sub/"), tFile("d/sub/x", "x"), tFile("other", "1")}},
				{ents: []lent{tDir("d/"), tFile("d/.wh..wh..opq", ""), tFile("d/-dash", "1"), tFile("d/+x", "2"),
					tFile("d/#x", "3"), tFile("d/!x", "4"), tFile("d/new", "5")}},
			},
			want: tree{".": nDir(), "d": nDir(), "d/-dash": nFile("1"), "d/+x": nFile("2"), "d/#x": nFile("3"),
				"d/!x": nFile("4"), "d/new": nFile("5"), "other": nFile("1")},
		},
		{
			name: "opaque directory, marker last",
			layers: []testLayer{
				{ents: []lent{tDir("d/"), tFile("d/old", "o"), tFile("d/-dash", "old")}},
				{ents: []lent{tDir("d/"), tFile("d/!x", "4"), tFile("d/#x", "3"), tFile("d/+x", "2"), tFile("d/-dash", "1"),
					tFile("d/.wh..wh..opq", "")}},
			},
			want: tree{".": nDir(), "d": nDir(), "d/-dash": nFile("1"), "d/+x": nFile("2"), "d/#x": nFile("3"), "d/!x": nFile("4")},
		},
		{
			name: "opaque directory in the top layer over two lower layers",
			layers: []testLayer{
				{ents: []lent{tDir("d/").with(0o700, 3), tFile("d/a", "a"), tFile("e", "e")}},
				{ents: []lent{tDir("d/"), tFile("d/b", "b"), tDir("d/sub/"), tFile("d/sub/c", "c")}},
				{ents: []lent{tFile("d/.wh..wh..opq", ""), tFile("d/top", "t")}},
			},
			// The opaque layer has no entry for d: d's metadata is the
			// topmost lower layer's; only its contents are hidden.
			want: tree{".": nDir(), "d": nDir(), "d/top": nFile("t"), "e": nFile("e")},
		},
		{
			name: "opaque root",
			layers: []testLayer{
				{ents: []lent{tFile("a", "a"), tDir("d/"), tFile("d/x", "x")}},
				{ents: []lent{tFile(".wh..wh..opq", ""), tFile("b", "b")}},
			},
			want: tree{".": nDir(), "b": nFile("b")},
		},
		{
			name: "file replaces directory",
			layers: []testLayer{
				{ents: []lent{tDir("p/"), tFile("p/x", "x"), tDir("p/sub/"), tFile("p/sub/y", "y")}},
				{ents: []lent{tFile("p", "file")}},
			},
			want: tree{".": nDir(), "p": nFile("file")},
		},
		{
			name: "directory replaces file",
			layers: []testLayer{
				{ents: []lent{tFile("p", "file")}},
				{ents: []lent{tDir("p/").with(0o750, 0), tFile("p/x", "x")}},
			},
			want: tree{".": nDir(), "p": nDirM(0o750, 0), "p/x": nFile("x")},
		},
		{
			name: "upper entry below a lower file implies a directory",
			layers: []testLayer{
				{ents: []lent{tFile("p", "file"), tSym("s", "/etc")}},
				{ents: []lent{tFile("p/x", "x"), tFile("s/y", "y")}},
			},
			want: tree{".": nDir(), "p": nDir(), "p/x": nFile("x"), "s": nDir(), "s/y": nFile("y")},
		},
		{
			name: "whiteout then re-create in a higher layer",
			layers: []testLayer{
				{ents: []lent{tFile("a", "1"), tDir("d/").with(0o700, 1), tFile("d/x", "x")}},
				{ents: []lent{tFile(".wh.a", ""), tFile(".wh.d", "")}},
				{ents: []lent{tFile("a", "3"), tFile("d/y", "y")}},
			},
			want: tree{".": nDir(), "a": nFile("3"), "d": nDir(), "d/y": nFile("y")},
		},
		{
			// The original's squash looked only at the nearest recorded
			// path: x whited out and x/a added made a lower x/b visible
			// again.
			name: "whiteout and new entries below it in one layer hide the lower entries",
			layers: []testLayer{
				{ents: []lent{tDir("x/").with(0o700, 1), tFile("x/0", "0"), tFile("x/b", "b"), tDir("x/sub/"), tFile("x/sub/deep", "d"),
					tFile("x/z", "z"), tFile("y", "file"), tFile("x-after", "kept")}},
				{ents: []lent{tFile(".wh.x", ""), tFile("x/a", "a"), tFile(".wh.y", ""), tFile("y/a", "a")}},
			},
			want: tree{".": nDir(), "x": nDir(), "x/a": nFile("a"), "y": nDir(), "y/a": nFile("a"), "x-after": nFile("kept")},
		},
		{
			name: "new entries then their directory's whiteout in one layer",
			layers: []testLayer{
				{ents: []lent{tDir("x/"), tFile("x/b", "b"), tDir("x/c/"), tFile("x/c/d", "d")}},
				{ents: []lent{tDir("x/").with(0o750, 2), tFile("x/a", "a"), tFile("x/c/new", "n"), tFile(".wh.x", "")}},
			},
			want: tree{".": nDir(), "x": nDirM(0o750, 2), "x/a": nFile("a"), "x/c": nDir(), "x/c/new": nFile("n")},
		},
		{
			name: "opaque directory and new entries in one layer hide the lower entries",
			layers: []testLayer{
				{ents: []lent{tDir("x/"), tFile("x/0", "0"), tFile("x/b", "b"), tDir("x/c/"), tFile("x/c/deep", "d"), tFile("x/z", "z")}},
				{ents: []lent{tFile("x/a", "a"), tFile("x/.wh..wh..opq", ""), tFile("x/c/new", "n")}},
				{ents: []lent{tFile("x/top", "t")}},
			},
			want: tree{".": nDir(), "x": nDir(), "x/a": nFile("a"), "x/c": nDir(), "x/c/new": nFile("n"), "x/top": nFile("t")},
		},
		{
			name: "symlink replaces a directory",
			layers: []testLayer{
				{ents: []lent{tDir("d/"), tFile("d/a", "a"), tDir("d/sub/"), tFile("d/sub/b", "b"), tFile("d-sibling", "s")}},
				{ents: []lent{tSym("d", "/elsewhere")}},
			},
			want: tree{".": nDir(), "d": nSym("/elsewhere"), "d-sibling": nFile("s")},
		},
		{
			name: "directory replaces a symlink",
			layers: []testLayer{
				{ents: []lent{tDir("real/"), tFile("real/a", "a"), tSym("d", "real")}},
				{ents: []lent{tDir("d/").with(0o700, 0), tFile("d/b", "b")}},
			},
			want: tree{".": nDir(), "real": nDir(), "real/a": nFile("a"), "d": nDirM(0o700, 0), "d/b": nFile("b")},
		},
		{
			name: "PAX global headers are ignored",
			layers: []testLayer{
				{ents: []lent{tGlobal(map[string]string{"comment": "made by a test", "uid": "42"}), tFile("a", "a"),
					tGlobal(map[string]string{"path": "evil", "mtime": "1"}), tFile("b", "b")}},
				{ents: []lent{tFile(".wh.a", ""), tGlobal(map[string]string{"comment": "mid-layer"}), tFile("c", "c")}},
			},
			want: tree{".": nDir(), "b": nFile("b"), "c": nFile("c")},
		},
		{
			name: "char and block devices",
			layers: []testLayer{
				{ents: []lent{tDir("dev/"), tDev("dev/null", tar.TypeChar, 1, 3), tDev("dev/sda", tar.TypeBlock, 8, 0),
					tDev("dev/tty", tar.TypeChar, 5, 0), tDev("dev/big", tar.TypeBlock, 259, 70000)}},
				{ents: []lent{tFile("dev/.wh.tty", ""), tFile("dev/sda", "now a file"), tDev("dev/zero", tar.TypeChar, 1, 5).with(0o666, 0)}},
			},
			want: tree{".": nDir(), "dev": nDir(),
				"dev/null": {Mode: fs.ModeDevice | fs.ModeCharDevice | 0o660, Nlink: 1, Dev: [2]uint32{1, 3}},
				"dev/big":  {Mode: fs.ModeDevice | 0o660, Nlink: 1, Dev: [2]uint32{259, 70000}},
				"dev/sda":  nFile("now a file"),
				"dev/zero": {Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, Nlink: 1, Dev: [2]uint32{1, 5}}},
		},
		{
			name: "duplicates in one layer: last wins",
			layers: []testLayer{
				{ents: []lent{tFile("a", "lower"), tDir("c/"), tFile("c/z", "z")}},
				{ents: []lent{tFile("a", "1"), tFile("a", "2"),
					tFile("b", "file"), tDir("b/"), tFile("b/x", "x"),
					tDir("c/"), tFile("c/y", "y"), tFile("c", "now a file"),
					tDir("e/").with(0o700, 0), tDir("e/").with(0o711, 2)}},
			},
			want: tree{".": nDir(), "a": nFile("2"), "b": nDir(), "b/x": nFile("x"), "c": nFile("now a file"), "e": nDirM(0o711, 2)},
		},
		{
			name: "type changes in one layer under an upper directory",
			layers: []testLayer{
				{ents: []lent{tDir("d/").with(0o700, 1), tFile("d/low", "low")}},
				{ents: []lent{tDir("d/").with(0o750, 2), tFile("d/x", "x"), tDir("d/sub/"), tFile("d/sub/y", "y"),
					tFile("d", "file"), tDir("d/").with(0o711, 3), tFile("d/z", "z")}},
				{ents: []lent{tFile("d/top", "t")}},
			},
			want: tree{".": nDir(), "d": nDirM(0o711, 3), "d/z": nFile("z"), "d/top": nFile("t")},
		},
		{
			name: "a file replaces a directory an upper layer implies",
			layers: []testLayer{
				{ents: []lent{tDir("d/").with(0o700, 1), tFile("d/low", "low")}},
				{ents: []lent{tDir("d/").with(0o750, 2), tFile("d/x", "x"), tFile("d", "file")}},
				{ents: []lent{tFile("d/top", "t")}},
			},
			want: tree{".": nDir(), "d": nDir(), "d/top": nFile("t")},
		},
		{
			name: "hard link in the same layer",
			layers: []testLayer{
				{ents: []lent{tFile("t", "data"), tHard("l", "t"), tHard("sub/l2", "l")}},
			},
			want: tree{".": nDir(), "t": nLinks("data", 3), "l": nLinks("data", 3), "sub": nDir(), "sub/l2": nLinks("data", 3)},
		},
		{
			name: "hard link in an upper layer to a file of a lower layer",
			layers: []testLayer{
				{ents: []lent{tFile("t", "data")}},
				{ents: []lent{tHard("l", "t")}},
			},
			want: tree{".": nDir(), "t": nLinks("data", 2), "l": nLinks("data", 2)},
		},
		{
			name: "hard link whose target the upper layer deletes",
			layers: []testLayer{
				{ents: []lent{tFile("t", "old"), tHard("l", "t")}},
				{ents: []lent{tFile(".wh.t", "")}},
			},
			want:    tree{".": nDir(), "l": nFile("old")},
			rereads: []int{0},
		},
		{
			name: "hard link whose target the upper layer replaces",
			layers: []testLayer{
				{ents: []lent{tFile("t", "old"), tHard("l", "t"), tHard("l2", "t")}},
				{ents: []lent{tFile("t", "new")}},
			},
			want:    tree{".": nDir(), "t": nFile("new"), "l": nLinks("old", 2), "l2": nLinks("old", 2)},
			rereads: []int{0},
		},
		{
			name: "hard link to a lower file that a higher layer deletes",
			layers: []testLayer{
				{ents: []lent{tFile("t", "old")}},
				{ents: []lent{tHard("l", "t"), tHard("m", "t")}},
				{ents: []lent{tFile(".wh.t", "")}},
			},
			want: tree{".": nDir(), "l": nLinks("old", 2), "m": nLinks("old", 2)},
		},
		{
			name: "hard link to a lower symlink that a higher layer replaces",
			layers: []testLayer{
				{ents: []lent{tSym("t", "target")}},
				{ents: []lent{tHard("l", "t")}},
				{ents: []lent{tFile("t", "new")}},
			},
			want: tree{".": nDir(), "t": nFile("new"), "l": nSym("target")},
		},
		{
			name: "chained hard links",
			layers: []testLayer{
				{ents: []lent{tFile("t", "data")}},
				{ents: []lent{tHard("u", "t")}},
				{ents: []lent{tHard("v", "u")}},
			},
			want: tree{".": nDir(), "t": nLinks("data", 3), "u": nLinks("data", 3), "v": nLinks("data", 3)},
		},
		{
			name: "chained hard links, the first target deleted",
			layers: []testLayer{
				{ents: []lent{tFile("t", "data"), tFile("other", "o"), tHard("w", "other")}},
				{ents: []lent{tHard("u", "t"), tFile(".wh.other", "")}},
				{ents: []lent{tHard("v", "u"), tFile(".wh.t", ""), tHard("x", "w")}},
			},
			want: tree{".": nDir(), "u": nLinks("data", 2), "v": nLinks("data", 2), "w": nLinks("o", 2), "x": nLinks("o", 2)},
			// w is visible, its target other is not, and its data comes
			// before w in the stream.
			rereads: []int{0},
		},
		{
			name: "symlinks kept as written",
			layers: []testLayer{
				{ents: []lent{tDir("bin/"), tSym("bin/abs", "/etc/passwd"), tSym("bin/rel", "../../../../etc/shadow")}},
				{ents: []lent{tSym("bin/up", "../../..")}},
			},
			want: tree{".": nDir(), "bin": nDir(), "bin/abs": nSym("/etc/passwd"), "bin/rel": nSym("../../../../etc/shadow"), "bin/up": nSym("../../..")},
		},
		{
			name: "long names, xattrs and non-UTF-8 names across layers",
			layers: []testLayer{
				{ents: []lent{pax(tFile(longName, "pax")), pax(tFile(longName+"-gone", "x")), xattr(tFile("cap", "c"), "user.note", "hi"),
					tFile("caf\xe9", "latin1"), tFile("caf\xe9-kept", "k")}},
				{ents: []lent{gnu(tFile(longName+"-gnu", "gnu")), gnu(tFile(refParent(longName)+"/.wh."+refBase(longName)+"-gone", "")),
					tFile(".wh.caf\xe9", ""), tFile("\xff\xfe", "bytes")}},
			},
			want: tree{".": nDir(), "long": nDir(), refParent(longName): nDir(),
				longName: nFile("pax"), longName + "-gnu": nFile("gnu"),
				"cap":          {Mode: 0o644, Size: 1, Data: "c", Nlink: 1, Xattrs: map[string]string{"user.note": "hi"}},
				"caf\xe9-kept": nFile("k"), "\xff\xfe": nFile("bytes")},
		},
		{
			name: "long name whited out",
			layers: []testLayer{
				{ents: []lent{pax(tFile(longName, "pax")), pax(tFile(longName+"-kept", "k"))}},
				{ents: []lent{pax(tFile(refParent(longName)+"/.wh."+refBase(longName), ""))}},
			},
			want: tree{".": nDir(), "long": nDir(), refParent(longName): nDir(), longName + "-kept": nFile("k")},
		},
		{
			name: "directory metadata: upper, implied, lower",
			layers: []testLayer{
				{ents: []lent{tDir("d/").with(0o700, 5), tFile("d/a", "a"), tDir("e/").with(0o700, 5)}},
				{ents: []lent{tFile("d/b", "b"), tDir("e/").with(0o750, 7), tFile("f/x", "x"), tDir("./").with(0o711, 0)}},
			},
			want: tree{".": nDirM(0o711, 0), "d": nDirM(0o700, 5), "d/a": nFile("a"), "d/b": nFile("b"), "e": nDirM(0o750, 7),
				"f": nDir(), "f/x": nFile("x")},
		},
		{
			name: "AUFS metadata skipped",
			layers: []testLayer{
				{ents: []lent{tFile("a", "a")}},
				{ents: []lent{tDir(".wh..wh.plnk/"), tFile(".wh..wh.plnk/123.456", "x"), tFile(".wh..wh.aufs", ""), tDir(".wh..wh.orph/")}},
			},
			want: tree{".": nDir(), "a": nFile("a")},
		},
		{
			name: "fifo and setuid",
			layers: []testLayer{
				{ents: []lent{{name: "pipe", typ: tar.TypeFifo, mode: 0o600}, tFile("su", "s").with(0o4755, 0)}},
			},
			want: tree{".": nDir(), "pipe": {Mode: fs.ModeNamedPipe | 0o600, Nlink: 1},
				"su": {Mode: fs.ModeSetuid | 0o755, Size: 1, Data: "s", Nlink: 1}},
		},
		{
			name: "compressed layers",
			layers: []testLayer{
				{ents: []lent{tFile("g", "gzip")}, compress: "gzip"},
				{ents: []lent{tFile("z", "zstd")}, compress: "zstd"},
				{ents: []lent{tFile("x", "xz"), tFile(".wh.g", "")}, compress: "xz"},
			},
			want: tree{".": nDir(), "z": nFile("zstd"), "x": nFile("xz")},
		},
		{
			name: "plain tarball keeps .wh. names",
			layers: []testLayer{
				{ents: []lent{tFile("a", "a")}},
				{ents: []lent{tFile(".wh.a", "x"), tFile("d/.wh..wh..opq", "y")}, plain: true},
			},
			want: tree{".": nDir(), "a": nFile("a"), ".wh.a": nFile("x"), "d": nDir(), "d/.wh..wh..opq": nFile("y")},
		},
		{
			name: "Compiler Explorer tarball over a base",
			layers: []testLayer{
				{ents: []lent{tDir("./"), tDir("bin/"), tFile("bin/sh", "sh"), tDir("opt/").with(0o750, 0), tDir("usr/")}},
				{ents: []lent{tDir("opt/old/"), tFile("opt/old/tool", "t"), tFile("etc/os-release", "debian")}, compress: "gzip"},
				{
					name: "gcc-14.1.0.tar.xz", plain: true, strip: 1, prefix: "/opt/compiler-explorer/gcc-14.1.0", compress: "xz",
					ents: []lent{tDir("gcc-14.1.0/"), tDir("gcc-14.1.0/bin/").with(0o700, 1000), tFile("gcc-14.1.0/bin/gcc", "GCC").with(0o755, 1000),
						tHard("gcc-14.1.0/bin/g++", "gcc-14.1.0/bin/gcc"), tDir("gcc-14.1.0/lib/"), tSym("gcc-14.1.0/lib/libgcc.so", "libgcc.so.1"),
						tFile("gcc-14.1.0/lib/libgcc.so.1", "lib"), tFile("gcc-14.1.0/.wh.kept", "")},
				},
			},
			want: tree{".": nDir(), "bin": nDir(), "bin/sh": nFile("sh"), "opt": nDirM(0o750, 0), "usr": nDir(),
				"opt/old": nDir(), "opt/old/tool": nFile("t"), "etc": nDir(), "etc/os-release": nFile("debian"),
				"opt/compiler-explorer":                            nDir(),
				"opt/compiler-explorer/gcc-14.1.0":                 nDir(),
				"opt/compiler-explorer/gcc-14.1.0/bin":             nDirM(0o700, 1000),
				"opt/compiler-explorer/gcc-14.1.0/bin/gcc":         {Mode: 0o755, UID: 1000, GID: 1000, Size: 3, Data: "GCC", Nlink: 2},
				"opt/compiler-explorer/gcc-14.1.0/bin/g++":         {Mode: 0o755, UID: 1000, GID: 1000, Size: 3, Data: "GCC", Nlink: 2},
				"opt/compiler-explorer/gcc-14.1.0/lib":             nDir(),
				"opt/compiler-explorer/gcc-14.1.0/lib/libgcc.so":   nSym("libgcc.so.1"),
				"opt/compiler-explorer/gcc-14.1.0/lib/libgcc.so.1": nFile("lib"),
				"opt/compiler-explorer/gcc-14.1.0/.wh.kept":        nFile("")},
		},
		{
			name: "strip and prefix with whiteouts",
			layers: []testLayer{
				{ents: []lent{tFile("usr/a", "a"), tFile("usr/b", "b")}},
				{ents: []lent{tDir("./"), tDir("./pkg/"), tFile("./pkg/.wh.a", ""), tFile("./pkg/c", "c"), tHard("./pkg/d", "./pkg/c")}, strip: 2, prefix: "usr"},
			},
			want: tree{".": nDir(), "usr": nDir(), "usr/b": nFile("b"), "usr/c": nLinks("c", 2), "usr/d": nLinks("c", 2)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o opener
			img, err := flattenBytes(t, o.layers(t, tt.layers))
			o.check(t, len(tt.layers), err == nil, tt.rereads)
			if err != nil {
				t.Fatalf("Flatten: %v", err)
			}
			got, _ := snapshot(t, img)
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("image (-want +got):\n%s", diff)
			}
			// The reference model must agree, inode sharing included.
			ref, err := refFlatten(tt.layers)
			if err != nil {
				t.Fatalf("reference model: %v", err)
			}
			wantView, wantGroups := ref.view()
			gotView, gotGroups := snapshot(t, img)
			if diff := cmp.Diff(wantView, gotView, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("image vs reference model (-model +image):\n%s", diff)
			}
			if diff := cmp.Diff(wantGroups, gotGroups, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("hard link groups (-model +image):\n%s", diff)
			}
		})
	}
}

func TestFlattenErrors(t *testing.T) {
	big := layerTar(t, []lent{tFile("ok", "fine"), tFile("big.bin", noise(10000))})
	tests := []struct {
		name    string
		layers  []testLayer
		wantErr []string
	}{
		{
			name:    "dotdot",
			layers:  []testLayer{{ents: []lent{tFile("a", "a")}}, {name: "layer sha256:ab12", ents: []lent{tFile("usr/../../x", "x")}}},
			wantErr: []string{`layer sha256:ab12: tar entry "usr/../../x": path escapes the root`},
		},
		{
			name:    "absolute",
			layers:  []testLayer{{ents: []lent{tFile("/etc/passwd", "x")}}},
			wantErr: []string{`layer 1: tar entry "/etc/passwd": path is absolute`},
		},
		{
			name:    "hard link target escapes",
			layers:  []testLayer{{ents: []lent{tFile("a", "a")}}, {ents: []lent{tHard("l", "../a")}}},
			wantErr: []string{`layer 2: tar entry "l": hard link target "../a": path escapes the root`},
		},
		{
			name:    "dangling hard link",
			layers:  []testLayer{{ents: []lent{tFile("a", "a")}}, {ents: []lent{tHard("l", "missing")}}},
			wantErr: []string{`layer 2: tar entry "l": hard link to "missing": no such file`},
		},
		{
			name:    "dangling hidden hard link",
			layers:  []testLayer{{ents: []lent{tFile("a", "a")}}, {ents: []lent{tHard("l", "missing")}}, {ents: []lent{tFile(".wh.l", "")}}},
			wantErr: []string{`layer 2: tar entry "l": hard link to "missing": no such file`},
		},
		{
			name: "hard link to a file an intermediate layer deleted",
			layers: []testLayer{{ents: []lent{tFile("t", "t")}}, {name: "mid", ents: []lent{tFile(".wh.t", "")}},
				{name: "top", ents: []lent{tHard("l", "t")}}},
			wantErr: []string{`top: tar entry "l": hard link to "t": no such file (removed by mid)`},
		},
		{
			name:    "hard link to a file its own layer deletes",
			layers:  []testLayer{{ents: []lent{tFile("t", "t")}}, {ents: []lent{tHard("l", "t"), tFile(".wh.t", "")}}},
			wantErr: []string{`layer 2: tar entry "l": hard link to "t": no such file`},
		},
		{
			name:    "hard link to a directory",
			layers:  []testLayer{{ents: []lent{tDir("d/")}}, {ents: []lent{tHard("l", "d")}}},
			wantErr: []string{`layer 2: tar entry "l": hard link to "d": target is a directory`},
		},
		{
			name:    "hard link to itself",
			layers:  []testLayer{{ents: []lent{tFile("l", "l")}}, {ents: []lent{tHard("l", "l")}}},
			wantErr: []string{`layer 2: tar entry "l": hard link to "l"`},
		},
		{
			name:    "entry below a file of the same layer",
			layers:  []testLayer{{ents: []lent{tFile("a", "a"), tFile("a/b", "b")}}},
			wantErr: []string{`layer 1: tar entry "a/b"`, "not a directory"},
		},
		{
			name:    "root as a file",
			layers:  []testLayer{{ents: []lent{tFile(".", "x")}}},
			wantErr: []string{`layer 1: tar entry "."`, "the root must be a directory"},
		},
		{
			name:    "whiteout of nothing",
			layers:  []testLayer{{ents: []lent{tFile("d/.wh.", "")}}},
			wantErr: []string{`layer 1: tar entry "d/.wh."`, "invalid path"},
		},
		{
			name:    "truncated layer",
			layers:  []testLayer{{ents: []lent{tFile("a", "a")}}, {name: "layer sha256:cut", raw: big[:3*512+3000]}},
			wantErr: []string{`layer sha256:cut: reading tar entry "big.bin": unexpected EOF`},
		},
		{
			name:    "truncated gzip layer",
			layers:  []testLayer{{name: "layer sha256:gz", raw: halve(compress(t, "gzip", big))}},
			wantErr: []string{`layer sha256:gz: `, "unexpected EOF"},
		},
		{
			name:    "bad prefix",
			layers:  []testLayer{{ents: []lent{tFile("a", "a")}, prefix: "../up"}},
			wantErr: []string{`layer 1: prefix "../up": path escapes the root`},
		},
		{
			name:    "hard link target stripped away",
			layers:  []testLayer{{ents: []lent{tFile("top", "t"), tHard("pkg/l", "top")}, strip: 1}},
			wantErr: []string{`layer 1: tar entry "pkg/l": hard link to "top"`, "no name left"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o opener
			_, err := flattenBytes(t, o.layers(t, tt.layers))
			o.check(t, len(tt.layers), false, nil)
			if err == nil {
				t.Fatal("Flatten succeeded, want an error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

// TestFlattenReproducible checks that the same layers give the same image,
// byte for byte: the cache relies on it, and Flatten's bookkeeping iterates
// maps.
func TestFlattenReproducible(t *testing.T) {
	for _, seed := range []string{"hard-links-across-3-layers", "four-layers-mixed", "reread-hidden-link-target", "duplicates-type-change"} {
		data := readCorpusFile(t, filepath.Join("testdata/fuzz/FuzzFlatten", seed))
		var first []byte
		for range 5 {
			var o opener
			img, err := flattenBytes(t, o.layers(t, fuzzLayers(data)))
			if err != nil {
				t.Fatalf("%s: %v", seed, err)
			}
			if first == nil {
				first = img
			} else if !bytes.Equal(first, img) {
				t.Fatalf("%s: two runs gave different images", seed)
			}
		}
	}
}

// readCorpusFile reads the []byte value of a one-value fuzz corpus file.
func readCorpusFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 2 || lines[0] != "go test fuzz v1" || !strings.HasPrefix(lines[1], "[]byte(") {
		t.Fatalf("%s: not a one-value go test fuzz v1 file", path)
	}
	lit := strings.TrimPrefix(lines[1], "[]byte(")
	s, err := strconv.Unquote(strings.TrimSuffix(lit, ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

func TestFlattenOpenError(t *testing.T) {
	boom := errors.New("boom")
	layers := []FlattenLayer{{Name: "layer sha256:x", Open: func() (io.ReadCloser, error) { return nil, boom }}}
	_, err := flattenBytes(t, layers)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "layer sha256:x") {
		t.Errorf("Flatten = %v, want an error wrapping %v naming the layer", err, boom)
	}
}

func TestFlattenCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var o opener
	w, err := erofs.NewWriter(new(memFile), erofs.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Discard()
	err = Flatten(ctx, w, o.layers(t, []testLayer{{ents: []lent{tFile("a", "a")}}}), Limits{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Flatten = %v, want context.Canceled", err)
	}
	o.check(t, 1, false, nil)
}

// TestFlattenMount checks a flattened image with the kernel's EROFS driver.
func TestFlattenMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	layers := []testLayer{
		{ents: []lent{tDir("d/").with(0o700, 5), tFile("d/old", "o"), tFile("t", "old"), tHard("l", "t"),
			tDir("gone/"), tFile("gone/x", "x"), tSym("abs", "/etc/passwd"), xattr1(tFile("x", "x"), "user.k", "v")}},
		{ents: []lent{tFile("d/.wh..wh..opq", ""), tFile("d/-dash", "1"), tFile(".wh.gone", ""), tFile("t", "new"),
			tFile("f/y", "y"), tHard("f/l2", "l")}, compress: "gzip"},
	}
	want := map[string]node{".": nDir(), "d": nDirM(0o700, 5), "d/-dash": nFile("1"), "t": nFile("new"),
		"l": nLinks("old", 2), "f": nDir(), "f/y": nFile("y"), "f/l2": nLinks("old", 2), "abs": nSym("/etc/passwd"),
		"x": {Mode: 0o644, Size: 1, Data: "x", Nlink: 1, Xattrs: map[string]string{"user.k": "v"}}}

	var o opener
	img, err := flattenBytes(t, o.layers(t, layers))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	imgPath := filepath.Join(dir, "img.erofs")
	if err := os.WriteFile(imgPath, img, 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "erofs", "-o", "loop,ro", imgPath, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount EROFS here: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	got := map[string]node{}
	err = filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(mnt, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		n := node{Mode: fi.Mode(), UID: st.Uid, GID: st.Gid}
		if !fi.IsDir() {
			n.Nlink = uint32(st.Nlink)
		}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.Size, n.Data = fi.Size(), string(b)
		case fi.Mode()&fs.ModeSymlink != 0:
			if n.Link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		xs, err := readXattrs(p)
		if err != nil {
			return err
		}
		for k, v := range xs {
			if n.Xattrs == nil {
				n.Xattrs = map[string]string{}
			}
			n.Xattrs[k] = string(v)
		}
		got[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("mounted image (-want +got):\n%s", diff)
	}
}

func xattr1(e lent, k, v string) lent {
	e.xattrs = map[string]string{k: v}
	e.format = tar.FormatPAX
	return e
}

package image

import (
	"archive/tar"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/pe-project/pe/erofs"
)

// FlattenLayer is one tar stream merged by Flatten.
type FlattenLayer struct {
	// Name says which layer an error is about: "layer sha256:ab12…" or
	// "clang-20.tar.xz". Empty means "layer N", counting from 1 in the
	// order given.
	Name string
	// Open returns the tar stream: plain, gzip, zstd or xz (recognised by
	// its magic bytes, as AddTar does). Flatten reads every stream it opens
	// to its end, so that a caller checking the stream's digest sees all of
	// it, and closes it. Open is called once, or twice in one rare case: a
	// hard link of this layer that upper layers keep names a file of this
	// layer that they delete or replace, and Flatten had already skipped
	// that file's data (see Flatten).
	Open func() (io.ReadCloser, error)
	// StripComponents drops this many leading components of every name
	// first, as GNU tar --strip-components does ("./" counts as one);
	// entries with no components left are skipped. Hard link targets are
	// stripped the same way.
	StripComponents int
	// Prefix re-roots every path under this directory, e.g. "/usr" or
	// "opt/compiler-explorer/gcc-14". Directories of the prefix that no
	// layer describes get mode 0755 and owner root.
	Prefix string
	// Whiteouts makes Flatten interpret OCI/AUFS whiteouts: ".wh.NAME"
	// deletes NAME of the layers below, ".wh..wh..opq" hides everything the
	// layers below have in its directory, other ".wh..wh.*" names (AUFS
	// internals) are skipped. True for image layers, false for plain
	// tarballs, where such names are ordinary files.
	Whiteouts bool
	// Tarball marks a tarball a user handed pe rather than an image
	// layer: an empty stream, or an archive that ends without its
	// end-of-archive marker (a truncated file cut between two entries), is
	// an error, where image layers, some of which are written without the
	// marker, are accepted as docker accepts them.
	Tarball bool
}

// Flatten merges layers, given base first (manifest order), into w with
// docker/containerd semantics, in one streaming pass per layer (two in a
// rare case, see FlattenLayer.Open) and without unpacking anything to disk.
// Flatten does not close w; after an error the caller discards it. The
// image is the same, byte for byte, for the same layers.
//
// The result is the tree that extracting the layers one over the other
// leaves (overlayfs semantics where plain extraction would fail):
//   - whiteouts and opaque markers apply to the layers below theirs only,
//     never to entries of their own layer, whatever the order in the tar;
//   - an entry replaces what lower layers have at its path, except that a
//     directory over a directory only takes over the metadata and the
//     children merge; a directory that a layer only implies (it has
//     entries below it but no entry for it) keeps the metadata of a lower
//     directory at that path, and replaces a lower non-directory;
//   - within one layer the last entry for a path wins, and an entry that
//     changes a path's type removes what the layer had there before, as tar
//     extraction does; an entry below a non-directory of its own layer is
//     an error;
//   - a hard link names its target as the layers up to and including its
//     own left it at that point of the stream; when upper layers delete or
//     replace the target but keep the link, the link keeps the target's
//     data, and its link count counts only the names that remain. A link
//     to a path that does not exist then, or to a directory, is an error;
//   - symbolic links are kept exactly as written.
//
// Names are cleaned as AddTar cleans them; absolute names, ".." components
// and over-long components are errors. Every error names the layer, and the
// tar entry when there is one. Flatten checks ctx between entries and while
// reading.
//
// Layers are read top-down (last first) so that each path is written once:
// data that an upper layer hides is skipped in the stream, not written and
// wasted. The price is bookkeeping: for the layers read so far, what they
// do to the layers below them (see flag), and hard links whose target is in
// a layer not read yet (see inode).
//
// Flatten stays within lim (Limits{}: no limits), counted over all the
// layers: an entry that would take them over one of the limits stops the
// conversion with a *LimitError naming the layer, the entry and the limit.
func Flatten(ctx context.Context, w *erofs.Writer, layers []FlattenLayer, lim Limits) error {
	if err := lim.check(); err != nil {
		return err
	}
	f := &flattener{
		ctx:     ctx,
		w:       w,
		root:    &pnode{inWriter: true},
		pending: map[string]*inode{},
		budget:  &budget{lim: lim},
	}
	for i := len(layers) - 1; i >= 0; i-- {
		if err := f.readLayer(i, &layers[i]); err != nil {
			return err
		}
	}
	if len(f.pending) > 0 {
		// Report the same link every time.
		first := slices.Min(slices.Collect(maps.Keys(f.pending)))
		return fmt.Errorf("%s: %w", f.pending[first].link, erofs.ErrNotExist)
	}
	return nil
}

// flag says what the entries of one or more layers do to the layers below
// them at one path. Entries that upper layers hide set their flags all the
// same: extraction applies them before the upper layers hide them, so, for
// example, a file that an upper directory replaces still removes the lower
// layers' directory at its path and everything in it.
type flag uint8

const (
	// fWhiteout: a whiteout deletes the path and everything below it.
	fWhiteout flag = 1 << iota
	// fOpaque: an opaque marker hides everything strictly below the
	// directory.
	fOpaque
	// fNonDir: a non-directory replaces the path and everything below it.
	fNonDir
	// fDir: a directory, given or implied, replaces a lower non-directory
	// and merges with a lower directory.
	fDir
	// fExplicit: an entry hides a lower entry at the same path (for a
	// directory only its metadata; its children still merge).
	fExplicit
)

// pnode is the state of one path: what the layers above the one being
// read do there, what the one being read does, and whether the writer
// has a directory there.
type pnode struct {
	children map[string]*pnode
	above    flag // the union of the layers above the current one
	cur      flag // the current layer's, joined to above at its end
	inWriter bool // the writer has a directory here
}

func (p *pnode) child(name string) *pnode {
	if p.children == nil {
		p.children = map[string]*pnode{}
	}
	c := p.children[name]
	if c == nil {
		c = &pnode{}
		p.children[name] = c
	}
	return c
}

// wrote is what the current layer did in the writer at a directory.
type wrote uint8

const (
	wroteNothing wrote = iota
	wroteCreated       // the layer made the directory
	wroteMeta          // the layer set the metadata of a directory an upper layer made
)

// lnode is a path of the layer being read as extracting it alone, up to
// the current entry, would leave it: directories (given or implied) and
// non-directories naming an inode.
type lnode struct {
	p        *pnode
	path     string
	dir      bool
	children map[string]*lnode // directories
	wrote    wrote             // directories
	id       *inode            // non-directories
	visible  bool              // non-directories: the name is in the image
}

// inode is a file one or more names share. It is either a file of a layer
// (target == "") or a hard link's view of a lower layer's file not read
// yet (target != ""), which becomes the file once a lower layer yields it.
type inode struct {
	fwd *inode // merged into fwd: use find

	// A file of a layer: its metadata and where its data is in the stream.
	entry     erofs.Entry
	entryName string // the tar entry, for errors
	ordinal   int    // index of its header in the stream

	// A hard link to a file of the layers below: the target's path and, for
	// errors, the link.
	target string
	link   string

	// names are the paths the writer has for the inode; waiting are names
	// that must have it but are not written yet, because its data is still
	// to come. The value orders them: the data goes to the first.
	names   map[string]bool
	waiting map[string]uint64
}

func (id *inode) find() *inode {
	for id.fwd != nil {
		if id.fwd.fwd != nil {
			id.fwd = id.fwd.fwd
		}
		id = id.fwd
	}
	return id
}

// flattener is the state of one Flatten call.
type flattener struct {
	ctx  context.Context
	w    *erofs.Writer
	root *pnode
	// pending are hard links of the layers read so far whose targets are in
	// the layers below, by target path.
	pending map[string]*inode
	seq     uint64
	budget  *budget

	// The layer being read.
	layer      *FlattenLayer
	name       string
	prefix     []string
	froot      *lnode
	touched    []*pnode          // nodes with cur flags
	newPending map[string]*inode // its hard links to lower layers' files
	files      []*inode          // its files
	captured   map[string]*inode // pending link name → file of this layer written there
	ordinal    int
}

// readLayer reads layer i, given that the layers above it have been read.
func (f *flattener) readLayer(i int, l *FlattenLayer) error {
	f.layer = l
	f.name = l.Name
	if f.name == "" {
		f.name = fmt.Sprintf("layer %d", i+1)
	}
	f.prefix = nil
	if p := strings.TrimLeft(l.Prefix, "/"); p != "" {
		clean, err := cleanTarPath(p)
		if err != nil {
			return fmt.Errorf("%s: prefix %q: %w", f.name, l.Prefix, err)
		}
		if clean != "." {
			f.prefix = strings.Split(clean, "/")
		}
	}
	f.budget.layer, f.budget.depthBase = f.name, len(f.prefix)
	if l.StripComponents < 0 {
		return fmt.Errorf("%s: negative StripComponents %d", f.name, l.StripComponents)
	}
	f.froot = &lnode{p: f.root, path: ".", dir: true, children: map[string]*lnode{}}
	f.touched = f.touched[:0]
	f.newPending = map[string]*inode{}
	f.files = nil
	f.captured = map[string]*inode{}
	f.ordinal = 0

	if err := f.readStream(func(hdr *tar.Header, data io.Reader) error {
		ord := f.ordinal
		f.ordinal++
		return f.entry(hdr, data, ord)
	}); err != nil {
		return err
	}
	return f.endLayer()
}

// readStream opens the current layer and walks its tar stream with fn.
func (f *flattener) readStream(fn func(hdr *tar.Header, data io.Reader) error) error {
	if f.layer.Open == nil {
		return fmt.Errorf("%s: no Open function", f.name)
	}
	rc, err := f.layer.Open()
	if err != nil {
		return fmt.Errorf("%s: opening: %w", f.name, err)
	}
	end := tarLenient
	if f.layer.Tarball {
		end = tarStrict
	}
	err = walkTar(f.ctx, rc, end, f.budget, fn)
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("closing: %w", cerr)
	}
	if err != nil {
		var le *LimitError
		if ctxErr := f.ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) || errors.As(err, &le) {
			return err
		}
		return fmt.Errorf("%s: %w", f.name, err)
	}
	return nil
}

// mapName turns a tar name of the current layer into path components:
// stripped (ok is false when nothing is left) and re-rooted under the
// prefix. rel is the part below the prefix, where whiteouts are looked for.
func (f *flattener) mapName(raw string) (full, rel []string, ok bool, err error) {
	if _, err := cleanTarPath(raw); err != nil {
		return nil, nil, false, err
	}
	for c := range strings.SplitSeq(raw, "/") {
		if c != "" {
			rel = append(rel, c)
		}
	}
	if n := f.layer.StripComponents; n > 0 {
		if len(rel) <= n {
			return nil, nil, false, nil
		}
		rel = rel[n:]
	}
	kept := rel[:0]
	for _, c := range rel {
		if c != "." {
			kept = append(kept, c)
		}
	}
	rel = kept
	if len(rel) == 0 && f.layer.StripComponents > 0 {
		return nil, nil, false, nil
	}
	full = append(append(make([]string, 0, len(f.prefix)+len(rel)), f.prefix...), rel...)
	return full, rel, true, nil
}

func joinPath(parts []string) string {
	if len(parts) == 0 {
		return "."
	}
	return strings.Join(parts, "/")
}

// Whiteout names (OCI image spec, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	opaqueMarker   = ".wh..wh..opq"
)

// entry handles one tar entry of the current layer.
func (f *flattener) entry(hdr *tar.Header, data io.Reader, ord int) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	parts, rel, ok, err := f.mapName(hdr.Name)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if !ok {
		return nil
	}
	if f.layer.Whiteouts && len(rel) > 0 {
		if base := rel[len(rel)-1]; strings.HasPrefix(base, whiteoutPrefix) {
			if err := f.whiteout(parts, base); err != nil {
				return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
			}
			return nil
		}
		for _, c := range rel {
			if strings.HasPrefix(c, whiteoutMeta) {
				return nil // inside an AUFS metadata directory such as .wh..wh.plnk
			}
		}
	}
	if hdr.Typeflag == tar.TypeLink {
		return f.hardLink(parts, hdr)
	}
	e, err := tarEntryMeta(hdr)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if e.Mode.IsDir() {
		return f.dir(parts, e, hdr.Name)
	}
	return f.file(parts, e, hdr.Name, ord, data)
}

// mark records that the current layer does fl at p.
func (f *flattener) mark(p *pnode, fl flag) {
	if p.cur == 0 {
		f.touched = append(f.touched, p)
	}
	p.cur |= fl
}

// errSameLayerNonDir is an entry below a non-directory of its own layer,
// which tar extraction fails on too.
func errSameLayerNonDir(path string) error {
	return fmt.Errorf("%w: %q is a non-directory of the same layer", erofs.ErrNotDir, path)
}

// implyDirs makes parts[:n] directories of the current layer (those it does
// not have are implied by the entry being read) and creates in the writer
// those that the layers above leave visible and that it lacks. It returns
// the state of parts[:n] and whether the layers above hide what the
// current layer has below it.
func (f *flattener) implyDirs(parts []string, n int) (*pnode, *lnode, bool, error) {
	p, ln := f.root, f.froot
	hidden := p.above&fOpaque != 0
	for i, name := range parts[:n] {
		p = p.child(name)
		dirHidden := hidden || p.above&(fWhiteout|fNonDir) != 0
		c := ln.children[name]
		if c == nil {
			c = &lnode{p: p, path: joinPath(parts[:i+1]), dir: true, children: map[string]*lnode{}}
			ln.children[name] = c
			f.mark(p, fDir)
			if !dirHidden && !p.inWriter {
				if err := f.w.Add(implicitDir(c.path), nil); err != nil {
					return nil, nil, false, entryCause(err)
				}
				p.inWriter = true
				c.wrote = wroteCreated
			}
		} else if !c.dir {
			return nil, nil, false, errSameLayerNonDir(c.path)
		}
		hidden = dirHidden || p.above&fOpaque != 0
		ln = c
	}
	return p, ln, hidden, nil
}

// implicitDir is the entry of a directory no layer describes: what the
// writer gives the parents it creates itself.
func implicitDir(path string) erofs.Entry {
	return erofs.Entry{Path: path, Mode: fs.ModeDir | 0o755, ModTime: time.Unix(0, 0)}
}

// whiteout handles a whiteout or opaque marker named base at parts.
func (f *flattener) whiteout(parts []string, base string) error {
	n := len(parts) - 1
	switch {
	case base == opaqueMarker:
		dir, _, _, err := f.implyDirs(parts, n)
		if err != nil {
			return err
		}
		f.mark(dir, fOpaque)
		return nil
	case strings.HasPrefix(base, whiteoutMeta):
		return nil // AUFS internals, such as .wh..wh.plnk
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("%w: whiteout of %q", erofs.ErrInvalidPath, name)
	}
	dir, _, _, err := f.implyDirs(parts, n)
	if err != nil {
		return err
	}
	f.mark(dir.child(name), fWhiteout)
	return nil
}

// dir handles a directory entry.
func (f *flattener) dir(parts []string, e erofs.Entry, entryName string) error {
	if len(parts) == 0 {
		f.mark(f.root, fDir|fExplicit)
		if f.root.above&fExplicit == 0 {
			e.Path = "."
			if err := f.w.Add(e, nil); err != nil {
				return fmt.Errorf("tar entry %q: %w", entryName, entryCause(err))
			}
			f.froot.wrote = wroteMeta
		}
		return nil
	}
	parent, pl, hidden, err := f.implyDirs(parts, len(parts)-1)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", entryName, err)
	}
	name := parts[len(parts)-1]
	p := parent.child(name)
	f.mark(p, fDir|fExplicit)
	c := pl.children[name]
	if c != nil && !c.dir {
		if err := f.remove(c); err != nil {
			return fmt.Errorf("tar entry %q: %w", entryName, err)
		}
		c = nil
	}
	if c == nil {
		c = &lnode{p: p, path: joinPath(parts), dir: true, children: map[string]*lnode{}}
		pl.children[name] = c
	}
	if hidden || p.above&(fWhiteout|fExplicit) != 0 {
		return nil
	}
	e.Path = c.path
	if err := f.w.Add(e, nil); err != nil {
		return fmt.Errorf("tar entry %q: %w", entryName, entryCause(err))
	}
	switch {
	case !p.inWriter:
		p.inWriter = true
		c.wrote = wroteCreated
	case c.wrote == wroteNothing:
		c.wrote = wroteMeta
	}
	return nil
}

// place puts a non-directory of the current layer at parts, replacing
// what the layer had there, and reports whether the layers above leave
// it visible.
func (f *flattener) place(parts []string, id *inode) (*lnode, bool, error) {
	if len(parts) == 0 {
		return nil, false, fmt.Errorf("%w: the root must be a directory", erofs.ErrTypeConflict)
	}
	parent, pl, hidden, err := f.implyDirs(parts, len(parts)-1)
	if err != nil {
		return nil, false, err
	}
	name := parts[len(parts)-1]
	p := parent.child(name)
	f.mark(p, fNonDir|fExplicit)
	if c := pl.children[name]; c != nil {
		if err := f.remove(c); err != nil {
			return nil, false, err
		}
	}
	c := &lnode{p: p, path: joinPath(parts), id: id}
	pl.children[name] = c
	c.visible = !hidden && p.above&(fWhiteout|fExplicit|fDir) == 0
	return c, c.visible, nil
}

// file handles a regular file, symbolic link, device or fifo.
func (f *flattener) file(parts []string, e erofs.Entry, entryName string, ord int, data io.Reader) error {
	id := &inode{entry: e, entryName: entryName, ordinal: ord, names: map[string]bool{}, waiting: map[string]uint64{}}
	f.files = append(f.files, id)
	c, visible, err := f.place(parts, id)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", entryName, err)
	}
	at := c.path
	if !visible {
		// A file hidden by an upper layer is still written when an upper
		// hard link waits for it: the link keeps its data.
		g := f.pending[c.path]
		if g == nil || len(g.waiting) == 0 || !e.Mode.IsRegular() {
			return nil // other types need no data: see flush
		}
		at = firstWaiting(g)
		if old := f.captured[at]; old != nil {
			delete(old.names, at)
		}
		f.captured[at] = id
	}
	e.Path = at
	if err := addTarData(f.ctx, f.w, e, data, entryName); err != nil {
		return err
	}
	id.names[at] = true
	return nil
}

// hardLink handles a hard link entry.
func (f *flattener) hardLink(parts []string, hdr *tar.Header) error {
	fail := func(err error) error {
		return fmt.Errorf("tar entry %q: hard link to %q: %w", hdr.Name, hdr.Linkname, err)
	}
	if len(parts) == 0 {
		return fmt.Errorf("tar entry %q: %w: the root must be a directory", hdr.Name, erofs.ErrTypeConflict)
	}
	if hdr.Linkname == "" {
		return fail(fmt.Errorf("%w: empty target", erofs.ErrInvalidPath))
	}
	tparts, _, ok, err := f.mapName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("tar entry %q: hard link target %q: %w", hdr.Name, hdr.Linkname, err)
	}
	if !ok {
		return fail(fmt.Errorf("%w: no name left after stripping %d components", erofs.ErrInvalidPath, f.layer.StripComponents))
	}
	if related(parts, tparts) {
		// Extraction removes what is at the link's path before linking, so
		// the target would be gone or be a directory.
		return fail(errors.New("the link's own path, or a path above or below it"))
	}
	id, err := f.linkTarget(tparts, hdr)
	if err != nil {
		return fail(err)
	}
	c, visible, err := f.place(parts, id)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if !visible {
		return nil
	}
	id.waiting[c.path] = f.next()
	if err := f.flush(id); err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	return nil
}

// related reports whether a and b are the same path or one is below the
// other.
func related(a, b []string) bool {
	n := min(len(a), len(b))
	for i := range n {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func (f *flattener) next() uint64 {
	f.seq++
	return f.seq
}

// linkTarget finds the inode a hard link of the current layer names: the
// target as the layer's entries so far leave it, or else as the layers
// below leave it.
func (f *flattener) linkTarget(tparts []string, hdr *tar.Header) (*inode, error) {
	ln := f.froot
	for i, name := range tparts {
		c := ln.children[name]
		if c == nil {
			break
		}
		if i == len(tparts)-1 {
			if c.dir {
				return nil, errors.New("target is a directory")
			}
			return c.id.find(), nil
		}
		if !c.dir {
			return nil, fmt.Errorf("%w: %q is not a directory", erofs.ErrNotExist, c.path)
		}
		ln = c
	}
	// Not in this layer (yet): the target is a lower layer's, unless an
	// earlier non-directory of this layer replaced it or a directory above
	// it.
	p := f.root
	for _, name := range tparts {
		if p = p.children[name]; p == nil {
			break
		}
		if p.cur&fNonDir != 0 {
			return nil, erofs.ErrNotExist
		}
	}
	target := joinPath(tparts)
	id := f.newPending[target]
	if id == nil {
		id = &inode{
			target:  target,
			link:    fmt.Sprintf("%s: tar entry %q: hard link to %q", f.name, hdr.Name, hdr.Linkname),
			names:   map[string]bool{},
			waiting: map[string]uint64{},
		}
		f.newPending[target] = id
	}
	return id, nil
}

// firstWaiting returns the name where id's data goes.
func firstWaiting(id *inode) string {
	var first string
	var min uint64
	for n, s := range id.waiting {
		if first == "" || s < min {
			first, min = n, s
		}
	}
	return first
}

// flush writes the waiting names of id if its data is at hand: as hard
// links to a name the writer has, or else, for inodes that carry no data
// in the stream (anything but non-empty regular files), by adding the
// first one from the metadata. Other inodes wait for the second read of
// their layer (see reread).
func (f *flattener) flush(id *inode) error {
	id = id.find()
	if len(id.waiting) == 0 || id.target != "" {
		return nil
	}
	names := make([]string, 0, len(id.waiting))
	for n := range id.waiting {
		names = append(names, n)
	}
	sortBy(names, func(n string) uint64 { return id.waiting[n] })
	var holder string
	for n := range id.names {
		holder = n
		break
	}
	if holder == "" {
		if id.entry.Mode.IsRegular() && id.entry.Size > 0 {
			return nil
		}
		e := id.entry
		e.Path = names[0]
		if err := f.w.Add(e, nil); err != nil {
			return fmt.Errorf("tar entry %q: %w", id.entryName, entryCause(err))
		}
		holder = names[0]
		id.names[holder] = true
		names = names[1:]
	}
	for _, n := range names {
		if err := f.w.Link(n, holder); err != nil {
			return fmt.Errorf("hard link %q to %q: %w", n, holder, entryCause(err))
		}
		id.names[n] = true
	}
	clear(id.waiting)
	return nil
}

// remove undoes what the current layer did at c, which a later entry of
// the layer replaces: tar extraction removes the old path and everything
// below it first (unless both are directories).
func (f *flattener) remove(c *lnode) error {
	if !c.dir {
		if !c.visible {
			return nil
		}
		id := c.id.find()
		delete(id.waiting, c.path)
		if id.names[c.path] {
			delete(id.names, c.path)
			if err := f.w.Remove(c.path); err != nil {
				return err
			}
		}
		return nil
	}
	for _, ch := range c.children {
		if err := f.remove(ch); err != nil {
			return err
		}
	}
	clear(c.children)
	switch c.wrote {
	case wroteCreated:
		// Nothing of the upper layers is below it, or it would not have
		// been this layer's to create.
		if err := f.w.Remove(c.path); err != nil {
			return err
		}
		c.p.inWriter = false
	case wroteMeta:
		// An upper layer implies the directory, and what this layer had
		// there is gone: no lower layer can describe it any more, as the
		// replacing entry hides them all.
		if err := f.w.Add(implicitDir(c.path), nil); err != nil {
			return entryCause(err)
		}
	}
	c.wrote = wroteNothing
	return nil
}

// lookupLayer returns the current layer's entry at tparts, or nil.
func (f *flattener) lookupLayer(tparts []string) *lnode {
	ln := f.froot
	for _, name := range tparts {
		if ln = ln.children[name]; ln == nil {
			return nil
		}
	}
	return ln
}

// removedHere reports whether the current layer removes the lower layers'
// entry at tparts: by a whiteout or opaque marker and, when entries too,
// by a non-directory at the path or above it.
func (f *flattener) removedHere(tparts []string, entries bool) bool {
	p := f.root
	if p.cur&fOpaque != 0 {
		return true
	}
	for i, name := range tparts {
		if p = p.children[name]; p == nil {
			return false
		}
		if p.cur&fWhiteout != 0 || entries && p.cur&fNonDir != 0 ||
			i < len(tparts)-1 && p.cur&fOpaque != 0 {
			return true
		}
	}
	return false
}

// endLayer settles the hard links that wait for the current layer and
// joins its state to that of the layers above.
func (f *flattener) endLayer() error {
	// Hard links of the upper layers to a path this layer has, or removes.
	for _, target := range slices.Sorted(maps.Keys(f.pending)) {
		g := f.pending[target]
		tparts := strings.Split(target, "/")
		c := f.lookupLayer(tparts)
		switch {
		case c != nil && c.dir:
			return fmt.Errorf("%s: target is a directory in %s", g.link, f.name)
		case c != nil:
			delete(f.pending, target)
			if err := f.bind(g, c.id.find()); err != nil {
				return err
			}
		case f.removedHere(tparts, true):
			return fmt.Errorf("%s: %w (removed by %s)", g.link, erofs.ErrNotExist, f.name)
		}
	}
	// This layer's hard links to the layers below.
	for _, target := range slices.Sorted(maps.Keys(f.newPending)) {
		id := f.newPending[target]
		if f.removedHere(strings.Split(target, "/"), false) {
			return fmt.Errorf("%s: %w (its own layer deletes it)", id.link, erofs.ErrNotExist)
		}
		if g := f.pending[target]; g != nil {
			// Upper layers wait for the same file: one inode.
			f.merge(id, g)
		} else {
			f.pending[target] = id
		}
	}
	var reread []*inode
	for _, id := range f.files {
		if id.fwd == nil && len(id.waiting) > 0 && len(id.names) == 0 {
			reread = append(reread, id)
		}
	}
	if len(reread) > 0 {
		if err := f.reread(reread); err != nil {
			return err
		}
	}
	for _, p := range f.touched {
		p.above |= p.cur
		p.cur = 0
	}
	f.froot = nil
	return nil
}

// bind makes the upper layers' hard links g, waiting for a file of this
// layer, names of id.
func (f *flattener) bind(g, id *inode) error {
	for n := range g.waiting {
		old := f.captured[n]
		if old == nil {
			continue
		}
		if old == id {
			delete(g.waiting, n) // already written there
		} else {
			delete(old.names, n) // the file written there was replaced
		}
	}
	f.merge(g, id)
	return f.flush(id)
}

// merge makes from a name for to.
func (f *flattener) merge(from, to *inode) {
	for n, s := range from.waiting {
		to.waiting[n] = s
	}
	for n := range from.names {
		to.names[n] = true
	}
	from.fwd = to
	from.waiting, from.names = nil, nil
}

// reread reads the current layer a second time for the data of files that
// were hidden, and skipped, when it was first read, and that hard links
// turned out to need.
func (f *flattener) reread(ids []*inode) error {
	sortBy(ids, func(id *inode) uint64 { return uint64(id.ordinal) })
	ord, i := 0, 0
	// The layer was counted when it was first read.
	f.budget.paused = true
	defer func() { f.budget.paused = false }()
	err := f.readStream(func(hdr *tar.Header, data io.Reader) error {
		defer func() { ord++ }()
		if i == len(ids) || ord != ids[i].ordinal {
			return nil
		}
		id := ids[i]
		i++
		if hdr.Name != id.entryName || hdr.Size != id.entry.Size {
			return fmt.Errorf("tar entry %q: the stream changed between two reads", hdr.Name)
		}
		e := id.entry
		e.Path = firstWaiting(id)
		if err := addTarData(f.ctx, f.w, e, data, hdr.Name); err != nil {
			return err
		}
		id.names[e.Path] = true
		delete(id.waiting, e.Path)
		if err := f.flush(id); err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		return nil
	})
	if err == nil && i < len(ids) {
		err = fmt.Errorf("%s: tar entry %q: missing when the layer was read again", f.name, ids[i].entryName)
	}
	return err
}

// sortBy sorts s by key.
func sortBy[T any](s []T, key func(T) uint64) {
	slices.SortFunc(s, func(a, b T) int { return cmp.Compare(key(a), key(b)) })
}

package erofs

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sync"
)

// ByteRange is a range of an image's bytes: Len bytes from Off.
type ByteRange struct {
	Off, Len int64
}

// MetadataRanges returns, sorted and merged, the byte ranges of the EROFS
// image (the first size bytes of r) that hold its metadata: the superblock,
// every inode reachable from the root with its xattrs (inline and shared)
// and inline data, directory blocks, symlink targets, long xattr prefixes,
// chunk arrays and compression indexes. That is what a mount and a walk
// of every name with its stat, xattrs and link target read, plus the maps
// from a file's bytes to the image's: file data aside, what a program's
// first lookups and opens touch. Ranges are whole blocks, as the kernel
// reads them.
//
// It reads only metadata, and each inode once, so its cost is bounded by
// the image's metadata, not its size. An image the reader cannot walk (a
// corrupt one, or unsupported features) is an error.
func MetadataRanges(r io.ReaderAt, size int64) ([]ByteRange, error) {
	rec := &recordingReader{r: r}
	f, err := OpenSize(rec, size)
	if err != nil {
		return nil, err
	}
	// The kernel reads block 0 (at least its first 4 KiB) for the
	// superblock and whatever follows it (the compression configs).
	rec.add(0, min(max(f.bs, 4096), size))
	w := metaWalk{f: f, rec: rec, seen: map[uint64]bool{f.root.nid: true}}
	// A work list rather than recursion: a hostile image's directories
	// may nest as deep as it has inodes.
	todo := []*fsInode{f.root}
	for len(todo) > 0 {
		in := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if todo, err = w.inode(in, todo); err != nil {
			return nil, err
		}
	}
	return rec.ranges(f.bs, size), nil
}

// metaWalk visits every inode once.
type metaWalk struct {
	f    *FS
	rec  *recordingReader
	seen map[uint64]bool
}

// inode records in's metadata and appends the children of a directory
// not seen before to todo.
func (w *metaWalk) inode(in *fsInode, todo []*fsInode) ([]*fsInode, error) {
	f := w.f
	// The inode and its inline xattr area are read by loadInode and
	// inodeXattrs; what follows them depends on the layout.
	w.rec.add(in.pos, int64(in.isize+in.xsize))
	if _, err := f.inodeXattrs(in); err != nil {
		return nil, withContext(err, "inode %d", in.nid)
	}
	if in.isSymlink() {
		if _, err := f.readLink(in); err != nil {
			return nil, withContext(err, "inode %d", in.nid)
		}
	}
	if contentSize(in) > 0 {
		if err := w.maps(in); err != nil {
			return nil, withContext(err, "inode %d", in.nid)
		}
	}
	if !in.isDir() {
		return todo, nil
	}
	d, err := f.newDirReader(in)
	if err != nil {
		return nil, err
	}
	for i := range d.nblocks {
		ents, err := d.block(i)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if string(e.name) == "." || string(e.name) == ".." || w.seen[e.nid] {
				continue
			}
			w.seen[e.nid] = true
			child, err := f.inode(e.nid)
			if err != nil {
				return nil, withContext(err, "directory inode %d: entry %q", in.nid, e.name)
			}
			todo = append(todo, child)
		}
	}
	return todo, nil
}

// maps records what maps in's bytes to the image: its inline tail, chunk
// array or compression indexes (with an inline pcluster), all stored with
// the inode.
func (w *metaWalk) maps(in *fsInode) error {
	m, err := w.f.mapper(in)
	if err != nil {
		return err
	}
	switch m := m.(type) {
	case *flatMapper:
		if m.tailLen > 0 {
			w.rec.add(m.tailPhys, m.tailLen)
		}
	case *chunkMapper:
		n := m.size >> m.chunkBits
		if m.size&(1<<m.chunkBits-1) != 0 {
			n++
		}
		w.rec.add(in.dataOff(), m.start+n*m.unit-in.dataOff())
	case *zmapper:
		end := m.ibase
		if m.total > 0 {
			r, err := m.load(m.total - 1)
			if err != nil {
				return err
			}
			end = max(end, r.next)
		}
		if m.inline {
			end = max(end, m.idataOff+m.idataLen)
		}
		w.rec.add(in.dataOff(), end-in.dataOff())
	default:
		return fmt.Errorf("unexpected data mapper %T", m)
	}
	return nil
}

// recordingReader notes the ranges read through it.
type recordingReader struct {
	r  io.ReaderAt
	mu sync.Mutex
	rs []ByteRange
}

func (r *recordingReader) ReadAt(p []byte, off int64) (int, error) {
	r.add(off, int64(len(p)))
	return r.r.ReadAt(p, off)
}

func (r *recordingReader) add(off, n int64) {
	if n <= 0 {
		return
	}
	r.mu.Lock()
	r.rs = append(r.rs, ByteRange{off, n})
	r.mu.Unlock()
}

// ranges returns what was read, widened to whole blocks of bs, inside
// size, sorted and merged.
func (r *recordingReader) ranges(bs, size int64) []ByteRange {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []ByteRange
	for _, x := range r.rs {
		lo := x.Off / bs * bs
		hi := min(align(x.Off+x.Len, bs), size)
		if lo < hi {
			out = append(out, ByteRange{lo, hi - lo})
		}
	}
	return mergeRanges(out)
}

// mergeRanges sorts rs and merges those that overlap or touch.
func mergeRanges(rs []ByteRange) []ByteRange {
	slices.SortFunc(rs, func(a, b ByteRange) int { return cmp.Compare(a.Off, b.Off) })
	var out []ByteRange
	for _, x := range rs {
		if n := len(out); n > 0 && x.Off <= out[n-1].Off+out[n-1].Len {
			last := &out[n-1]
			last.Len = max(last.Len, x.Off+x.Len-last.Off)
			continue
		}
		out = append(out, x)
	}
	return out
}

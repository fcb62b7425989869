package erofs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
)

// rawDirent is one decoded erofs_dirent; name points into its block.
type rawDirent struct {
	nid   uint64
	ftype uint8
	name  []byte
}

// dirReader reads the blocks of one directory.
type dirReader struct {
	f       *FS
	in      *fsInode
	m       dataMapper
	nblocks int64
	buf     []byte
	ents    []rawDirent
}

func (f *FS) newDirReader(in *fsInode) (*dirReader, error) {
	// Directory data is never shared or sparse in a sane image, so a
	// directory larger than the image is corrupt; this also bounds the
	// work of listing one.
	if in.size > f.size {
		return nil, corruptf("directory inode %d: size %d larger than the image", in.nid, in.size)
	}
	m, err := f.mapper(in)
	if err != nil {
		return nil, err
	}
	return &dirReader{
		f:       f,
		in:      in,
		m:       m,
		nblocks: (in.size + f.bs - 1) >> f.blkBits,
		buf:     make([]byte, f.bs),
	}, nil
}

// block decodes directory block i: dirents of 12 bytes, as many as the
// first one's nameoff says, then the names. A name ends where the next
// one starts; the last one at the end of the block's data or at a NUL.
// The result is valid until the next call.
func (d *dirReader) block(i int64) ([]rawDirent, error) {
	off := i << d.f.blkBits
	maxsize := min(d.f.bs, d.in.size-off)
	b := d.buf[:maxsize]
	if n, err := d.f.readData(d.in, d.m, d.in.size, b, off); n != len(b) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, withContext(err, "directory inode %d block %d", d.in.nid, i)
	}
	bad := func(format string, args ...any) error {
		return corruptf("directory inode %d block %d: %s", d.in.nid, i, fmt.Sprintf(format, args...))
	}
	if len(b) < dirEntrySize {
		return nil, bad("%d bytes, too short for a dirent", len(b))
	}
	first := int(binary.LittleEndian.Uint16(b[8:]))
	if first < dirEntrySize || first >= len(b) || first%dirEntrySize != 0 {
		return nil, bad("bad first name offset %d", first)
	}
	count := first / dirEntrySize
	ents := slices.Grow(d.ents[:0], count)[:count]
	d.ents = ents
	for j := range ents {
		e := b[j*dirEntrySize:]
		start := int(binary.LittleEndian.Uint16(e[8:]))
		end := len(b)
		if j+1 < count {
			end = int(binary.LittleEndian.Uint16(e[dirEntrySize+8:]))
		} else if k := bytes.IndexByte(b[min(start, len(b)):], 0); k >= 0 {
			end = start + k
		}
		if start < first || end > len(b) || end <= start {
			return nil, bad("dirent %d: bad name offsets %d..%d", j, start, end)
		}
		name := b[start:end]
		if len(name) > MaxNameLen {
			return nil, bad("dirent %d: name of %d bytes too long", j, len(name))
		}
		if bytes.IndexByte(name, '/') >= 0 || bytes.IndexByte(name, 0) >= 0 {
			return nil, bad("dirent %d: name %q contains '/' or NUL", j, name)
		}
		ents[j] = rawDirent{
			nid:   binary.LittleEndian.Uint64(e[0:]),
			ftype: e[10],
			name:  name,
		}
	}
	return ents, nil
}

// lookup finds name in directory dir. Like Linux it relies on the dirents
// being sorted by name across all blocks: a binary search over the blocks'
// first names picks the one block that can hold name.
func (f *FS) lookup(dir *fsInode, name string) (*fsInode, error) {
	d, err := f.newDirReader(dir)
	if err != nil {
		return nil, err
	}
	target := []byte(name)
	// Find the first block whose first name sorts after name.
	lo, hi := int64(0), d.nblocks
	for lo < hi {
		mid := lo + (hi-lo)/2
		ents, err := d.block(mid)
		if err != nil {
			return nil, err
		}
		c := bytes.Compare(ents[0].name, target)
		if c == 0 {
			return f.inode(ents[0].nid)
		}
		if c < 0 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == 0 {
		return nil, fs.ErrNotExist
	}
	ents, err := d.block(lo - 1)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if bytes.Equal(e.name, target) {
			return f.inode(e.nid)
		}
	}
	return nil, fs.ErrNotExist
}

// readDir lists a directory, without "." and "..", sorted by name.
func (f *FS) readDir(dir *fsInode) ([]fs.DirEntry, error) {
	d, err := f.newDirReader(dir)
	if err != nil {
		return nil, err
	}
	var out []fs.DirEntry
	for i := range d.nblocks {
		ents, err := d.block(i)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			name := string(e.name)
			if name == "." || name == ".." {
				continue
			}
			de := &fsDirEntry{f: f, name: name, nid: e.nid}
			if typ, ok := direntType(e.ftype); ok {
				de.typ = typ
			} else {
				// Unknown type in the dirent: ask the inode.
				in, err := f.inode(e.nid)
				if err != nil {
					return nil, withContext(err, "directory inode %d: entry %q", dir.nid, name)
				}
				de.typ = fileMode(in.di.Mode).Type()
			}
			out = append(out, de)
		}
	}
	slices.SortFunc(out, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return out, nil
}

// direntType maps a dirent file_type to a file mode type.
func direntType(ft uint8) (fs.FileMode, bool) {
	switch ft {
	case ftRegular:
		return 0, true
	case ftDir:
		return fs.ModeDir, true
	case ftChrdev:
		return fs.ModeDevice | fs.ModeCharDevice, true
	case ftBlkdev:
		return fs.ModeDevice, true
	case ftFIFO:
		return fs.ModeNamedPipe, true
	case ftSocket:
		return fs.ModeSocket, true
	case ftSymlink:
		return fs.ModeSymlink, true
	}
	return 0, false
}

// fsDirEntry is an fs.DirEntry; its inode is read when Info asks.
type fsDirEntry struct {
	f    *FS
	name string
	nid  uint64
	typ  fs.FileMode
}

// Name is the entry's name in its directory.
func (e *fsDirEntry) Name() string { return e.name }

// IsDir reports whether the entry is a directory.
func (e *fsDirEntry) IsDir() bool { return e.typ.IsDir() }

// Type is the file type the directory entry records.
func (e *fsDirEntry) Type() fs.FileMode { return e.typ }

// String formats the entry like fs.FormatDirEntry.
func (e *fsDirEntry) String() string { return fs.FormatDirEntry(e) }

// Info reads the entry's inode (Lstat semantics: symlinks not followed).
func (e *fsDirEntry) Info() (fs.FileInfo, error) {
	in, err := e.f.inode(e.nid)
	if err != nil {
		return nil, err
	}
	fi, err := e.f.fileInfo(e.name, in)
	if err != nil {
		return nil, err
	}
	return fi, nil
}

// fsDir is an open directory.
type fsDir struct {
	f      *FS
	in     *fsInode
	name   string
	info   *fsFileInfo
	ents   []fs.DirEntry
	loaded bool
	pos    int
	closed bool
}

// Stat describes the directory.
func (d *fsDir) Stat() (fs.FileInfo, error) {
	if d.closed {
		return nil, &fs.PathError{Op: "stat", Path: d.name, Err: fs.ErrClosed}
	}
	return d.info, nil
}

// Read fails: directories have no byte content.
func (d *fsDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: d.name, Err: errIsDir}
}

// Close marks the directory closed.
func (d *fsDir) Close() error {
	if d.closed {
		return &fs.PathError{Op: "close", Path: d.name, Err: fs.ErrClosed}
	}
	d.closed = true
	return nil
}

// ReadDir returns the next n entries, sorted by name, as
// fs.ReadDirFile.ReadDir specifies.
func (d *fsDir) ReadDir(n int) ([]fs.DirEntry, error) {
	if d.closed {
		return nil, &fs.PathError{Op: "readdir", Path: d.name, Err: fs.ErrClosed}
	}
	if !d.loaded {
		ents, err := d.f.readDir(d.in)
		if err != nil {
			return nil, &fs.PathError{Op: "readdir", Path: d.name, Err: err}
		}
		d.ents, d.loaded = ents, true
	}
	rest := d.ents[d.pos:]
	if n <= 0 {
		d.pos = len(d.ents)
		return slices.Clone(rest), nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	rest = rest[:min(n, len(rest))]
	d.pos += len(rest)
	return slices.Clone(rest), nil
}

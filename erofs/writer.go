package erofs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// WriterOptions tune the image a Writer produces.
type WriterOptions struct {
	// BlockSize is the file system block size: 4096 (the default) or 512,
	// 1024, 2048. Linux before 6.4 mounts only images whose block size is
	// the page size.
	BlockSize int
	// ModTime, when set, replaces every inode's modification time, for
	// reproducible images (pe's --mtime).
	ModTime *time.Time
	// ClampModTime, when set, lowers modification times later than it to it
	// (SOURCE_DATE_EPOCH semantics).
	ClampModTime *time.Time
	// TempDir holds the spool file for file tails of very large trees; ""
	// means os.TempDir().
	TempDir string

	// Compression compresses regular files: CompressionNone (""),
	// CompressionLZ4 ("lz4") or CompressionLZ4HC ("lz4hc"). It needs a
	// 4096-byte block size. Files that compression does not make smaller
	// stay uncompressed. Linux 6.1 reads every layout this writes. Files
	// are compressed on up to 4 cores; the image is the same bytes however
	// the work is scheduled.
	Compression string
	// CompressionLevel is the lz4hc level, 1 (fastest) to 12 (smallest);
	// 0 means DefaultLZ4HCLevel (9), mkfs.erofs's default. lz4 takes none.
	CompressionLevel int
	// PclusterSize is the largest physical cluster, the unit of
	// compressed data, in bytes: a multiple of the block size up to 1 MiB;
	// 0 means one block. Larger pclusters compress better but make small
	// random reads decompress more.
	PclusterSize int
	// MetadataAtEnd keeps the metadata after the file data even when the
	// output is a file, where Close otherwise moves the data up to
	// put the metadata first (see Close). It saves that move: a copy of
	// the data, or for big images a FALLOC_FL_INSERT_RANGE, which waits
	// for the data's writeback.
	MetadataAtEnd bool
	// CompressIndex is the layout of compressed files' indexes: IndexCompact
	// ("compact", the default: 2 bytes per 4 KiB logical cluster) or
	// IndexFull ("full": 8 bytes each).
	CompressIndex string
}

// tailMemLimit is how many bytes of file tails stay in memory before the
// writer spools them to a temporary file.
const tailMemLimit = 32 << 20

// Writer builds an EROFS image. File data is written to the output as it
// is added, from the first block after the superblock on; directories,
// inodes and shared extended attributes are laid out at Close, before the
// data for a file output (which Close moves up) and after it otherwise. A
// Writer is not safe for concurrent use.
type Writer struct {
	out     io.WriteSeeker
	buf     *bufio.Writer
	opts    WriterOptions
	bs      int64
	blkBits uint8
	// nextBlk is the first free block of the data area.
	nextBlk uint64
	root    *node
	tails   *tailStore
	copyBuf []byte
	// err is sticky: after a write to the output failed, the image is
	// unusable.
	err    error
	closed bool
	// inodes counts inodes created, to give each a stable creation order.
	inodes uint64
	// zcfg and z are set when regular files are compressed.
	zcfg  *compressConfig
	z     *zwriter
	zpipe *zpipe
}

// node is one name in the tree. Hard links are several nodes sharing an
// inode.
type node struct {
	name     string
	ino      *inode
	children map[string]*node // directories only
}

// inode is the metadata of one file system object, plus where its data went.
type inode struct {
	order     uint64 // creation order, for deterministic layout
	mode      uint16
	uid, gid  uint32
	mtime     int64
	mtimeNsec uint32
	size      uint64
	rdev      uint32
	xattrs    []xattr

	// Data placement decided at Add: nblocks blocks from blkaddr hold the
	// data; a tail of tailLen bytes stays inline after the inode, found in
	// the tail store at tailOff (or in target for symlinks).
	blkaddr uint64
	nblocks uint64
	tailLen int
	tailOff int64
	target  string // symlink target when inline
	link    string // a symlink's whole target, until Close places it
	// z is set for a compressed file: its extents. nblocks then counts
	// the blocks of all its pclusters.
	z *zinfo

	// Set while laying out the metadata at Close.
	nlink    uint32
	nid      uint64
	ino32    uint32
	extended bool
	shared   []uint32 // shared xattr ids
	inline   []xattr  // xattrs kept inline
	xsize    int      // inline xattr area size
	dirTail  []byte   // a directory's inline tail, built at Close
	isInline bool
}

func (i *inode) isDir() bool { return i.mode&sIFMT == sIFDIR }

// NewWriter returns a Writer that writes an image to out, which must be
// positioned at its start and empty.
func NewWriter(out io.WriteSeeker, opts WriterOptions) (*Writer, error) {
	bs := opts.BlockSize
	if bs == 0 {
		bs = 4096
	}
	var bits uint8
	switch bs {
	case 512:
		bits = 9
	case 1024:
		bits = 10
	case 2048:
		bits = 11
	case 4096:
		bits = 12
	default:
		return nil, fmt.Errorf("erofs: block size %d not supported (use 512, 1024, 2048 or 4096)", bs)
	}
	zcfg, err := parseCompression(opts, bs)
	if err != nil {
		return nil, err
	}
	w := &Writer{
		zcfg:    zcfg,
		out:     out,
		buf:     bufio.NewWriterSize(out, 1<<20),
		opts:    opts,
		bs:      int64(bs),
		blkBits: bits,
		tails:   newTailStore(opts.TempDir, tailMemLimit),
		copyBuf: make([]byte, 1<<20),
	}
	if zcfg != nil {
		w.z = newZwriter(zcfg, bs, true)
		w.zpipe = newZpipe(zcfg, bs)
	}
	// The superblock sits at byte 1024; data starts at the first block
	// after it. Reserve that space now, the superblock is written last.
	w.nextBlk = headBlocks(w.bs)
	if _, err := w.buf.Write(make([]byte, int64(w.nextBlk)*w.bs)); err != nil {
		return nil, fmt.Errorf("erofs: writing header: %w", err)
	}
	w.root = &node{children: map[string]*node{}}
	w.root.ino = w.newInode(sIFDIR|0o755, 0, 0, w.defaultTime())
	return w, nil
}

func (w *Writer) defaultTime() time.Time {
	if w.opts.ModTime != nil {
		return *w.opts.ModTime
	}
	return time.Unix(0, 0)
}

func (w *Writer) newInode(mode uint16, uid, gid uint32, mtime time.Time) *inode {
	if w.opts.ModTime != nil {
		mtime = *w.opts.ModTime
	} else if c := w.opts.ClampModTime; c != nil && mtime.After(*c) {
		mtime = *c
	}
	w.inodes++
	return &inode{
		order:     w.inodes,
		mode:      mode,
		uid:       uid,
		gid:       gid,
		mtime:     mtime.Unix(),
		mtimeNsec: uint32(mtime.Nanosecond()),
	}
}

// splitPath turns an entry path into its components. "." and empty
// components are dropped; ".." is refused rather than resolved, because an
// archive that uses it is either malicious or broken.
func splitPath(p string) ([]string, error) {
	var parts []string
	for _, c := range strings.Split(p, "/") {
		switch {
		case c == "" || c == ".":
			continue
		case c == "..":
			return nil, fmt.Errorf("%w: contains \"..\"", ErrInvalidPath)
		case len(c) > MaxNameLen:
			return nil, fmt.Errorf("%w: name of %d bytes exceeds %d", ErrInvalidPath, len(c), MaxNameLen)
		case strings.IndexByte(c, 0) >= 0:
			return nil, fmt.Errorf("%w: contains a NUL byte", ErrInvalidPath)
		}
		parts = append(parts, c)
	}
	return parts, nil
}

// parentOf finds (creating implicitly where missing) the directory holding
// the last component of parts.
func (w *Writer) parentOf(parts []string) (*node, error) {
	dir := w.root
	for i, c := range parts[:len(parts)-1] {
		child, ok := dir.children[c]
		if !ok {
			child = &node{name: c, children: map[string]*node{}}
			child.ino = w.newInode(sIFDIR|0o755, 0, 0, w.defaultTime())
			dir.children[c] = child
		} else if !child.ino.isDir() {
			return nil, fmt.Errorf("%w: %q is not a directory", ErrNotDir, strings.Join(parts[:i+1], "/"))
		}
		dir = child
	}
	return dir, nil
}

// Add adds one entry. Regular files read exactly e.Size bytes from data;
// other types ignore data. Parents missing so far are created as 0755
// directories owned by root and take their metadata from a later Add.
// Adding a directory that exists updates its metadata and keeps its
// children; adding a non-directory where one exists replaces it.
func (w *Writer) Add(e Entry, data io.Reader) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("erofs: Add after Close")
	}
	if err := w.add(e, data); err != nil {
		var ee *EntryError
		if errors.As(err, &ee) || w.err != nil {
			return err
		}
		return &EntryError{Path: e.Path, Err: err}
	}
	return nil
}

func (w *Writer) add(e Entry, data io.Reader) error {
	parts, err := splitPath(e.Path)
	if err != nil {
		return err
	}
	xs, err := parseXattrs(e.Xattrs)
	if err != nil {
		return err
	}
	mode := unixMode(e.Mode)
	if len(parts) == 0 {
		if !e.Mode.IsDir() {
			return fmt.Errorf("%w: the root must be a directory", ErrTypeConflict)
		}
		w.setDirMeta(w.root.ino, mode, e, xs)
		return nil
	}
	dir, err := w.parentOf(parts)
	if err != nil {
		return err
	}
	name := parts[len(parts)-1]
	old := dir.children[name]
	if e.Mode.IsDir() {
		if old != nil {
			if !old.ino.isDir() {
				return fmt.Errorf("%w: a directory replaces a non-directory", ErrTypeConflict)
			}
			w.setDirMeta(old.ino, mode, e, xs)
			return nil
		}
		n := &node{name: name, children: map[string]*node{}}
		n.ino = w.newInode(mode, e.UID, e.GID, e.ModTime)
		n.ino.xattrs = xs
		dir.children[name] = n
		return nil
	}
	if old != nil && old.ino.isDir() {
		return fmt.Errorf("%w: a non-directory replaces a directory", ErrTypeConflict)
	}
	ino := w.newInode(mode, e.UID, e.GID, e.ModTime)
	ino.xattrs = xs
	switch mode & sIFMT {
	case sIFREG:
		if e.Size < 0 {
			return fmt.Errorf("negative size %d", e.Size)
		}
		if data == nil {
			data = strings.NewReader("")
		}
		if err := w.writeData(ino, data, uint64(e.Size), ""); err != nil {
			return err
		}
	case sIFLNK:
		if e.Linkname == "" {
			return errors.New("symbolic link with an empty target")
		}
		if len(e.Linkname) >= 4096 {
			return fmt.Errorf("symbolic link target of %d bytes exceeds 4095", len(e.Linkname))
		}
		// Placed at Close with the metadata: resolving a path reads
		// the target, so it belongs with the directories.
		ino.size = uint64(len(e.Linkname))
		ino.link = e.Linkname
	case sIFCHR, sIFBLK:
		if e.DevMajor > 0xfff || e.DevMinor > 0xfffff {
			return fmt.Errorf("device number %d:%d out of range", e.DevMajor, e.DevMinor)
		}
		ino.rdev = encodeDev(e.DevMajor, e.DevMinor)
	}
	dir.children[name] = &node{name: name, ino: ino}
	return nil
}

func (w *Writer) setDirMeta(ino *inode, mode uint16, e Entry, xs []xattr) {
	fresh := w.newInode(mode, e.UID, e.GID, e.ModTime)
	ino.mode, ino.uid, ino.gid = fresh.mode, fresh.uid, fresh.gid
	ino.mtime, ino.mtimeNsec = fresh.mtime, fresh.mtimeNsec
	ino.xattrs = xs
}

// writeData stores a file's data: compressed when the writer compresses
// and the file is a regular file of more than one block (smaller ones
// cannot save a block), flat otherwise.
func (w *Writer) writeData(ino *inode, r io.Reader, size uint64, target string) error {
	switch {
	case w.z == nil:
		return w.writeFlat(ino, r, size, target)
	case target == "" && size > uint64(w.bs):
		return w.writeCompressed(ino, r, size)
	case target == "":
		// Queued behind the files being compressed, so blocks stay in
		// the order of Add calls.
		return w.zpipe.submit(w, ino, r, size, true)
	}
	// A symlink: only one that does not fit inline writes a block, and
	// must wait for the queue.
	if extendedInodeSize+inlineXattrSize(ino.xattrs)+int(size) > int(w.bs) {
		if err := w.zpipe.drain(w); err != nil {
			return err
		}
	}
	return w.writeFlat(ino, r, size, target)
}

// writeFlat streams size bytes of r to the data area. Whole blocks go
// straight to the output; the last partial block is kept for packing inline
// after the inode when it can fit there with the largest inode and every
// xattr inline, and is otherwise written as a zero-padded block.
func (w *Writer) writeFlat(ino *inode, r io.Reader, size uint64, target string) error {
	ino.size = size
	full := size / uint64(w.bs)
	tail := int(size % uint64(w.bs))
	inline := tail > 0 && int64(extendedInodeSize+inlineXattrSize(ino.xattrs)+tail) <= w.bs
	if full > 0 || (tail > 0 && !inline) {
		ino.blkaddr = w.nextBlk
	}
	if full > 0 {
		if err := w.copyData(r, full*uint64(w.bs)); err != nil {
			return err
		}
		ino.nblocks = full
		w.nextBlk += full
	}
	if tail == 0 {
		return nil
	}
	if target != "" && inline {
		ino.target = target[full*uint64(w.bs):]
		ino.tailLen = tail
		return nil
	}
	b := w.copyBuf[:tail]
	if _, err := io.ReadFull(r, b); err != nil {
		return shortData(err, size)
	}
	if inline {
		off, err := w.tails.put(b)
		if err != nil {
			w.err = fmt.Errorf("erofs: %w", err)
			return w.err
		}
		ino.tailOff, ino.tailLen = off, tail
		return nil
	}
	if err := w.writeOut(b); err != nil {
		return err
	}
	if err := w.writeOut(make([]byte, w.bs-int64(tail))); err != nil {
		return err
	}
	ino.nblocks++
	w.nextBlk++
	return nil
}

// copyData copies exactly n bytes (a whole number of blocks) from r to the
// output. If r ends early the blocks written so far are padded out, so the
// image stays consistent, and ErrShortData is returned.
func (w *Writer) copyData(r io.Reader, n uint64) error {
	if src, ok := r.(*os.File); ok {
		if dst, ok := w.out.(*os.File); ok {
			return w.copyFile(dst, src, n)
		}
	}
	var done uint64
	for done < n {
		chunk := w.copyBuf[:min(uint64(len(w.copyBuf)), n-done)]
		got, err := io.ReadFull(r, chunk)
		if got > 0 {
			if werr := w.writeOut(chunk[:got]); werr != nil {
				return werr
			}
			done += uint64(got)
		}
		if err != nil {
			// Keep the data area block aligned for whatever comes next.
			if pad := int64(done) % w.bs; pad != 0 {
				if werr := w.writeOut(make([]byte, w.bs-pad)); werr != nil {
					return werr
				}
				done += uint64(w.bs - pad)
			}
			w.nextBlk += done / uint64(w.bs)
			return shortData(err, n)
		}
	}
	return nil
}

// copyFile copies between two files with io.CopyN, which the os package
// turns into copy_file_range (or sendfile): the kernel moves the data without
// a round trip through user space, and may share extents on file systems
// that support it.
func (w *Writer) copyFile(dst, src *os.File, n uint64) error {
	if err := w.buf.Flush(); err != nil {
		w.err = fmt.Errorf("erofs: writing image: %w", err)
		return w.err
	}
	got, err := io.CopyN(dst, src, int64(n))
	if err == nil {
		return nil
	}
	if pad := got % w.bs; pad != 0 {
		if werr := w.writeOut(make([]byte, w.bs-pad)); werr != nil {
			return werr
		}
		got += w.bs - pad
	}
	w.nextBlk += uint64(got / w.bs)
	if errors.Is(err, io.EOF) {
		return shortData(err, n)
	}
	// A failed read of the source or a failed write of the image cannot be
	// told apart here; either way the image is no longer trustworthy.
	w.err = fmt.Errorf("erofs: copying file data: %w", err)
	return w.err
}

func shortData(err error, size uint64) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w (want %d bytes)", ErrShortData, size)
	}
	return fmt.Errorf("reading file data: %w", err)
}

func (w *Writer) writeOut(b []byte) error {
	if _, err := w.buf.Write(b); err != nil {
		w.err = fmt.Errorf("erofs: writing image: %w", err)
		return w.err
	}
	return nil
}

// lookup finds the node at parts.
func (w *Writer) lookup(parts []string) *node {
	n := w.root
	for _, c := range parts {
		if n.children == nil {
			return nil
		}
		if n = n.children[c]; n == nil {
			return nil
		}
	}
	return n
}

// Link adds path as another name (a hard link) of target's inode. The target
// must have been added and must not be a directory.
func (w *Writer) Link(path, target string) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("erofs: Link after Close")
	}
	wrap := func(err error) error { return &EntryError{Path: path, Err: err} }
	tparts, err := splitPath(target)
	if err != nil {
		return wrap(fmt.Errorf("link target %q: %w", target, err))
	}
	t := w.lookup(tparts)
	if t == nil {
		return wrap(fmt.Errorf("link target %q: %w", target, ErrNotExist))
	}
	if t.ino.isDir() {
		return wrap(fmt.Errorf("link target %q is a directory", target))
	}
	parts, err := splitPath(path)
	if err != nil {
		return wrap(err)
	}
	if len(parts) == 0 {
		return wrap(fmt.Errorf("%w: the root cannot be a hard link", ErrTypeConflict))
	}
	dir, err := w.parentOf(parts)
	if err != nil {
		return wrap(err)
	}
	name := parts[len(parts)-1]
	if old := dir.children[name]; old != nil && old.ino.isDir() {
		return wrap(fmt.Errorf("%w: a hard link replaces a directory", ErrTypeConflict))
	}
	dir.children[name] = &node{name: name, ino: t.ino}
	return nil
}

// Remove deletes path and, for a directory, everything below it. Removing a
// path that does not exist is not an error. The data of removed files stays
// in the image, unreferenced.
func (w *Writer) Remove(path string) error {
	if w.err != nil {
		return w.err
	}
	parts, err := splitPath(path)
	if err != nil {
		return &EntryError{Path: path, Err: err}
	}
	if len(parts) == 0 {
		w.root.children = map[string]*node{}
		return nil
	}
	dir := w.lookup(parts[:len(parts)-1])
	if dir == nil || dir.children == nil {
		return nil
	}
	delete(dir.children, parts[len(parts)-1])
	return nil
}

// Discard abandons the image without finishing it and releases the
// writer's temporary resources. The output is left as it is; the caller
// removes it.
func (w *Writer) Discard() error {
	w.closed = true
	if w.zpipe != nil {
		w.zpipe.stop()
	}
	if w.err == nil {
		w.err = errors.New("erofs: writer discarded")
	}
	return w.tails.close()
}

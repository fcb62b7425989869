package erofs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"sync"
)

// Limits that keep a hostile image from making the reader allocate or loop
// without bound. Everything else the reader allocates is bounded by the
// image size.
const (
	maxSymlinkHops = 40         // symlinks followed by one lookup, as Linux's MAXSYMLINKS
	maxPathSteps   = 4096       // path components walked by one lookup, symlink targets included
	maxSymlinkLen  = 4095       // longest symlink target: PATH_MAX-1, as Linux and the Writer
	maxXattrBytes  = 4 << 20    // names and values of one inode's extended attributes
	inodeCacheSize = 4096       // decoded inodes kept by an FS
	blockCacheSize = 4 << 20    // bytes of image blocks an FS keeps for small reads
	readFileChunk  = 1 << 20    // growth step of ReadFile for sparse files larger than the image
	xattrLongIndex = 0x80       // e_name_index bit selecting a long (table) prefix
	chunkIndexes   = 0x20       // EROFS_CHUNK_FORMAT_INDEXES
	chunkBitsMask  = 0x1f       // EROFS_CHUNK_FORMAT_BLKBITS_MASK
	chunkFmtKnown  = 0x3f       // EROFS_CHUNK_FORMAT_ALL
	nullAddr       = 0xFFFFFFFF // EROFS_NULL_ADDR: an unmapped (hole) chunk
	minBlkSzBits   = 9
	maxBlkSzBits   = 16
)

// readerIncompat are the feature_incompat bits the reader accepts: besides
// what the writer emits, chunked files, long xattr prefixes and
// tail-packed compressed files, which mkfs.erofs writes.
const readerIncompat = featureIncompatKnown | featureIncompatChunkedFile | featureIncompatXattrPrefix |
	featureIncompatZTailpacking

// Errors of path resolution. They wrap the io/fs sentinels callers test for.
var (
	errNotDir      = fmt.Errorf("not a directory: %w", fs.ErrNotExist)
	errIsDir       = fmt.Errorf("is a directory: %w", fs.ErrInvalid)
	errNotSymlink  = fmt.Errorf("not a symbolic link: %w", fs.ErrInvalid)
	errSymlinkLoop = errors.New("too many levels of symbolic links")
	errPathTooDeep = errors.New("path too deep")
	errEmptyLink   = fmt.Errorf("empty symbolic link: %w", fs.ErrNotExist)
)

// FS is a read-only view of an EROFS image. It implements fs.FS,
// fs.StatFS, fs.ReadDirFS, fs.ReadFileFS and fs.ReadLinkFS and is safe for
// concurrent use. Directories opened through it implement fs.ReadDirFile;
// other files implement io.ReaderAt and io.Seeker as well.
//
// Names follow io/fs rules except that they need not be UTF-8: image names
// are bytes. Symlinks are followed (at most 40 per lookup; absolute targets
// start at the image root, ".." stops at it) except in the last component
// for Lstat and ReadLink. FileInfo.Sys of everything it returns is a *Stat.
type FS struct {
	r         io.ReaderAt
	size      int64 // bytes of the image; every read is checked against it
	sb        superBlock
	blkBits   uint
	bs        int64
	metaBase  int64 // byte offset of meta_blkaddr: nid 0
	xattrBase int64 // byte offset of xattr_blkaddr: shared xattr id 0
	prefixes  []string
	root      *fsInode

	mu     sync.Mutex
	inodes map[uint64]*fsInode
	blocks blockCache
	zcache zcache
}

// Open reads the superblock of an EROFS image and returns a file system over
// it. The image size is taken from r's Size method (bytes.Reader,
// io.SectionReader), its Stat method (os.File of a regular file) or by
// seeking to its end; use OpenSize for other readers.
func Open(r io.ReaderAt) (*FS, error) {
	size, err := readerSize(r)
	if err != nil {
		return nil, err
	}
	return OpenSize(r, size)
}

// readerSize finds the size of an image, which bounds every offset the
// image itself claims.
func readerSize(r io.ReaderAt) (int64, error) {
	if s, ok := r.(interface{ Size() int64 }); ok {
		return s.Size(), nil
	}
	if s, ok := r.(interface{ Stat() (fs.FileInfo, error) }); ok {
		fi, err := s.Stat()
		if err != nil {
			return 0, fmt.Errorf("erofs: stat image: %w", err)
		}
		// Block devices report size 0 here; seek below instead.
		if fi.Mode().IsRegular() {
			return fi.Size(), nil
		}
	}
	if s, ok := r.(io.Seeker); ok {
		cur, err := s.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0, fmt.Errorf("erofs: finding image size: %w", err)
		}
		end, err := s.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, fmt.Errorf("erofs: finding image size: %w", err)
		}
		if _, err := s.Seek(cur, io.SeekStart); err != nil {
			return 0, fmt.Errorf("erofs: finding image size: %w", err)
		}
		return end, nil
	}
	return 0, errors.New("erofs: cannot tell the image size (no Size, Stat or Seek method); use OpenSize")
}

// OpenSize is like Open for a reader whose first size bytes are the image.
func OpenSize(r io.ReaderAt, size int64) (*FS, error) {
	if size < 0 {
		return nil, fmt.Errorf("erofs: negative image size %d", size)
	}
	f := &FS{r: r, size: size, inodes: make(map[uint64]*fsInode)}
	if size < superOffset+superSize {
		return nil, corruptf("image is %d bytes, too small to hold a superblock", size)
	}
	var raw [superSize]byte
	if err := f.readFull(raw[:], superOffset); err != nil {
		return nil, withContext(err, "superblock")
	}
	sb := unmarshalSuperBlock(raw[:])
	if sb.Magic != superMagic {
		return nil, corruptf("bad superblock magic %#08x (want %#08x)", sb.Magic, superMagic)
	}
	if sb.BlkSzBits < minBlkSzBits || sb.BlkSzBits > maxBlkSzBits {
		return nil, corruptf("superblock: block size 2^%d out of range", sb.BlkSzBits)
	}
	f.sb = sb
	f.blkBits = uint(sb.BlkSzBits)
	f.bs = 1 << f.blkBits
	f.blocks.init(int(blockCacheSize >> f.blkBits))
	if sb.FeatureCompat&featureCompatSBChecksum != 0 {
		if err := f.verifyChecksum(); err != nil {
			return nil, err
		}
	}
	if unknown := sb.FeatureIncompat &^ readerIncompat; unknown != 0 {
		return nil, fmt.Errorf("erofs: unsupported incompatible features %#x (%s): %w",
			unknown, incompatNames(unknown), errors.ErrUnsupported)
	}
	if sb.DirBlkBits != 0 {
		// Directory blocks larger than file system blocks: Linux refuses
		// them too.
		return nil, fmt.Errorf("erofs: unsupported directory block size bits %d: %w", sb.DirBlkBits, errors.ErrUnsupported)
	}
	if blocks := int64(sb.Blocks) << f.blkBits; blocks > align(size, f.bs) {
		return nil, corruptf("image truncated: superblock says %d blocks of %d bytes, image has %d bytes",
			sb.Blocks, f.bs, size)
	}
	f.metaBase = int64(sb.MetaBlkAddr) << f.blkBits
	if f.metaBase >= size {
		return nil, corruptf("superblock: meta_blkaddr %d beyond end of image", sb.MetaBlkAddr)
	}
	f.xattrBase = int64(sb.XattrBlkAddr) << f.blkBits
	if sb.FeatureIncompat&featureIncompatXattrPrefix != 0 {
		if err := f.loadXattrPrefixes(); err != nil {
			return nil, err
		}
	}
	root, err := f.inode(uint64(sb.RootNid))
	if err != nil {
		return nil, withContext(err, "root directory")
	}
	if !root.isDir() {
		return nil, corruptf("root inode %d is not a directory (mode %#o)", root.nid, root.di.Mode)
	}
	f.root = root
	return f, nil
}

// verifyChecksum checks the superblock crc32c the way Linux does: over the
// rest of block 0 from the superblock on, or over one block's worth of bytes
// from the superblock for blocks of 1 KiB and less.
func (f *FS) verifyChecksum() error {
	n := f.bs
	if n <= superOffset {
		n += superOffset
	}
	if n > f.size {
		return corruptf("image is %d bytes, shorter than its checksummed first block", f.size)
	}
	blk := make([]byte, n)
	if err := f.readFull(blk, 0); err != nil {
		return withContext(err, "superblock")
	}
	if got := superBlockChecksum(blk, f.bs); got != f.sb.Checksum {
		return corruptf("superblock checksum mismatch: stored %#08x, computed %#08x", f.sb.Checksum, got)
	}
	return nil
}

// incompatNames names feature_incompat bits for error messages.
func incompatNames(bits uint32) string {
	names := []string{
		"zero padding", "compression configs/big pcluster", "chunked file",
		"device table/compressed head2", "tail packing", "fragments/dedupe",
		"xattr prefixes", "48-bit layout", "metabox",
	}
	var out []string
	for i := range 32 {
		if bits&(1<<i) == 0 {
			continue
		}
		if i < len(names) {
			out = append(out, names[i])
		} else {
			out = append(out, fmt.Sprintf("bit %d", i))
		}
	}
	return strings.Join(out, ", ")
}

// corruptError is a format error: the image breaks the EROFS format. It
// matches ErrCorrupt under errors.Is.
type corruptError struct{ msg string }

func (e *corruptError) Error() string        { return ErrCorrupt.Error() + ": " + e.msg }
func (e *corruptError) Is(target error) bool { return target == ErrCorrupt }

// corruptf returns an error wrapping ErrCorrupt that says what is wrong.
func corruptf(format string, args ...any) error {
	return &corruptError{msg: fmt.Sprintf(format, args...)}
}

// withContext says where err happened ("inode 12", "superblock"). Format
// errors keep "corrupt EROFS image:" in front, so messages read
// "corrupt EROFS image: inode 12: shared xattr 3: read of ...".
func withContext(err error, format string, args ...any) error {
	ctx := fmt.Sprintf(format, args...)
	if ce, ok := err.(*corruptError); ok {
		return &corruptError{msg: ctx + ": " + ce.msg}
	}
	return fmt.Errorf("%s: %w", ctx, err)
}

// readFull fills p from the image at off. Offsets outside the image are a
// format error rather than an I/O error: they come from the image itself.
func (f *FS) readFull(p []byte, off int64) error {
	if off < 0 || off > f.size || int64(len(p)) > f.size-off {
		return corruptf("read of %d bytes at offset %d beyond end of image (%d bytes)", len(p), off, f.size)
	}
	n, err := f.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("erofs: reading %d bytes at offset %d: %w", len(p), off, err)
}

// readSmall is readFull for reads smaller than a few blocks: metadata and
// small reads of file data. It goes through a bounded cache of whole image
// blocks, so walking directories or reading a file a few bytes at a time
// does not cost a system call each time.
func (f *FS) readSmall(p []byte, off int64) error {
	if off < 0 || off > f.size || int64(len(p)) > f.size-off {
		return corruptf("read of %d bytes at offset %d beyond end of image (%d bytes)", len(p), off, f.size)
	}
	for len(p) > 0 {
		bn := off >> f.blkBits
		blk, err := f.block(bn)
		if err != nil {
			return err
		}
		n := copy(p, blk[off-bn<<f.blkBits:])
		p = p[n:]
		off += int64(n)
	}
	return nil
}

// block returns image block bn, which the caller checked is (at least
// partly) inside the image. The result must not be modified.
func (f *FS) block(bn int64) ([]byte, error) {
	if b := f.blocks.get(bn); b != nil {
		return b, nil
	}
	start := bn << f.blkBits
	b := make([]byte, min(f.bs, f.size-start))
	if err := f.readFull(b, start); err != nil {
		return nil, err
	}
	f.blocks.put(bn, b)
	return b, nil
}

// blockCache keeps up to max image blocks, dropping the oldest first.
type blockCache struct {
	mu     sync.Mutex
	blocks map[int64][]byte
	ring   []int64 // block numbers in insertion order, oldest at next
	next   int
	max    int
}

func (c *blockCache) init(max int) {
	c.blocks = make(map[int64][]byte)
	c.max = max
}

func (c *blockCache) get(bn int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocks[bn]
}

func (c *blockCache) put(bn int64, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.blocks[bn]; ok {
		return
	}
	if len(c.ring) < c.max {
		c.ring = append(c.ring, bn)
	} else {
		delete(c.blocks, c.ring[c.next])
		c.ring[c.next] = bn
		c.next = (c.next + 1) % len(c.ring)
	}
	c.blocks[bn] = b
}

// resolve walks name from the root. Symlinks are followed in every
// component but the last, and in the last too when follow is set.
// ".." in link targets goes back along the directories actually walked and
// stops at the root, so no ".." dirent of the image is trusted.
func (f *FS) resolve(name string, follow bool) (*fsInode, error) {
	stack := []*fsInode{f.root}
	var comps []string // pending components, next one last
	if name != "." {
		comps = pushComponents(comps, name)
	}
	hops, steps := 0, 0
	for len(comps) > 0 {
		c := comps[len(comps)-1]
		comps = comps[:len(comps)-1]
		if steps++; steps > maxPathSteps {
			return nil, errPathTooDeep
		}
		cur := stack[len(stack)-1]
		if !cur.isDir() {
			return nil, errNotDir
		}
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
			continue
		}
		child, err := f.lookup(cur, c)
		if err != nil {
			return nil, err
		}
		if child.isSymlink() && (follow || len(comps) > 0) {
			if hops++; hops > maxSymlinkHops {
				return nil, errSymlinkLoop
			}
			target, err := f.readLink(child)
			if err != nil {
				return nil, err
			}
			if target == "" {
				return nil, errEmptyLink
			}
			if strings.HasPrefix(target, "/") {
				stack = stack[:1]
			}
			comps = pushComponents(comps, target)
			continue
		}
		stack = append(stack, child)
	}
	return stack[len(stack)-1], nil
}

// pushComponents adds the components of p to the pending stack so that the
// first component is popped first.
func pushComponents(comps []string, p string) []string {
	parts := strings.Split(p, "/")
	for i := len(parts) - 1; i >= 0; i-- {
		comps = append(comps, parts[i])
	}
	return comps
}

// validPath is fs.ValidPath without its UTF-8 check: names in an image are
// bytes (tar layers carry Latin-1 names, say) and must stay reachable.
func validPath(name string) bool {
	if name == "." {
		return true
	}
	for _, elem := range strings.Split(name, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return false
		}
	}
	return true
}

// walk checks name and resolves it, reporting errors as *fs.PathError.
func (f *FS) walk(op, name string, follow bool) (*fsInode, error) {
	if !validPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	in, err := f.resolve(name, follow)
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: err}
	}
	return in, nil
}

// Open opens the named file, following symlinks. Directories implement
// fs.ReadDirFile; other files also implement io.ReaderAt and io.Seeker.
// Files compressed with an algorithm other than lz4 fail to read with an
// error wrapping errors.ErrUnsupported.
func (f *FS) Open(name string) (fs.File, error) {
	in, err := f.walk("open", name, true)
	if err != nil {
		return nil, err
	}
	fi, err := f.fileInfo(path.Base(name), in)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	if in.isDir() {
		return &fsDir{f: f, in: in, name: name, info: fi}, nil
	}
	m, err := f.contentMapper(in)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return &fsFile{f: f, in: in, name: name, info: fi, m: m, size: contentSize(in)}, nil
}

// Stat returns information about the named file, following symlinks.
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	return f.statOp("stat", name, true)
}

// Lstat is like Stat but does not follow a symlink in the last component.
func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	return f.statOp("lstat", name, false)
}

func (f *FS) statOp(op, name string, follow bool) (fs.FileInfo, error) {
	in, err := f.walk(op, name, follow)
	if err != nil {
		return nil, err
	}
	fi, err := f.fileInfo(path.Base(name), in)
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: err}
	}
	return fi, nil
}

// ReadLink returns the target of the named symlink. Symlinks in the
// directories leading to it are followed.
func (f *FS) ReadLink(name string) (string, error) {
	in, err := f.walk("readlink", name, false)
	if err != nil {
		return "", err
	}
	if !in.isSymlink() {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: errNotSymlink}
	}
	target, err := f.readLink(in)
	if err != nil {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: err}
	}
	return target, nil
}

// ReadDir returns the entries of the named directory sorted by name,
// without "." and "..".
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	in, err := f.walk("readdir", name, true)
	if err != nil {
		return nil, err
	}
	if !in.isDir() {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: errNotDir}
	}
	ents, err := f.readDir(in)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	return ents, nil
}

// ReadFile returns the contents of the named file, following symlinks. A
// sparse file is returned whole, holes included; Open streams instead.
func (f *FS) ReadFile(name string) ([]byte, error) {
	in, err := f.walk("readfile", name, true)
	if err != nil {
		return nil, err
	}
	if in.isDir() {
		return nil, &fs.PathError{Op: "readfile", Path: name, Err: errIsDir}
	}
	data, err := f.readContent(in)
	if err != nil {
		return nil, &fs.PathError{Op: "readfile", Path: name, Err: err}
	}
	return data, nil
}

// readContent reads a whole non-directory file.
func (f *FS) readContent(in *fsInode) ([]byte, error) {
	m, err := f.contentMapper(in)
	if err != nil {
		return nil, err
	}
	size := contentSize(in)
	if size <= f.size {
		// Data stored in the image cannot be longer than the image, so
		// this allocation is bounded by it.
		buf := make([]byte, size)
		n, err := f.readData(in, m, size, buf, 0)
		if err != nil && err != io.EOF {
			return nil, err
		}
		return buf[:n], nil
	}
	// Only a sparse (chunked, with holes) or a compressed file can be
	// larger than the image: grow as data arrives instead of trusting the
	// size.
	var buf []byte
	for off := int64(0); off < size; {
		n := min(size-off, readFileChunk)
		buf = append(buf, make([]byte, n)...)
		k, err := f.readData(in, m, size, buf[len(buf)-int(n):], off)
		off += int64(k)
		if err != nil && err != io.EOF {
			return nil, err
		}
		if k < int(n) {
			buf = buf[:len(buf)-int(n)+k]
			break
		}
	}
	return buf, nil
}

// Compile-time checks of the interfaces FS promises.
var (
	_ fs.FS         = (*FS)(nil)
	_ fs.StatFS     = (*FS)(nil)
	_ fs.ReadDirFS  = (*FS)(nil)
	_ fs.ReadFileFS = (*FS)(nil)
	_ fs.ReadLinkFS = (*FS)(nil)
)

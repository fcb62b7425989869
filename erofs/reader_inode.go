package erofs

import (
	"bytes"
	"encoding/binary"
	"io/fs"
	"maps"
	"math"
	"sync"
	"time"
)

// fsInode is a decoded on-disk inode. It is immutable once loaded, apart
// from its lazily parsed extended attributes.
type fsInode struct {
	nid   uint64
	pos   int64 // byte offset of the inode in the image
	di    diskInode
	isize int   // 32 or 64
	xsize int   // bytes of the inline xattr area after the inode
	size  int64 // i_size

	xattrOnce sync.Once
	xattrs    map[string][]byte
	xattrErr  error

	linkOnce sync.Once
	link     string
	linkErr  error
}

func (in *fsInode) isDir() bool     { return in.di.Mode&sIFMT == sIFDIR }
func (in *fsInode) isSymlink() bool { return in.di.Mode&sIFMT == sIFLNK }

// dataOff is where inline data and chunk indexes start: after the inode and
// its xattrs.
func (in *fsInode) dataOff() int64 { return in.pos + int64(in.isize) + int64(in.xsize) }

// inode returns the inode nid, from a small cache when possible. Failed
// loads are not cached.
func (f *FS) inode(nid uint64) (*fsInode, error) {
	f.mu.Lock()
	in, ok := f.inodes[nid]
	f.mu.Unlock()
	if ok {
		return in, nil
	}
	in, err := f.loadInode(nid)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	if len(f.inodes) >= inodeCacheSize {
		// Crude but bounded: start over rather than track recency.
		clear(f.inodes)
	}
	f.inodes[nid] = in
	f.mu.Unlock()
	return in, nil
}

// loadInode reads and checks inode nid. An inode may straddle a block
// boundary; only the image end bounds it.
func (f *FS) loadInode(nid uint64) (*fsInode, error) {
	if nid > uint64(f.size-f.metaBase)/inodeSlotSize {
		return nil, corruptf("inode %d: offset beyond end of image", nid)
	}
	pos := f.metaBase + int64(nid)*inodeSlotSize
	var buf [extendedInodeSize]byte
	if err := f.readSmall(buf[:compactInodeSize], pos); err != nil {
		return nil, wrapInode(nid, err)
	}
	format := binary.LittleEndian.Uint16(buf[0:])
	if format&^formatKnownBits != 0 {
		return nil, corruptf("inode %d: unknown i_format bits %#x", nid, format)
	}
	isize := compactInodeSize
	if format&formatExtendedBit != 0 {
		isize = extendedInodeSize
		if err := f.readSmall(buf[compactInodeSize:], pos+compactInodeSize); err != nil {
			return nil, wrapInode(nid, err)
		}
	}
	di := unmarshalInode(buf[:], &f.sb)
	switch di.layout() {
	case layoutFlatPlain, layoutFlatInline, layoutChunkBased, layoutCompressedFull, layoutCompressedCompact:
	default:
		return nil, corruptf("inode %d: unknown data layout %d", nid, di.layout())
	}
	switch di.Mode & sIFMT {
	case sIFREG, sIFDIR, sIFLNK, sIFCHR, sIFBLK, sIFIFO, sIFSOCK:
	default:
		return nil, corruptf("inode %d: bad file type in mode %#o", nid, di.Mode)
	}
	if di.Size > math.MaxInt64 {
		return nil, corruptf("inode %d: size %d too large", nid, di.Size)
	}
	in := &fsInode{
		nid:   nid,
		pos:   pos,
		di:    di,
		isize: isize,
		xsize: xattrIbodySize(di.XattrCount),
		size:  int64(di.Size),
	}
	if in.dataOff() > f.size {
		return nil, corruptf("inode %d: xattr area (%d bytes) beyond end of image", nid, in.xsize)
	}
	return in, nil
}

// wrapInode adds the inode number to an error.
func wrapInode(nid uint64, err error) error {
	return withContext(err, "inode %d", nid)
}

// inodeXattrs returns the inode's extended attributes (nil when none),
// parsed once. The map is shared: callers must copy it before handing it
// out.
func (f *FS) inodeXattrs(in *fsInode) (map[string][]byte, error) {
	in.xattrOnce.Do(func() {
		in.xattrs, in.xattrErr = f.readXattrs(in)
	})
	return in.xattrs, in.xattrErr
}

// readXattrs parses the inline xattr area: a header, shared_count ids of
// shared entries in the xattr blocks, then inline entries, each padded to
// 4 bytes, filling the area exactly.
func (f *FS) readXattrs(in *fsInode) (map[string][]byte, error) {
	if in.xsize == 0 {
		return nil, nil
	}
	area := make([]byte, in.xsize) // at most 12+4*65534 bytes
	if err := f.readSmall(area, in.pos+int64(in.isize)); err != nil {
		return nil, wrapInode(in.nid, err)
	}
	shared := int(area[4])
	p := xattrHeaderSize + 4*shared
	if p > len(area) {
		return nil, corruptf("inode %d: %d shared xattr ids do not fit in a %d-byte xattr area", in.nid, shared, len(area))
	}
	m := make(map[string][]byte)
	total := 0
	add := func(name string, value []byte) error {
		if total += len(name) + len(value); total > maxXattrBytes {
			return corruptf("inode %d: extended attributes exceed %d bytes", in.nid, maxXattrBytes)
		}
		m[name] = value
		return nil
	}
	for i := range shared {
		id := binary.LittleEndian.Uint32(area[xattrHeaderSize+4*i:])
		name, value, err := f.sharedXattr(in.nid, id)
		if err != nil {
			return nil, err
		}
		if err := add(name, value); err != nil {
			return nil, err
		}
	}
	for p < len(area) {
		if len(area)-p < xattrEntryHdrSize {
			return nil, corruptf("inode %d: truncated xattr entry at offset %d of xattr area", in.nid, p)
		}
		nlen := int(area[p])
		index := area[p+1]
		vlen := int(binary.LittleEndian.Uint16(area[p+2:]))
		esize := int(align(int64(xattrEntryHdrSize+nlen+vlen), 4))
		if esize > len(area)-p {
			return nil, corruptf("inode %d: xattr entry at offset %d (%d bytes) overruns the %d-byte xattr area",
				in.nid, p, esize, len(area))
		}
		prefix, err := f.xattrPrefix(index)
		if err != nil {
			return nil, wrapInode(in.nid, err)
		}
		body := area[p+xattrEntryHdrSize:]
		if err := add(prefix+string(body[:nlen]), bytes.Clone(body[nlen:nlen+vlen])); err != nil {
			return nil, err
		}
		p += esize
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}

// sharedXattr reads shared xattr entry id, stored at xattr_blkaddr plus
// 4*id.
func (f *FS) sharedXattr(nid uint64, id uint32) (string, []byte, error) {
	off := f.xattrBase + int64(id)*4
	var hdr [xattrEntryHdrSize]byte
	if err := f.readSmall(hdr[:], off); err != nil {
		return "", nil, withContext(err, "inode %d: shared xattr %d", nid, id)
	}
	nlen := int(hdr[0])
	vlen := int(binary.LittleEndian.Uint16(hdr[2:]))
	body := make([]byte, nlen+vlen) // at most 255+65535 bytes
	if err := f.readSmall(body, off+xattrEntryHdrSize); err != nil {
		return "", nil, withContext(err, "inode %d: shared xattr %d", nid, id)
	}
	prefix, err := f.xattrPrefix(hdr[1])
	if err != nil {
		return "", nil, withContext(err, "inode %d: shared xattr %d", nid, id)
	}
	return prefix + string(body[:nlen]), body[nlen:], nil
}

// xattrPrefix maps an e_name_index to its name prefix: a built-in one, or
// with the high bit set an entry of the image's long prefix table.
func (f *FS) xattrPrefix(index uint8) (string, error) {
	if index&xattrLongIndex != 0 {
		i := int(index &^ xattrLongIndex)
		if i >= len(f.prefixes) {
			return "", corruptf("xattr long prefix %d not in the image's table of %d", i, len(f.prefixes))
		}
		return f.prefixes[i], nil
	}
	for _, p := range xattrPrefixes {
		if p.index == index {
			return p.prefix, nil
		}
	}
	return "", corruptf("unknown xattr name index %d", index)
}

// loadXattrPrefixes reads the long xattr name prefix table: xattr_prefix_count
// records at 4*xattr_prefix_start, each a __le16 length then that many bytes
// (a base prefix index and the rest of the prefix), 4-byte aligned. Images
// with fragments keep it in the packed inode, but those are refused before.
func (f *FS) loadXattrPrefixes() error {
	pos := int64(f.sb.XattrPrefixOff) * 4
	for i := range int(f.sb.XattrPrefixCnt) {
		pos = align(pos, 4)
		var hdr [2]byte
		if err := f.readSmall(hdr[:], pos); err != nil {
			return withContext(err, "xattr prefix %d", i)
		}
		n := int(binary.LittleEndian.Uint16(hdr[:]))
		if n < 1 || n > 1+MaxNameLen {
			return corruptf("xattr prefix %d: bad length %d", i, n)
		}
		buf := make([]byte, n)
		if err := f.readSmall(buf, pos+2); err != nil {
			return withContext(err, "xattr prefix %d", i)
		}
		if buf[0]&xattrLongIndex != 0 {
			return corruptf("xattr prefix %d: base index %d is itself a long prefix", i, buf[0])
		}
		base, err := f.xattrPrefix(buf[0])
		if err != nil {
			return withContext(err, "xattr prefix %d", i)
		}
		f.prefixes = append(f.prefixes, base+string(buf[1:]))
		pos += 2 + int64(n)
	}
	return nil
}

// fsFileInfo is the fs.FileInfo of an inode under a name.
type fsFileInfo struct {
	name string
	in   *fsInode
	st   *Stat
}

// fileInfo describes in; the Stat it carries owns its own copy of the
// xattrs so callers may change it.
func (f *FS) fileInfo(name string, in *fsInode) (*fsFileInfo, error) {
	xa, err := f.inodeXattrs(in)
	if err != nil {
		return nil, err
	}
	st := &Stat{
		Nid:       in.nid,
		Ino:       in.di.Ino,
		Mode:      uint32(in.di.Mode),
		UID:       in.di.UID,
		GID:       in.di.GID,
		Nlink:     in.di.Nlink,
		Size:      in.size,
		Mtime:     int64(in.di.Mtime),
		MtimeNsec: in.di.MtimeNsec,
		Layout:    in.di.layout(),
		Extended:  in.di.extended(),
	}
	if t := in.di.Mode & sIFMT; t == sIFCHR || t == sIFBLK {
		st.DevMajor, st.DevMinor = decodeDev(in.di.U)
	}
	if xa != nil {
		st.Xattrs = maps.Clone(xa)
		for k, v := range st.Xattrs {
			st.Xattrs[k] = bytes.Clone(v)
		}
	}
	return &fsFileInfo{name: name, in: in, st: st}, nil
}

// Name is the base name the file was looked up by.
func (fi *fsFileInfo) Name() string { return fi.name }

// Size is i_size: bytes of data, or of the target for a symlink.
func (fi *fsFileInfo) Size() int64 { return fi.in.size }

// Mode keeps the setuid, setgid and sticky bits.
func (fi *fsFileInfo) Mode() fs.FileMode { return fileMode(fi.in.di.Mode) }

// IsDir reports whether the file is a directory.
func (fi *fsFileInfo) IsDir() bool { return fi.in.isDir() }

// Sys returns the *Stat with everything the inode records.
func (fi *fsFileInfo) Sys() any { return fi.st }

// String formats the information like fs.FormatFileInfo.
func (fi *fsFileInfo) String() string { return fs.FormatFileInfo(fi) }

// ModTime has nanosecond precision for extended inodes; compact inodes
// carry the image's build time.
func (fi *fsFileInfo) ModTime() time.Time { return time.Unix(fi.st.Mtime, int64(fi.st.MtimeNsec)) }

// TypeName names the type of a file with mode m as pe's listings and
// tests show it: "dir", "symlink", "char", "block", "fifo", "socket",
// "file", or "unknown".
func TypeName(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "dir"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeCharDevice != 0:
		return "char"
	case m&fs.ModeDevice != 0:
		return "block"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m.IsRegular():
		return "file"
	}
	return "unknown"
}

package erofs

import (
	"encoding/binary"
	"fmt"
	"io"
)

// extent maps a range of an inode's data to the image.
type extent struct {
	off    int64 // logical start in the file
	length int64 // > 0
	phys   int64 // image offset holding byte off, or -1 for a hole of zeros
	// enc says how the bytes are stored: encNone for flat data at phys,
	// else the plen bytes of a pcluster at phys decode to the extent.
	enc  int
	plen int64
}

// dataMapper finds where an inode's data lives. Every data layout has one,
// and reading goes only through it; the compressed layouts' extents name a
// physical cluster to decode.
type dataMapper interface {
	// mapExtent returns the extent holding logical offset off, which is
	// less than the data size.
	mapExtent(off int64) (extent, error)
}

// mapper returns the dataMapper for in's layout. Making it checks what the
// inode alone says (the block range or chunk array lies inside the image);
// each extent's target is checked when it is read.
func (f *FS) mapper(in *fsInode) (dataMapper, error) {
	switch in.di.layout() {
	case layoutFlatPlain, layoutFlatInline:
		return f.flatMapper(in)
	case layoutChunkBased:
		return f.chunkMapper(in)
	case layoutCompressedFull, layoutCompressedCompact:
		return f.zmapper(in)
	}
	return nil, corruptf("inode %d: unknown data layout %d", in.nid, in.di.layout())
}

// contentSize is the number of data bytes a file has: devices, FIFOs and
// sockets have none whatever their i_size says, and their i_u is not a
// block address.
func contentSize(in *fsInode) int64 {
	switch in.di.Mode & sIFMT {
	case sIFREG, sIFDIR, sIFLNK:
		return in.size
	}
	return 0
}

// contentMapper is mapper for files that have content, and an empty mapping
// for those that do not.
func (f *FS) contentMapper(in *fsInode) (dataMapper, error) {
	if contentSize(in) == 0 {
		return emptyMapper{}, nil
	}
	return f.mapper(in)
}

// flatMapper maps flat layouts: size bytes in consecutive blocks from
// raw_blkaddr, except that the inline layout keeps the last partial block
// right after the inode and its xattrs.
type flatMapper struct {
	blockBytes int64 // data in blocks, from logical 0
	phys       int64 // image offset of the first block
	tailLen    int64 // inline tail length
	tailPhys   int64 // image offset of the inline tail
}

func (f *FS) flatMapper(in *fsInode) (*flatMapper, error) {
	size := in.size
	m := &flatMapper{phys: int64(in.di.U) << f.blkBits, blockBytes: size}
	if in.di.layout() == layoutFlatInline && size > 0 {
		m.tailLen = size & (f.bs - 1)
		if m.tailLen == 0 {
			m.tailLen = f.bs
		}
		m.blockBytes = size - m.tailLen
		m.tailPhys = in.dataOff()
		// Linux reads the tail from the inode's metadata block and so
		// rejects tails crossing into the next block.
		if m.tailPhys&(f.bs-1)+m.tailLen > f.bs {
			return nil, corruptf("inode %d: inline data (%d bytes at offset %d) crosses block boundary",
				in.nid, m.tailLen, m.tailPhys)
		}
		if m.tailLen > f.size-m.tailPhys {
			return nil, corruptf("inode %d: inline data beyond end of image", in.nid)
		}
	}
	if m.blockBytes > 0 && (m.phys > f.size || m.blockBytes > f.size-m.phys) {
		return nil, corruptf("inode %d: %d data bytes at block %d beyond end of image", in.nid, m.blockBytes, in.di.U)
	}
	return m, nil
}

func (m *flatMapper) mapExtent(off int64) (extent, error) {
	if off < m.blockBytes {
		return extent{off: 0, length: m.blockBytes, phys: m.phys}, nil
	}
	return extent{off: m.blockBytes, length: m.tailLen, phys: m.tailPhys}, nil
}

// chunkMapper maps the chunk-based layout: the data is cut into chunks of
// blocksize<<n bytes, each with an entry in an array after the inode and
// xattrs: a 4-byte block address, or with EROFS_CHUNK_FORMAT_INDEXES an
// 8-byte index {advise u16, device_id u16, blkaddr u32}.
type chunkMapper struct {
	f         *FS
	nid       uint64
	size      int64
	chunkBits uint
	unit      int64 // bytes of one array entry
	start     int64 // image offset of the array
}

func (f *FS) chunkMapper(in *fsInode) (*chunkMapper, error) {
	format := uint16(in.di.U)
	if format&^chunkFmtKnown != 0 {
		return nil, corruptf("inode %d: unknown chunk format %#x", in.nid, format)
	}
	m := &chunkMapper{
		f:         f,
		nid:       in.nid,
		size:      in.size,
		chunkBits: f.blkBits + uint(format&chunkBitsMask), // at most 16+31
		unit:      4,
	}
	if format&chunkIndexes != 0 {
		m.unit = 8
	}
	m.start = align(in.dataOff(), m.unit)
	nchunks := m.size >> m.chunkBits
	if m.size&(1<<m.chunkBits-1) != 0 {
		nchunks++
	}
	if m.start > f.size || nchunks > (f.size-m.start)/m.unit {
		return nil, corruptf("inode %d: chunk array (%d entries of %d bytes) beyond end of image", in.nid, nchunks, m.unit)
	}
	return m, nil
}

func (m *chunkMapper) mapExtent(off int64) (extent, error) {
	n := off >> m.chunkBits
	var buf [8]byte
	if err := m.f.readSmall(buf[:m.unit], m.start+n*m.unit); err != nil {
		return extent{}, withContext(err, "inode %d: chunk %d", m.nid, n)
	}
	var blk uint32
	if m.unit == 8 {
		// device_id selects an extra device; with none (the device table
		// feature is refused) Linux masks it to 0, the primary device.
		blk = binary.LittleEndian.Uint32(buf[4:])
	} else {
		blk = binary.LittleEndian.Uint32(buf[:])
	}
	e := extent{off: n << m.chunkBits, phys: -1}
	e.length = min(int64(1)<<m.chunkBits, m.size-e.off)
	if blk != nullAddr {
		e.phys = int64(blk) << m.f.blkBits
	}
	return e, nil
}

// emptyMapper is the mapping of a file without data; it is never asked.
type emptyMapper struct{}

func (emptyMapper) mapExtent(off int64) (extent, error) {
	return extent{}, fmt.Errorf("offset %d of a file without data", off)
}

// readData reads in's data at off into p through m, whose data is size
// bytes long. It returns io.EOF when p reaches past the end.
func (f *FS) readData(in *fsInode, m dataMapper, size int64, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("negative offset %d", off)
	}
	if off >= size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > size-off {
		p = p[:size-off]
		eof = io.EOF
	}
	n := 0
	for n < len(p) {
		e, err := m.mapExtent(off)
		if err != nil {
			return n, err
		}
		if e.length <= 0 || off < e.off || off-e.off >= e.length {
			// A mapper bug, not an image problem, but stop rather
			// than loop.
			return n, fmt.Errorf("inode %d: bad mapping of offset %d: %+v", in.nid, off, e)
		}
		k := int(min(int64(len(p)-n), e.length-(off-e.off)))
		if e.enc != encNone {
			dec, err := f.decodeExtent(in.nid, e)
			if err != nil {
				return n, err
			}
			copy(p[n:n+k], dec[off-e.off:])
		} else if e.phys < 0 {
			clear(p[n : n+k])
		} else if err := f.readPhys(p[n:n+k], e.phys+(off-e.off)); err != nil {
			return n, wrapInode(in.nid, err)
		}
		n += k
		off += int64(k)
	}
	return n, eof
}

// readPhys reads file data from the image: small reads through the block
// cache, large ones straight into p.
func (f *FS) readPhys(p []byte, off int64) error {
	if int64(len(p)) <= f.bs {
		return f.readSmall(p, off)
	}
	return f.readFull(p, off)
}

// readLink returns a symlink's target, its data, read once per inode.
func (f *FS) readLink(in *fsInode) (string, error) {
	in.linkOnce.Do(func() {
		in.link, in.linkErr = f.loadLink(in)
	})
	return in.link, in.linkErr
}

func (f *FS) loadLink(in *fsInode) (string, error) {
	if in.size > maxSymlinkLen {
		return "", corruptf("inode %d: symlink target of %d bytes too long", in.nid, in.size)
	}
	m, err := f.mapper(in)
	if err != nil {
		return "", err
	}
	buf := make([]byte, in.size)
	if _, err := f.readData(in, m, in.size, buf, 0); err != nil && err != io.EOF {
		return "", err
	}
	return string(buf), nil
}

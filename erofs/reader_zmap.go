package erofs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/pierrec/lz4/v4"
)

// This file reads compressed inodes (EROFS_INODE_COMPRESSED_FULL and
// _COMPACT), following Linux fs/erofs/zmap.c: a byte offset's logical
// cluster (lcluster) record leads to the head lcluster of its extent, whose
// record gives the extent's start and its physical cluster (pcluster); the
// next head gives its end. Every number comes from the image, so each is
// checked before it is used to read or to allocate.

// Encodings of an extent's stored bytes.
const (
	encNone       = iota // flat data: read as is
	encLZ4               // an LZ4 block filling (the end of) the pcluster
	encShifted           // plain: the extent's first byte at the pcluster's start
	encInterlaced        // plain: bytes at their offset within the block, wrapped
)

// Bounds on work a hostile image can cause per mapping.
const (
	zMaxLookback = 256 // lookback steps from an lcluster to its head (2 in sane images)
	zCacheSlots  = 8   // decoded extents an FS keeps
)

// zrecord is one decoded lcluster record.
type zrecord struct {
	typ        uint8
	clusterofs int64  // heads
	d0, d1     int64  // NONHEAD deltas
	cblk       uint32 // NONHEAD: pcluster blocks, if the record carries them
	pblk       int64  // heads: pcluster block address
	next       int64  // image offset just past the record's pack (nextpackoff)
}

// zmapper maps a compressed inode's logical offsets to extents.
type zmapper struct {
	f       *FS
	nid     uint64
	size    int64
	compact bool
	advise  uint16
	algs    [2]uint8
	lbits   uint  // lcluster bits
	total   int64 // lclusters
	ibase   int64 // full: first index; compact: ebase (after the map header)
	// Compacted index regions, in lclusters.
	init4b, c2b int64
	// Tail packing: the last extent's pcluster is inline after the indexes.
	inline   bool
	tailHead int64 // head lcluster of the last extent
	idataOff int64
	idataLen int64

	mu   sync.Mutex
	last extent // the last extent mapped, reused while reads stay in it
}

func (f *FS) zmapper(in *fsInode) (*zmapper, error) {
	m := &zmapper{
		f:       f,
		nid:     in.nid,
		size:    in.size,
		compact: in.di.layout() == layoutCompressedCompact,
		lbits:   f.blkBits,
	}
	hpos := align(in.dataOff(), 8)
	feat := f.sb.FeatureIncompat
	if !m.compact && feat&(featureIncompatBigPcluster|featureIncompatZTailpacking|featureIncompatFragments) == 0 {
		// Linux (z_erofs_fill_inode) ignores the map header of full
		// indexes in images without those features: LZ4, lcluster = block.
	} else {
		var h [zMapHeaderSize]byte
		if err := f.readSmall(h[:], hpos); err != nil {
			return nil, withContext(err, "inode %d: compression map header", in.nid)
		}
		if h[7]>>zFragmentBit != 0 {
			return nil, fmt.Errorf("inode %d: data in the packed inode (fragments): %w", in.nid, errors.ErrUnsupported)
		}
		m.advise = binary.LittleEndian.Uint16(h[4:])
		m.algs = [2]uint8{h[6] & 15, h[6] >> 4}
		m.lbits = f.blkBits + uint(h[7]&7)
		if m.advise&zAdviseFragment != 0 {
			return nil, fmt.Errorf("inode %d: fragments: %w", in.nid, errors.ErrUnsupported)
		}
		if m.advise&(zAdviseBigPcluster1|zAdviseBigPcluster2) != 0 && feat&featureIncompatBigPcluster == 0 {
			return nil, corruptf("inode %d: big pclusters without the superblock feature", in.nid)
		}
		if m.compact && (m.advise&zAdviseBigPcluster1 == 0) != (m.advise&zAdviseBigPcluster2 == 0) {
			return nil, corruptf("inode %d: compacted indexes with inconsistent big pcluster bits", in.nid)
		}
		if m.inline = m.advise&zAdviseInlinePcluster != 0; m.inline {
			if feat&featureIncompatZTailpacking == 0 {
				return nil, corruptf("inode %d: inline pcluster without the tail packing feature", in.nid)
			}
			m.idataLen = int64(binary.LittleEndian.Uint16(h[2:]))
		}
	}
	if m.lbits > 14 || (!m.compact && m.lbits > 16) {
		return nil, fmt.Errorf("inode %d: lcluster size 2^%d: %w", in.nid, m.lbits, errors.ErrUnsupported)
	}
	m.total = m.size >> m.lbits // i_size may be near 2^63: no rounding overflow
	if m.size&(1<<m.lbits-1) != 0 {
		m.total++
	}
	if m.compact {
		m.ibase = hpos + zMapHeaderSize
		m.init4b = (32 - m.ibase%32) / 4
		if m.init4b == 8 {
			m.init4b = 0
		}
		if m.advise&zAdviseCompacted2B != 0 && m.init4b < m.total {
			if m.lbits != 12 {
				return nil, fmt.Errorf("inode %d: 2-byte indexes with lcluster 2^%d: %w", in.nid, m.lbits, errors.ErrUnsupported)
			}
			m.c2b = (m.total - m.init4b) / 16 * 16
		}
	} else {
		m.ibase = hpos + zMapHeaderSize + 8
	}
	if m.inline && m.total > 0 {
		// The inline pcluster follows the last lcluster's record
		// (z_idataoff = nextpackoff after loading it).
		r, err := m.load(m.total - 1)
		if err != nil {
			return nil, err
		}
		m.idataOff = r.next
		head, _, err := m.head(m.total-1, r, (m.size-1)&(1<<m.lbits-1))
		if err != nil {
			return nil, err
		}
		m.tailHead = head
		if m.idataLen == 0 || m.idataOff&(f.bs-1)+m.idataLen > f.bs {
			return nil, corruptf("inode %d: inline pcluster of %d bytes at %d crosses a block", in.nid, m.idataLen, m.idataOff)
		}
	}
	return m, nil
}

func (m *zmapper) corrupt(format string, args ...any) error {
	return corruptf("inode %d: %s", m.nid, fmt.Sprintf(format, args...))
}

// load reads the record of lcluster lcn.
func (m *zmapper) load(lcn int64) (zrecord, error) {
	if lcn < 0 || lcn >= m.total {
		return zrecord{}, m.corrupt("lcluster %d out of range (%d)", lcn, m.total)
	}
	if !m.compact {
		return m.loadFull(lcn)
	}
	return m.loadCompact(lcn)
}

func (m *zmapper) loadFull(lcn int64) (zrecord, error) {
	pos := m.ibase + lcn*zFullIndexSize
	var b [zFullIndexSize]byte
	if err := m.f.readSmall(b[:], pos); err != nil {
		return zrecord{}, withContext(err, "inode %d: lcluster %d", m.nid, lcn)
	}
	le := binary.LittleEndian
	r := zrecord{typ: uint8(le.Uint16(b[0:]) & 3), next: pos + zFullIndexSize}
	if r.typ == zTypeNonhead {
		r.clusterofs = 1 << m.lbits
		d0 := le.Uint16(b[4:])
		if d0&zD0Cblkcnt != 0 {
			if m.advise&(zAdviseBigPcluster1|zAdviseBigPcluster2) == 0 {
				return zrecord{}, m.corrupt("lcluster %d: block count without big pclusters", lcn)
			}
			r.cblk = uint32(d0 &^ zD0Cblkcnt)
			d0 = 1
		}
		r.d0, r.d1 = int64(d0), int64(le.Uint16(b[6:]))
		return r, nil
	}
	r.clusterofs = int64(le.Uint16(b[2:]))
	if r.clusterofs >= 1<<m.lbits {
		return zrecord{}, m.corrupt("lcluster %d: clusterofs %d too large", lcn, r.clusterofs)
	}
	r.pblk = int64(le.Uint32(b[4:]))
	return r, nil
}

func (m *zmapper) loadCompact(lcn int64) (zrecord, error) {
	pos := m.ibase
	shift := int64(2) // log2 of bytes per record, amortized
	switch {
	case lcn < m.init4b:
	case lcn < m.init4b+m.c2b:
		pos += m.init4b * 4
		lcn -= m.init4b
		shift = 1
	default:
		pos += m.init4b*4 + m.c2b*2
		lcn -= m.init4b + m.c2b
	}
	pos += lcn << shift
	vcnt := 2
	if shift == 1 {
		vcnt = 16
	}
	packSize := int64(vcnt) << shift
	base := pos &^ (packSize - 1)
	var buf [32]byte
	pack := buf[:packSize]
	if err := m.f.readSmall(pack, base); err != nil {
		return zrecord{}, withContext(err, "inode %d: lcluster index pack at %d", m.nid, base)
	}
	return m.unpack(pack, int((pos-base)>>shift), vcnt, base+packSize)
}

// unpack decodes entry i of a compacted pack (unpack_compacted_index).
func (m *zmapper) unpack(pack []byte, i, vcnt int, next int64) (zrecord, error) {
	lobits := m.lbits
	encodebits := (len(pack) - 4) * 8 / vcnt
	big := m.advise&zAdviseBigPcluster1 != 0
	decode := func(j int) (uint32, uint8) {
		bit := encodebits * j
		v := binary.LittleEndian.Uint32(pack[bit/8:]) >> (bit % 8)
		return v & (1<<lobits - 1), uint8(v>>lobits) & 3
	}
	lo, typ := decode(i)
	r := zrecord{typ: typ, next: next}
	if typ == zTypeNonhead {
		r.clusterofs = 1 << m.lbits
		// delta[1]: count NONHEAD entries to the end of the pack, plus
		// the last entry's stored distance.
		d1 := int64(0)
		for j := i; j < vcnt; j++ {
			l, t := decode(j)
			if t != zTypeNonhead {
				break
			}
			d1++
			if j == vcnt-1 && l&zD0Cblkcnt == 0 {
				d1 += int64(l) - 1
			}
		}
		r.d1 = d1
		if lo&zD0Cblkcnt != 0 {
			if !big {
				return zrecord{}, m.corrupt("block count in compacted index without big pclusters")
			}
			r.cblk = lo &^ zD0Cblkcnt
			r.d0 = 1
			return r, nil
		}
		if i+1 != vcnt {
			r.d0 = int64(lo)
			return r, nil
		}
		// The last entry of a pack stores delta[1]; delta[0] follows
		// from the entry before it.
		plo, ptyp := decode(i - 1)
		switch {
		case ptyp != zTypeNonhead:
			plo = 0
		case plo&zD0Cblkcnt != 0:
			plo = 1
		}
		r.d0 = int64(plo) + 1
		return r, nil
	}
	r.clusterofs = int64(lo)
	if r.clusterofs >= 1<<m.lbits {
		return zrecord{}, m.corrupt("clusterofs %d too large", r.clusterofs)
	}
	// The head's block: the pack's base plus the blocks of the pclusters
	// accounted for before it in the pack.
	nblk := int64(0)
	if !big {
		nblk = 1
		for j := i; j > 0; {
			j--
			l, t := decode(j)
			if t == zTypeNonhead {
				j -= int(l)
			}
			if j >= 0 {
				nblk++
			}
		}
	} else {
		for j := i; j > 0; {
			j--
			l, t := decode(j)
			if t == zTypeNonhead {
				if l&zD0Cblkcnt != 0 {
					j--
					nblk += int64(l &^ zD0Cblkcnt)
					continue
				}
				if l <= 1 {
					return zrecord{}, m.corrupt("compacted NONHEAD with delta 1 but no block count")
				}
				j -= int(l) - 2
				continue
			}
			nblk++
		}
	}
	r.pblk = int64(binary.LittleEndian.Uint32(pack[len(pack)-4:])) + nblk
	return r, nil
}

// head finds the head lcluster of the extent holding offset endoff of
// lcluster lcn, whose record is r, and returns it with its record.
func (m *zmapper) head(lcn int64, r zrecord, endoff int64) (int64, zrecord, error) {
	dist := int64(0)
	switch r.typ {
	case zTypeNonhead:
		dist = r.d0
	default:
		if endoff >= r.clusterofs {
			return lcn, r, nil
		}
		dist = 1 // the bytes before clusterofs end the previous extent
	}
	for range zMaxLookback {
		if dist <= 0 || dist > lcn {
			return 0, zrecord{}, m.corrupt("bad lookback distance %d at lcluster %d", dist, lcn)
		}
		lcn -= dist
		var err error
		if r, err = m.load(lcn); err != nil {
			return 0, zrecord{}, err
		}
		if r.typ != zTypeNonhead {
			return lcn, r, nil
		}
		dist = r.d0
	}
	return 0, zrecord{}, m.corrupt("lookback longer than %d steps", zMaxLookback)
}

// mapExtent maps off to the extent holding it.
func (m *zmapper) mapExtent(off int64) (extent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.last; l.length > 0 && off >= l.off && off-l.off < l.length {
		return l, nil
	}
	e, err := m.mapSlow(off)
	if err != nil {
		return extent{}, err
	}
	m.last = e
	return e, nil
}

func (m *zmapper) mapSlow(off int64) (extent, error) {
	if off < 0 || off >= m.size {
		return extent{}, m.corrupt("offset %d outside the file (%d bytes)", off, m.size)
	}
	lmask := int64(1)<<m.lbits - 1
	lcn := off >> m.lbits
	r, err := m.load(lcn)
	if err != nil {
		return extent{}, err
	}
	hl, h, err := m.head(lcn, r, off&lmask)
	if err != nil {
		return extent{}, err
	}
	la := hl<<m.lbits | h.clusterofs
	// The extent ends where the next head's extent starts, or at the end
	// of the file.
	end := m.size
	limit := hl + (zPclusterMaxDSize >> m.lbits) + 2
	for l := hl + 1; l < m.total; l++ {
		if l > limit {
			return extent{}, m.corrupt("extent at %d longer than %d bytes", la, zPclusterMaxDSize)
		}
		nr, err := m.load(l)
		if err != nil {
			return extent{}, err
		}
		if nr.typ != zTypeNonhead {
			end = min(l<<m.lbits|nr.clusterofs, m.size)
			break
		}
	}
	if la > off || end <= off {
		return extent{}, m.corrupt("offset %d not inside its extent [%d, %d)", off, la, end)
	}
	e := extent{off: la, length: end - la}
	if e.length > zPclusterMaxDSize {
		return extent{}, m.corrupt("extent at %d decodes to %d bytes, more than %d", la, e.length, zPclusterMaxDSize)
	}
	if m.inline && hl == m.tailHead {
		e.phys, e.plen = m.idataOff, m.idataLen
	} else {
		e.phys = h.pblk << m.f.blkBits
		if e.plen, err = m.compressedLen(hl, h); err != nil {
			return extent{}, err
		}
	}
	switch h.typ {
	case zTypePlain:
		e.enc = encShifted
		if m.advise&zAdviseInterlaced != 0 {
			e.enc = encInterlaced
		}
		if e.length > e.plen {
			return extent{}, m.corrupt("plain extent at %d of %d bytes in a %d-byte pcluster", la, e.length, e.plen)
		}
	case zTypeHead1, zTypeHead2:
		alg := m.algs[0]
		if h.typ == zTypeHead2 {
			alg = m.algs[1]
		}
		if alg != zAlgLZ4 {
			return extent{}, fmt.Errorf("inode %d: compression algorithm %d (only lz4 is supported): %w", m.nid, alg, errors.ErrUnsupported)
		}
		e.enc = encLZ4
	}
	if e.phys < 0 || e.phys > m.f.size || e.plen > m.f.size-e.phys {
		return extent{}, m.corrupt("pcluster of %d bytes at offset %d beyond end of image", e.plen, e.phys)
	}
	return e, nil
}

// compressedLen is the size of the pcluster of the extent headed by
// lcluster hl (z_erofs_get_extent_compressedlen).
func (m *zmapper) compressedLen(hl int64, h zrecord) (int64, error) {
	one := int64(1) << m.lbits
	switch {
	case h.typ == zTypePlain,
		h.typ == zTypeHead1 && m.advise&zAdviseBigPcluster1 == 0,
		h.typ == zTypeHead2 && m.advise&zAdviseBigPcluster2 == 0:
		return one, nil
	}
	if hl+1 >= m.total {
		return one, nil
	}
	r, err := m.load(hl + 1)
	if err != nil {
		return 0, err
	}
	if r.typ != zTypeNonhead {
		return one, nil
	}
	if r.d0 != 1 || r.cblk == 0 {
		return 0, m.corrupt("no pcluster block count after head lcluster %d", hl)
	}
	n := int64(r.cblk) << m.f.blkBits
	if n > zPclusterMaxSize {
		return 0, fmt.Errorf("inode %d: pcluster of %d bytes: %w", m.nid, n, errors.ErrUnsupported)
	}
	return n, nil
}

// decodeExtent returns the decoded bytes of extent e of inode nid: from
// the FS's small cache, or decoded now. The result must not be modified.
func (f *FS) decodeExtent(nid uint64, e extent) ([]byte, error) {
	key := zcacheKey{nid: nid, off: e.off}
	if b := f.zcache.get(key); b != nil && int64(len(b)) == e.length {
		return b, nil
	}
	src := make([]byte, e.plen) // at most zPclusterMaxSize
	if err := f.readFull(src, e.phys); err != nil {
		return nil, withContext(err, "inode %d: pcluster at %d", nid, e.phys)
	}
	out := make([]byte, e.length) // at most zPclusterMaxDSize
	switch e.enc {
	case encShifted:
		copy(out, src)
	case encInterlaced:
		// The first bytes, up to the block boundary, sit at the end
		// of the pcluster; the rest start it.
		cur := min(f.bs-e.off&(f.bs-1), e.length)
		copy(out, src[e.plen-cur:])
		copy(out[cur:], src)
	case encLZ4:
		if f.sb.FeatureIncompat&featureIncompatZeroPadding != 0 {
			// 0PADDING: the data ends the pcluster; zeros in its first
			// block come before it.
			first := min(e.plen, f.bs-e.phys&(f.bs-1))
			skip := 0
			for skip < int(first) && src[skip] == 0 {
				skip++
			}
			if skip == int(first) {
				return nil, corruptf("inode %d: pcluster at %d has no data in its first block", nid, e.phys)
			}
			n, err := lz4.UncompressBlock(src[skip:], out)
			if err != nil || int64(n) != e.length {
				return nil, corruptf("inode %d: lz4 pcluster at %d decodes to %d of %d bytes: %v", nid, e.phys, n, e.length, err)
			}
		} else {
			// Without it the data starts the pcluster and may be
			// followed by anything: decode until the extent is full.
			if err := lz4DecodePrefix(src, out); err != nil {
				return nil, corruptf("inode %d: lz4 pcluster at %d: %v", nid, e.phys, err)
			}
		}
	default:
		return nil, fmt.Errorf("inode %d: unknown extent encoding %d", nid, e.enc)
	}
	f.zcache.put(key, out)
	return out, nil
}

// lz4DecodePrefix decodes LZ4 block sequences from src until dst is full
// (what Linux's LZ4_decompress_safe_partial does for pclusters written
// without zero padding), and fails if src ends or breaks the format first.
func lz4DecodePrefix(src, dst []byte) error {
	ip, op := 0, 0
	length := func(n int) (int, error) {
		if n != 15 {
			return n, nil
		}
		for {
			if ip >= len(src) {
				return 0, errors.New("truncated length")
			}
			b := src[ip]
			ip++
			n += int(b) // at most 255 per input byte: no overflow
			if b != 255 {
				return n, nil
			}
		}
	}
	for op < len(dst) {
		if ip >= len(src) {
			return errors.New("input ends early")
		}
		token := src[ip]
		ip++
		lit, err := length(int(token >> 4))
		if err != nil {
			return err
		}
		if lit > len(src)-ip {
			return errors.New("literals beyond the input")
		}
		// The last sequence may run past the extent: keep what fits.
		n := copy(dst[op:], src[ip:ip+lit])
		ip += lit
		op += n
		if op == len(dst) {
			return nil
		}
		if len(src)-ip < 2 {
			return errors.New("input ends early")
		}
		offset := int(binary.LittleEndian.Uint16(src[ip:]))
		ip += 2
		if offset == 0 || offset > op {
			return fmt.Errorf("bad match offset %d at output %d", offset, op)
		}
		ml, err := length(int(token & 15))
		if err != nil {
			return err
		}
		ml += lz4MinMatch
		for k := 0; k < ml && op < len(dst); k++ {
			dst[op] = dst[op-offset]
			op++
		}
	}
	return nil
}

// zcacheKey names a decoded extent.
type zcacheKey struct {
	nid uint64
	off int64
}

// zcache keeps the last few decoded extents: reads of a compressed file
// come in pieces smaller than an extent, and each extent must be decoded
// whole.
type zcache struct {
	mu   sync.Mutex
	keys [zCacheSlots]zcacheKey
	vals [zCacheSlots][]byte
	next int
}

func (c *zcache) get(k zcacheKey) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.keys {
		if c.vals[i] != nil && c.keys[i] == k {
			return c.vals[i]
		}
	}
	return nil
}

func (c *zcache) put(k zcacheKey, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys[c.next], c.vals[c.next] = k, b
	c.next = (c.next + 1) % zCacheSlots
}

package erofs

import (
	"encoding/binary"
	"fmt"
)

// This file writes the indexes of compressed inodes: the z_erofs_map_header
// and one record per logical cluster (lcluster, one block here) saying how
// the file's extents fall on lclusters. Linux decodes them in
// fs/erofs/zmap.c; the rules below are the ones it relies on.
//
// Each lcluster whose range holds the start of an extent is a HEAD (HEAD1:
// LZ4; PLAIN: stored uncompressed) with the start's offset in the lcluster
// (clusterofs) and the pcluster's block address. Every other lcluster is a
// NONHEAD with delta[0], the distance back to its extent's head lcluster,
// and delta[1], the distance on to the next head (or past the end). So no
// two extents may start in one lcluster: compressed extents are longer than
// a block and plain ones end on an lcluster boundary. With big pclusters,
// the first NONHEAD after a compressed head holds the pcluster's block
// count instead of delta[0] (Z_EROFS_LI_D0_CBLKCNT); a head followed by a
// head is a one-block pcluster.

// zlcluster is one lcluster's record before encoding.
type zlcluster struct {
	typ uint8
	lo  uint16 // heads: clusterofs; NONHEAD: delta[0], or the block count with zD0Cblkcnt
	d1  uint16 // NONHEAD: delta[1]
	// pblk is the block address of the pcluster of the extent this
	// lcluster's record belongs to (for a head, the extent it starts).
	pblk uint32
	// anchor marks the record that accounts for its pcluster's blocks in
	// compacted packs: the CBLKCNT record of a big pcluster, else the
	// head. A pack's base address is that of the first pcluster whose
	// head or anchor is in the pack; each head's address is the base plus
	// the blocks of the pclusters anchored before it in the pack.
	anchor bool
	nblk   uint16 // blocks of the anchored pcluster
}

// zLclusters computes the record of every lcluster of a file of size bytes
// from its extents.
func zLclusters(exts []zext, size uint64, bs uint64, big bool) ([]zlcluster, error) {
	total := (size + bs - 1) / bs
	out := make([]zlcluster, total)
	e := 0
	headLcn := func(i int) uint64 { return exts[i].la / bs }
	for lcn := uint64(0); lcn < total; lcn++ {
		start, end := lcn*bs, (lcn+1)*bs
		for e+1 < len(exts) && exts[e+1].la <= start {
			e++
		}
		cur := exts[e]
		startsHere := -1
		if cur.la == start {
			startsHere = e
		} else if e+1 < len(exts) && exts[e+1].la < end {
			startsHere = e + 1
			if e+2 < len(exts) && exts[e+2].la < end {
				return nil, fmt.Errorf("erofs: internal error: two extents start in lcluster %d", lcn)
			}
		}
		if startsHere >= 0 {
			x := exts[startsHere]
			r := zlcluster{typ: zTypeHead1, lo: uint16(x.la - start), pblk: x.blkaddr, nblk: x.nblk}
			if x.plain {
				r.typ = zTypePlain
			}
			// A head anchors its pcluster unless a CBLKCNT record does.
			r.anchor = x.plain || !big || extEnd(exts, startsHere, size) < (lcn+2)*bs
			out[lcn] = r
			continue
		}
		d0 := lcn - headLcn(e)
		next := total
		if e+1 < len(exts) {
			next = headLcn(e + 1)
		}
		if d0 == 0 || d0 >= zD0Cblkcnt || next-lcn >= zD0Cblkcnt || cur.plain {
			return nil, fmt.Errorf("erofs: internal error: lcluster %d: bad extent layout (delta %d, %d)", lcn, d0, next-lcn)
		}
		r := zlcluster{typ: zTypeNonhead, lo: uint16(d0), d1: uint16(next - lcn), pblk: cur.blkaddr, nblk: cur.nblk}
		if big && d0 == 1 {
			r.lo = zD0Cblkcnt | cur.nblk
			r.anchor = true
		}
		out[lcn] = r
	}
	return out, nil
}

// extEnd is where extent i ends: the next one's start or the file's end.
func extEnd(exts []zext, i int, size uint64) uint64 {
	if i+1 < len(exts) {
		return exts[i+1].la
	}
	return size
}

// zIndexStart is the offset of the map header from the inode's start (an
// inode starts 32-byte aligned): after the inode and its xattrs, 8-byte
// aligned, as zmap.c computes it.
func zIndexStart(ibody int) int { return int(align(int64(ibody), 8)) }

// zCompactSplit is how compacted indexes of total lclusters divide, given
// the map header's offset from a 32-byte aligned inode: 4-byte packs up to
// 32-byte alignment, 2-byte packs of 16 in the middle, 4-byte packs at the
// end (compacted_load_cluster_from_disk in zmap.c).
func zCompactSplit(hdr int, total int) (initial, twoB, rest int) {
	ebase := hdr + zMapHeaderSize
	initial = (32 - ebase%32) / 4
	if initial == 8 {
		initial = 0
	}
	if initial >= total {
		return total, 0, 0
	}
	twoB = (total - initial) / 16 * 16
	return initial, twoB, total - initial - twoB
}

// zIndexSize is the size of the map header and indexes of a file of size
// bytes whose map header starts hdr bytes after its 32-byte aligned inode.
func zIndexSize(hdr int, size, bs uint64, compact bool) int {
	total := int((size + bs - 1) / bs)
	if !compact {
		return zMapHeaderSize + 8 + total*zFullIndexSize
	}
	initial, twoB, rest := zCompactSplit(hdr, total)
	return zMapHeaderSize + (initial+1)/2*8 + twoB*2 + (rest+1)/2*8
}

// zIndexBound bounds zIndexSize whatever the inode and xattr sizes.
func zIndexBound(size, bs uint64, compact bool) int {
	return 4 + max(zIndexSize(0, size, bs, compact), zIndexSize(8, size, bs, compact),
		zIndexSize(16, size, bs, compact), zIndexSize(24, size, bs, compact))
}

// zAdvise is the h_advise of a compressed inode written with cfg.
func zAdvise(cfg *compressConfig, bs int64) uint16 {
	var a uint16
	if cfg.compact {
		a |= zAdviseCompacted2B
	}
	if cfg.big(bs) {
		// Compacted indexes need both bits alike (zmap.c checks).
		a |= zAdviseBigPcluster1 | zAdviseBigPcluster2
	}
	return a
}

// appendZIndexes appends the map header and the indexes of a compressed
// inode to b, which holds the inode and its xattrs from its (32-byte
// aligned) start.
func appendZIndexes(b []byte, z *zinfo, size uint64, cfg *compressConfig, bs int64) ([]byte, error) {
	big := cfg.big(bs)
	lcs, err := zLclusters(z.exts, size, uint64(bs), big)
	if err != nil {
		return nil, err
	}
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	hdr := len(b)
	// z_erofs_map_header: 4 reserved bytes (fragment offset, inline
	// data size: unused here), h_advise, h_algorithmtype (HEAD1: lz4),
	// h_clusterbits (lcluster = block: 0).
	b = append(b, 0, 0, 0, 0)
	b = binary.LittleEndian.AppendUint16(b, zAdvise(cfg, bs))
	b = append(b, zAlgLZ4, 0)
	if !cfg.compact {
		b = append(b, make([]byte, 8)...) // Z_EROFS_FULL_INDEX_ALIGN's padding
		for _, r := range lcs {
			b = binary.LittleEndian.AppendUint16(b, uint16(r.typ))
			if r.typ == zTypeNonhead {
				b = binary.LittleEndian.AppendUint16(b, 0)
				b = binary.LittleEndian.AppendUint16(b, r.lo)
				b = binary.LittleEndian.AppendUint16(b, r.d1)
			} else {
				b = binary.LittleEndian.AppendUint16(b, r.lo)
				b = binary.LittleEndian.AppendUint32(b, r.pblk)
			}
		}
		return b, nil
	}
	initial, twoB, _ := zCompactSplit(hdr, len(lcs))
	b = appendPacks(b, lcs[:initial], 2, big)
	b = appendPacks(b, lcs[initial:initial+twoB], 16, big)
	b = appendPacks(b, lcs[initial+twoB:], 2, big)
	if want := hdr + zIndexSize(hdr, size, uint64(bs), true); len(b) != want {
		return nil, fmt.Errorf("erofs: internal error: compacted indexes of %d bytes, want %d", len(b)-hdr, want-hdr)
	}
	return b, nil
}

// appendPacks encodes records in packs of vcnt (2: 8-byte packs of 16-bit
// entries; 16: 32-byte packs of 14-bit entries). An entry is the 12-bit lo
// (lclusterbits wide) then the 2-bit type; a pack ends with a 32-bit block
// address from which the heads' addresses are counted (unpack_compacted_index
// in zmap.c). A NONHEAD last in its pack stores delta[1]: its delta[0]
// follows from the entry before it.
func appendPacks(b []byte, lcs []zlcluster, vcnt int, big bool) []byte {
	packSize := 8
	if vcnt == 16 {
		packSize = 32
	}
	encodebits := (packSize - 4) * 8 / vcnt
	for start := 0; start < len(lcs); start += vcnt {
		pack := make([]byte, packSize)
		var base uint32
		found := false
		for i := range vcnt {
			j := start + i
			var v uint32
			if j >= len(lcs) {
				// Past the last lcluster: a head, so that scans for
				// the next head (delta[1] lookahead) stop here.
				v = zTypeHead1 << 12
			} else {
				r := lcs[j]
				lo := uint32(r.lo)
				if r.typ == zTypeNonhead && lo&zD0Cblkcnt == 0 && i == vcnt-1 {
					lo = uint32(r.d1)
				}
				v = lo | uint32(r.typ)<<12
				// base: the block of the first pcluster with its head
				// or its block count in this pack.
				if !found && (r.anchor || r.typ != zTypeNonhead) {
					found = true
					base = r.pblk
					if !big {
						// Without big pclusters Linux counts one block
						// per head from base+1.
						base--
					}
				}
			}
			bit := encodebits * i
			for k := 0; k < 14 && v != 0; k++ {
				if v&(1<<k) != 0 {
					pack[(bit+k)/8] |= 1 << ((bit + k) % 8)
				}
			}
		}
		binary.LittleEndian.PutUint32(pack[packSize-4:], base)
		b = append(b, pack...)
	}
	return b
}

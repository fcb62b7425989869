package erofs

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/pierrec/lz4/v4"
)

// Compression algorithms and index layouts for WriterOptions.
const (
	CompressionNone  = ""
	CompressionLZ4   = "lz4"
	CompressionLZ4HC = "lz4hc"

	// IndexCompact writes EROFS_INODE_COMPRESSED_COMPACT indexes: 2 bytes
	// per logical cluster in the middle of a file, 4 at its ends.
	IndexCompact = "compact"
	// IndexFull writes EROFS_INODE_COMPRESSED_FULL indexes: 8 bytes per
	// logical cluster, the layout of the first EROFS releases.
	IndexFull = "full"

	// DefaultLZ4HCLevel is the lz4hc level used when CompressionLevel is 0,
	// the default of mkfs.erofs and of the lz4 tool.
	DefaultLZ4HCLevel = 9

	// MaxPclusterSize is the largest WriterOptions.PclusterSize, 1 MiB
	// (Z_EROFS_PCLUSTER_MAX_SIZE, the most Linux decompresses at once).
	MaxPclusterSize = zPclusterMaxSize
)

// compressConfig is the validated compression part of WriterOptions.
type compressConfig struct {
	alg     string // CompressionLZ4 or CompressionLZ4HC
	level   int    // lz4hc level, 1..12
	pcap    int    // pcluster size in bytes, a multiple of the block size
	compact bool   // compact indexes (else full)
}

// big reports whether pclusters may span several blocks, which needs the
// big pcluster feature (and with it the compression configs record).
func (c *compressConfig) big(bs int64) bool { return int64(c.pcap) > bs }

// parseCompression validates the compression options. It returns nil when
// compression is off.
func parseCompression(o WriterOptions, bs int) (*compressConfig, error) {
	alg := strings.ToLower(o.Compression)
	if alg == CompressionNone {
		if o.CompressionLevel != 0 || o.PclusterSize != 0 || o.CompressIndex != "" {
			return nil, errors.New("erofs: CompressionLevel, PclusterSize and CompressIndex need Compression (lz4 or lz4hc)")
		}
		return nil, nil
	}
	c := &compressConfig{alg: alg}
	switch alg {
	case CompressionLZ4:
		if o.CompressionLevel != 0 {
			return nil, fmt.Errorf("erofs: lz4 has no compression levels (got %d); use lz4hc for levels 1-12", o.CompressionLevel)
		}
	case CompressionLZ4HC:
		c.level = o.CompressionLevel
		if c.level == 0 {
			c.level = DefaultLZ4HCLevel
		}
		if c.level < 1 || c.level > 12 {
			return nil, fmt.Errorf("erofs: lz4hc level %d out of range 1-12", o.CompressionLevel)
		}
	default:
		return nil, fmt.Errorf("erofs: unknown compression %q (use lz4 or lz4hc)", o.Compression)
	}
	if bs != 4096 {
		// Linux 6.1 maps compressed files only with 4 KiB logical clusters
		// and blocks (EROFS_BLKSIZ is PAGE_SIZE there).
		return nil, fmt.Errorf("erofs: compression needs a 4096-byte block size, not %d", bs)
	}
	c.pcap = o.PclusterSize
	if c.pcap == 0 {
		c.pcap = bs
	}
	if c.pcap < bs || c.pcap%bs != 0 || c.pcap > zPclusterMaxSize {
		return nil, fmt.Errorf("erofs: pcluster size %d must be a multiple of the block size %d, at most %d", o.PclusterSize, bs, zPclusterMaxSize)
	}
	switch strings.ToLower(o.CompressIndex) {
	case "", IndexCompact:
		c.compact = true
	case IndexFull:
	default:
		return nil, fmt.Errorf("erofs: unknown index layout %q (use compact or full)", o.CompressIndex)
	}
	return c, nil
}

// zext is one extent of a compressed file: the file bytes from la up to
// the next extent's la (or the end of the file), stored in nblk blocks from
// blkaddr, LZ4-compressed or, for plain extents, as they are.
type zext struct {
	la      uint64
	blkaddr uint32
	nblk    uint16
	plain   bool
}

// zinfo is what a compressed inode needs at Close to write its indexes.
type zinfo struct {
	exts []zext
}

// lz4 sequence format limits (lz4_Block_format.md): the last sequence holds
// only literals, the last lz4LastLiterals bytes of a block are literals and
// the last match starts at least lz4MFLimit bytes before the end.
const (
	lz4MinMatch     = 4
	lz4LastLiterals = 5
	lz4MFLimit      = 12
)

// zwriter compresses files, one at a time: the Writer has one for files
// larger than the window, each compression worker one for the others. Its
// buffers are reused from file to file.
type zwriter struct {
	cfg  *compressConfig
	bs   int
	fast lz4.Compressor
	hc   *lazyHC
	// win is the input window: file bytes not yet placed in an extent,
	// win[lo:hi].
	win    []byte
	lo, hi int
	enc    []byte // compressor output for a whole window guess
	blk    []byte // the pcluster being assembled
	zeros  []byte // a pcluster of zeros, for padding
	// ratio is input bytes per output byte of the last compressed
	// pcluster, to guess how much input the next one takes.
	ratio float64
}

// zWindow is the most input one extent may take, and the largest file
// compressed whole by a worker: a larger window lets very compressible data
// fill a pcluster and more files use the other cores, but every byte of it
// is held in memory, and an extent must stay under 2048 logical clusters
// (the 11 bits of a compacted index's delta) and Z_EROFS_PCLUSTER_MAX_DSIZE.
func zWindow(pcap, bs int) int {
	return min(max(4<<20, 16*pcap), 2047*bs)
}

// newZwriter returns a zwriter; window says whether it streams files
// through a window of its own (workers get each file whole).
func newZwriter(cfg *compressConfig, bs int, window bool) *zwriter {
	z := &zwriter{cfg: cfg, bs: bs, ratio: 3}
	if cfg.alg == CompressionLZ4HC {
		// lz4hc level L searches 2^(L-1) hash chain candidates, like
		// the reference lz4hc's hash-chain levels (level 9: 256).
		z.hc = &lazyHC{depth: 1 << (cfg.level - 1)}
	}
	n := zWindow(cfg.pcap, bs)
	if window {
		z.win = make([]byte, n)
	}
	z.enc = make([]byte, lz4.CompressBlockBound(n))
	z.blk = make([]byte, 0, cfg.pcap)
	z.zeros = make([]byte, cfg.pcap)
	return z
}

func (z *zwriter) compress(src, dst []byte) (int, error) {
	if z.cfg.alg == CompressionLZ4HC {
		return z.hc.compress(src, dst)
	}
	return z.fast.CompressBlock(src, dst)
}

// fit compresses the longest prefix of d whose LZ4 block fits in room bytes,
// as the kernel expects a pcluster to be filled (fixed-output-size
// compression, LZ4_compress_destSize in the reference library, which
// neither pierrec/lz4 nor lazyHC has). It returns the prefix length and
// the block, which stays valid until the next call.
//
// The fitting loop compresses a guess of the input that fills room bytes
// (from the last pcluster's ratio, with a margin), growing the guess while
// everything fits and input remains. Once the output overflows, it does
// not search for the input length by recompressing: an LZ4 block is a
// list of sequences (literals, then a match), so it walks the sequences
// of that one output and cuts after the sequence that, followed by a final
// run of literals filling the rest of room, covers the most input. The
// kept prefix is valid on its own: its matches point backwards, and the
// final literal run keeps the format's end rules (the last 5 bytes are
// literals; the last match starts 12 bytes or more before the end).
func (z *zwriter) fit(d []byte, room int) (int, []byte, error) {
	if lz4.CompressBlockBound(len(d)) <= room {
		n, err := z.compress(d, z.enc)
		if err != nil || n == 0 {
			return 0, nil, fmt.Errorf("lz4 compression failed: %v", err)
		}
		return len(d), z.enc[:n], nil
	}
	w := min(len(d), max(room+room/8, int(float64(room)*z.ratio*1.15)))
	for {
		n, err := z.compress(d[:w], z.enc)
		if err != nil || n == 0 {
			return 0, nil, fmt.Errorf("lz4 compression failed: %v", err)
		}
		if n <= room {
			if w == len(d) {
				return w, z.enc[:n], nil
			}
			// Everything fit: guess again with more input, in
			// proportion to the room left.
			next := int(float64(w) * float64(room) / float64(n) * 1.15)
			w = min(len(d), max(next, w+w/4))
			continue
		}
		return z.cut(d, z.enc[:n], room)
	}
}

// cut keeps the sequences of enc (the LZ4 block of a prefix of d) that,
// followed by one run of literals, cover the most of d in at most room
// bytes, and returns the covered length and the block built in z.blk.
func (z *zwriter) cut(d, enc []byte, room int) (int, []byte, error) {
	bestL, bestB, bestP := 0, 0, 0
	ip, p, lastMatch := 0, 0, 0
	for {
		// Candidate: cut before the sequence at ip.
		if budget := room - ip - 1; budget > 0 {
			m := min(maxLiterals(budget), len(d)-p)
			minM := 1
			if ip > 0 {
				minM = max(lz4LastLiterals, lz4MFLimit-lastMatch)
			}
			if m >= minM && p+m > bestL {
				bestL, bestB, bestP = p+m, ip, p
			}
		}
		if ip >= len(enc) || ip >= room {
			break
		}
		token := enc[ip]
		ip++
		lit := int(token >> 4)
		if lit == 15 {
			for ip < len(enc) {
				b := enc[ip]
				ip++
				lit += int(b)
				if b != 255 {
					break
				}
			}
		}
		ip += lit
		p += lit
		if ip+2 > len(enc) {
			break // the last sequence: literals only
		}
		ip += 2
		ml := int(token & 15)
		if ml == 15 {
			for ip < len(enc) {
				b := enc[ip]
				ip++
				ml += int(b)
				if b != 255 {
					break
				}
			}
		}
		ml += lz4MinMatch
		p += ml
		lastMatch = ml
		if p > len(d) {
			return 0, nil, errors.New("lz4: compressor output covers more than its input")
		}
	}
	if bestL == 0 {
		return 0, nil, errors.New("lz4: no prefix fits the pcluster")
	}
	m := bestL - bestP
	b := append(z.blk[:0], enc[:bestB]...)
	if m < 15 {
		b = append(b, byte(m<<4))
	} else {
		b = append(b, 0xF0)
		r := m - 15
		for ; r >= 255; r -= 255 {
			b = append(b, 255)
		}
		b = append(b, byte(r))
	}
	b = append(b, d[bestP:bestL]...)
	z.blk = b
	return bestL, b, nil
}

// maxLiterals is the longest literal run whose length bytes and literals
// fit in budget bytes (the token not counted).
func maxLiterals(budget int) int {
	if budget < 15 {
		return max(budget, 0)
	}
	// Each 255 literals past 15 cost one more length byte: start near
	// the answer and settle it.
	m := budget - (budget-15)/256 - 1
	for m+1+litExtra(m+1) <= budget {
		m++
	}
	for m > 0 && m+litExtra(m) > budget {
		m--
	}
	return m
}

// litExtra is how many length bytes follow the token for m literals.
func litExtra(m int) int {
	if m < 15 {
		return 0
	}
	return (m-15)/255 + 1
}

// zpiece is the next extent decided by step.
type zpiece struct {
	n     int    // input bytes the extent covers
	nblk  int    // blocks it takes
	data  []byte // compressed block (placed at the end of nblk blocks), or nil for plain
	plain int    // for a plain run: how many plain extents (1 block each) it holds
}

// step decides how the input at logical offset pos, d (the window: all of
// the rest of the file, or a full window), is stored. Compression is kept
// when it saves at least one block over storing the same bytes plainly,
// mkfs.erofs's rule; otherwise up to one pcluster's worth of plain blocks
// follow, so incompressible data costs one compression attempt per
// pcluster rather than per block.
func (z *zwriter) step(d []byte, pos uint64) (zpiece, error) {
	bs := z.bs
	o := int(pos % uint64(bs))
	if len(d) > bs {
		n, blk, err := z.fit(d, z.cfg.pcap)
		if err != nil {
			return zpiece{}, err
		}
		k := (len(blk) + bs - 1) / bs
		if n > k*bs {
			z.ratio = float64(n) / float64(len(blk))
			return zpiece{n: n, nblk: k, data: blk}, nil
		}
	}
	// Plain: the first extent runs to the next lcluster boundary (so
	// plain extents after it are block aligned), further ones a block
	// each, within one pcluster's worth.
	n := min(bs-o, len(d))
	count := 1
	for count < z.cfg.pcap/bs && n+bs <= len(d) {
		n += bs
		count++
	}
	return zpiece{n: n, nblk: count, plain: count}, nil
}

// fill reads from r until the window holds min(len(win), left) bytes,
// moving the unconsumed bytes to the front first.
func (z *zwriter) fill(r io.Reader, left uint64) error {
	want := int(min(uint64(len(z.win)), left))
	if z.hi-z.lo >= want {
		return nil
	}
	if z.lo > 0 {
		z.hi = copy(z.win, z.win[z.lo:z.hi])
		z.lo = 0
	}
	_, err := io.ReadFull(r, z.win[z.hi:want])
	if err != nil {
		return err
	}
	z.hi = want
	return nil
}

// zresult is how a file's data was stored: its extents, with block
// addresses counted from the file's first block, and how many blocks they
// take.
type zresult struct {
	exts    []zext
	nblocks uint64
	// plainAligned: every extent is a whole plain block in order, so the
	// blocks are exactly a flat file's.
	plainAligned bool
}

// encode stores size bytes, read through the window from r, as pclusters
// handed to emit in order. Block addresses in the result start at 0.
func (z *zwriter) encode(r io.Reader, size uint64, emit func([]byte) error) (zresult, error) {
	bs := uint64(z.bs)
	res := zresult{plainAligned: true}
	blk := uint64(0)
	pad := func(n int) []byte { return z.zeros[:n] }
	// Each file starts from the same guess, so the output does not depend
	// on which files a worker compressed before.
	z.ratio = 3
	for pos := uint64(0); pos < size; {
		if err := z.fill(r, size-pos); err != nil {
			res.nblocks = blk
			return res, shortData(err, size)
		}
		d := z.win[z.lo:z.hi]
		p, err := z.step(d, pos)
		if err != nil {
			res.nblocks = blk
			return res, &zError{fmt.Errorf("erofs: compressing %d bytes at offset %d: %w", len(d), pos, err)}
		}
		if p.data != nil {
			// 0PADDING: the compressed bytes end the pcluster, the
			// zeros before them are what Linux skips to find the start.
			res.exts = append(res.exts, zext{la: pos, blkaddr: uint32(blk), nblk: uint16(p.nblk)})
			res.plainAligned = false
			if err := emit(pad(p.nblk*int(bs) - len(p.data))); err != nil {
				return res, err
			}
			if err := emit(p.data); err != nil {
				return res, err
			}
			blk += uint64(p.nblk)
		} else {
			// Plain extents are stored "shifted": the extent's first
			// byte at the start of its block.
			off := 0
			for range p.plain {
				n := int(bs - (pos+uint64(off))%bs)
				n = min(n, p.n-off)
				if (pos+uint64(off))%bs != 0 {
					res.plainAligned = false
				}
				res.exts = append(res.exts, zext{la: pos + uint64(off), blkaddr: uint32(blk), nblk: 1, plain: true})
				if err := emit(d[off : off+n]); err != nil {
					return res, err
				}
				if n < int(bs) {
					if err := emit(pad(int(bs) - n)); err != nil {
						return res, err
					}
				}
				blk++
				off += n
			}
		}
		z.lo += p.n
		pos += uint64(p.n)
	}
	res.nblocks = blk
	return res, nil
}

// zError is a failure of the compressor itself (not of the input): the
// image cannot be trusted after it.
type zError struct{ err error }

func (e *zError) Error() string { return e.err.Error() }
func (e *zError) Unwrap() error { return e.err }

// decideSmall compresses data, a whole file that fits in the window, into
// stage and reports whether that beats the flat layout: whole blocks and
// an inline tail when it fits next to the inode (with every xattr inline),
// else a last block. Compressed, it must take fewer bytes, counting its
// indexes.
func (z *zwriter) decideSmall(data []byte, xattrs []xattr, stage *[]byte) (zresult, bool, error) {
	own := z.win
	z.win, z.lo, z.hi = data, 0, len(data)
	defer func() { z.win, z.lo, z.hi = own, 0, 0 }()
	*stage = (*stage)[:0]
	res, err := z.encode(nil, uint64(len(data)), func(b []byte) error {
		*stage = append(*stage, b...)
		return nil
	})
	if err != nil {
		return res, false, err
	}
	bs, size := uint64(z.bs), uint64(len(data))
	flat := (size / bs) * bs
	if tail := size % bs; tail > 0 {
		if extendedInodeSize+inlineXattrSize(xattrs)+int(tail) <= z.bs {
			flat += tail
		} else {
			flat += bs
		}
	}
	packed := res.nblocks*bs + uint64(zIndexBound(size, bs, z.cfg.compact))
	return res, packed < flat && !res.plainAligned, nil
}

// writeCompressed stores a regular file of size bytes (more than one
// block) compressed. A file no larger than the input window is read whole
// and compressed by a worker (in parallel with the next files), then
// committed in order: it stays flat (uncompressed, with an inline tail)
// unless compression makes it smaller. A larger file streams through the
// window, each pcluster written as soon as it is decided; if no pcluster
// compressed, its plain blocks are exactly a flat file's blocks and the
// inode becomes flat.
func (w *Writer) writeCompressed(ino *inode, r io.Reader, size uint64) error {
	z := w.z
	if size <= uint64(zWindow(w.zcfg.pcap, int(w.bs))) {
		return w.zpipe.submit(w, ino, r, size, false)
	}
	if err := w.zpipe.drain(w); err != nil {
		return err
	}
	z.lo, z.hi = 0, 0
	start := w.nextBlk
	res, err := z.encode(r, size, w.writeOut)
	w.nextBlk = start + res.nblocks // what was written stays consistent
	if err != nil {
		var ze *zError
		if errors.As(err, &ze) {
			w.err = ze.err
		}
		return err
	}
	if w.nextBlk > 1<<32-1 {
		return fmt.Errorf("erofs: image exceeds the 32-bit block address space")
	}
	w.placeCompressed(ino, size, start, res)
	return nil
}

// placeCompressed records where a compressed file's blocks went.
func (w *Writer) placeCompressed(ino *inode, size, start uint64, res zresult) {
	ino.size = size
	ino.blkaddr = start
	ino.nblocks = res.nblocks
	ino.z = nil
	if res.plainAligned {
		return // a flat file
	}
	for i := range res.exts {
		res.exts[i].blkaddr += uint32(start)
	}
	ino.z = &zinfo{exts: res.exts}
}

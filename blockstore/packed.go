package blockstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"strings"
	"sync"

	"github.com/pierrec/lz4/v4"
)

// CodecLZ4 is the codec of packed chunks: each chunk one LZ4 block (the
// block format, without frame headers), or its raw bytes when LZ4 does
// not make it smaller. LZ4 because a run decodes every chunk it fetches
// while its guest competes for the same cores: it decodes at several
// GB/s, where zstd's better ratio (0.43 against 0.54 on a compiler
// image's touched chunks) costs several times the CPU.
const CodecLZ4 = "lz4"

// Packed describes an image's chunks stored compressed, one after the
// other, in one object: a lazy reader fetches a chunk's stored bytes
// instead of its raw range of the image, and decodes them before it
// checks them against the chunk's sha256. Stored chunks are not trusted
// more than raw ones: what does not decode to the chunk's exact length
// and digest is never served.
type Packed struct {
	// Codec is CodecLZ4.
	Codec string `json:"codec"`
	// Digest is the packed object's "sha256:<64 hex>": its name in
	// storage.
	Digest string `json:"digest"`
	// Sizes holds each chunk's stored length, in order. A length equal
	// to the chunk's own means the chunk is stored raw.
	Sizes []int64 `json:"sizes"`

	// offsets[i] is chunk i's first byte in the packed object; filled
	// by validate.
	offsets []int64
}

// Size is the packed object's length: the sum of the stored lengths.
func (p *Packed) Size() int64 {
	var n int64
	for _, s := range p.Sizes {
		n += s
	}
	return n
}

// validate checks p against the index's chunks and fills the offsets.
func (p *Packed) validate(ix *Index) error {
	if p.Codec != CodecLZ4 {
		return fmt.Errorf("%w: packed chunks' codec %q, want %q", ErrInvalidIndex, p.Codec, CodecLZ4)
	}
	hexDigest, ok := strings.CutPrefix(p.Digest, "sha256:")
	if !ok || !isHexDigest(hexDigest) {
		return fmt.Errorf("%w: packed object digest %q is not sha256:<64 lowercase hex digits>", ErrInvalidIndex, p.Digest)
	}
	if len(p.Sizes) != len(ix.Chunks) {
		return fmt.Errorf("%w: %d packed chunk sizes for %d chunks", ErrInvalidIndex, len(p.Sizes), len(ix.Chunks))
	}
	offsets := make([]int64, len(p.Sizes))
	var off int64
	for i, s := range p.Sizes {
		// Never longer than the chunk: a chunk LZ4 cannot shrink is
		// stored raw, so a stored chunk is at most a chunk in memory.
		if _, length := ix.ChunkRange(i); s <= 0 || s > length {
			return fmt.Errorf("%w: packed chunk %d is %d bytes, want 1..%d (its length)", ErrInvalidIndex, i, s, length)
		}
		offsets[i] = off
		off += s
	}
	p.offsets = offsets
	return nil
}

// PackedRange returns where chunk i's stored bytes are in the packed
// object. It needs a validated index with Packed set.
func (ix *Index) PackedRange(i int) (off, length int64) {
	return ix.Packed.offsets[i], ix.Packed.Sizes[i]
}

// PackChunk returns chunk as it is stored packed: one LZ4 block when that
// is shorter, else chunk itself. buf, when large enough
// (lz4.CompressBlockBound of the chunk's length), holds the block.
func PackChunk(c *lz4.Compressor, chunk, buf []byte) ([]byte, error) {
	if bound := lz4.CompressBlockBound(len(chunk)); len(buf) < bound {
		buf = make([]byte, bound)
	}
	n, err := c.CompressBlock(chunk, buf)
	if err != nil {
		return nil, fmt.Errorf("compressing a chunk: %w", err)
	}
	if n == 0 || n >= len(chunk) {
		return chunk, nil
	}
	return buf[:n], nil
}

// ErrBadPackedChunk is wrapped by the error UnpackChunk returns for stored
// bytes that do not decode to a chunk of the expected length.
var ErrBadPackedChunk = errors.New("packed chunk does not decode")

// UnpackChunk decodes a stored chunk of the codec into a chunk of exactly
// length bytes. Stored bytes as long as the chunk are the chunk itself.
// It never writes or allocates more than length bytes of output, whatever
// stored holds.
func UnpackChunk(codec string, stored []byte, length int64) ([]byte, error) {
	if codec != CodecLZ4 {
		return nil, fmt.Errorf("%w: unknown codec %q", ErrBadPackedChunk, codec)
	}
	if int64(len(stored)) == length {
		return stored, nil
	}
	if int64(len(stored)) > length || length > MaxChunkSize {
		return nil, fmt.Errorf("%w: %d stored bytes for a chunk of %d", ErrBadPackedChunk, len(stored), length)
	}
	out := make([]byte, length)
	n, err := lz4.UncompressBlock(stored, out)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPackedChunk, err)
	}
	if int64(n) != length {
		return nil, fmt.Errorf("%w: %d bytes decoded, want %d", ErrBadPackedChunk, n, length)
	}
	return out, nil
}

// BuildPacked reads the image ix indexes from r and returns its chunks'
// packed description: each chunk compressed, on up to GOMAXPROCS
// goroutines, to learn its stored length and the packed object's digest.
// Each chunk is checked against the index as it is read. The object
// itself is made again, the same bytes, by NewPackedReader.
func BuildPacked(ctx context.Context, r io.ReaderAt, ix *Index) (*Packed, error) {
	p := &Packed{Codec: CodecLZ4, Sizes: make([]int64, len(ix.Chunks))}
	whole := sha256.New()
	// Workers pack chunks in parallel; the digest needs them in order,
	// so each batch is hashed once all its chunks are packed.
	// A batch holds each chunk twice (read, packed): 8 chunks a worker,
	// at most 64 MiB of chunks, at least one a worker.
	workers := max(1, runtime.GOMAXPROCS(0))
	batch := max(workers, min(8*workers, int((64<<20)/ix.ChunkSize)))
	stored := make([][]byte, batch)
	bufs := make([][]byte, batch)
	raws := make([][]byte, batch)
	for i := range batch {
		bufs[i] = make([]byte, lz4.CompressBlockBound(int(ix.ChunkSize)))
		raws[i] = make([]byte, ix.ChunkSize)
	}
	for first := 0; first < len(ix.Chunks); first += batch {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n := min(batch, len(ix.Chunks)-first)
		errs := make([]error, workers)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var c lz4.Compressor
				for k := w; k < n; k += workers {
					s, err := readPacked(r, ix, first+k, &c, raws[k], bufs[k])
					if err != nil {
						errs[w] = err
						return
					}
					stored[k] = s
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		for k := range n {
			p.Sizes[first+k] = int64(len(stored[k]))
			whole.Write(stored[k])
		}
	}
	p.Digest = "sha256:" + hex.EncodeToString(whole.Sum(nil))
	if err := p.validate(ix); err != nil {
		return nil, err
	}
	return p, nil
}

// readPacked reads chunk i of the image into raw, checks it against the
// index, and packs it (into buf, or raw itself).
func readPacked(r io.ReaderAt, ix *Index, i int, c *lz4.Compressor, raw, buf []byte) ([]byte, error) {
	off, length := ix.ChunkRange(i)
	raw = raw[:length]
	if _, err := r.ReadAt(raw, off); err != nil && !(errors.Is(err, io.EOF) && off+length == ix.Size) {
		return nil, fmt.Errorf("reading chunk %d of the image: %w", i, err)
	}
	sum := sha256.Sum256(raw)
	if hex.EncodeToString(sum[:]) != ix.Chunks[i] {
		return nil, fmt.Errorf("chunk %d of the image changed since it was indexed", i)
	}
	return PackChunk(c, raw, buf)
}

// NewPackedReader returns the packed object p describes, made from the
// image in r: each chunk packed again, in order. Its last Read fails
// instead of returning io.EOF when the bytes differ from p (the image
// changed, or the compressor is not deterministic), so an upload of a
// different object than p names never completes.
func NewPackedReader(ctx context.Context, r io.ReaderAt, ix *Index, p *Packed) io.Reader {
	return &packedReader{ctx: ctx, r: r, ix: ix, p: p, whole: sha256.New(),
		raw: make([]byte, ix.ChunkSize), buf: make([]byte, lz4.CompressBlockBound(int(ix.ChunkSize)))}
}

type packedReader struct {
	ctx      context.Context
	r        io.ReaderAt
	ix       *Index
	p        *Packed
	c        lz4.Compressor
	whole    hash.Hash
	raw, buf []byte
	next     int    // the next chunk to pack
	cur      []byte // what is left of the current chunk's stored bytes
	err      error
}

func (pr *packedReader) Read(b []byte) (int, error) {
	if pr.err != nil {
		return 0, pr.err
	}
	for len(pr.cur) == 0 {
		if pr.next == len(pr.ix.Chunks) {
			if got := "sha256:" + hex.EncodeToString(pr.whole.Sum(nil)); got != pr.p.Digest {
				pr.err = fmt.Errorf("the packed chunks came out as %s, not the %s indexed", got, pr.p.Digest)
			} else {
				pr.err = io.EOF
			}
			return 0, pr.err
		}
		if err := pr.ctx.Err(); err != nil {
			pr.err = err
			return 0, err
		}
		s, err := readPacked(pr.r, pr.ix, pr.next, &pr.c, pr.raw, pr.buf)
		if err == nil && int64(len(s)) != pr.p.Sizes[pr.next] {
			err = fmt.Errorf("chunk %d packed to %d bytes, not the %d indexed", pr.next, len(s), pr.p.Sizes[pr.next])
		}
		if err != nil {
			pr.err = err
			return 0, err
		}
		pr.whole.Write(s)
		pr.cur = s
		pr.next++
	}
	n := copy(b, pr.cur)
	pr.cur = pr.cur[n:]
	return n, nil
}

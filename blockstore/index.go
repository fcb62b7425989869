package blockstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// IndexVersion is the version of the index format Encode writes and the
// only one DecodeIndex accepts.
const IndexVersion = 1

// DefaultChunkSize is the chunk size of new indexes: 512 KiB, Lambda's
// choice and the middle of what lazy-blocks.md §4 measured (1 MiB for
// demand loading, 256 KiB with trace prefetch).
const DefaultChunkSize = 512 << 10

// Limits of an index. They bound what a corrupt or hostile index can make
// the store allocate: a chunk is held in memory while it is fetched and
// verified, and the chunk list is held for the image's lifetime.
const (
	MinChunkSize = 4 << 10  // a block device's largest sector size
	MaxChunkSize = 64 << 20 // one chunk in memory per fetch
	MaxImageSize = 1 << 40  // 1 TiB; a 5-6 GB compiler image is the target
	// MaxIndexBytes bounds the encoded index DecodeIndex reads: 1 TiB at
	// 64 KiB chunks is 16 Mi chunks of ~67 bytes each, which no sane
	// index needs; 64 MiB covers 1 TiB at 1 MiB chunks many times over.
	MaxIndexBytes = 64 << 20
)

// ErrInvalidIndex is wrapped by every error DecodeIndex and Index.Validate
// return for an index that breaks the format's rules, so callers can tell
// a corrupt index from an I/O failure.
var ErrInvalidIndex = errors.New("invalid chunk index")

// Index describes one image as the store reads it: the image's digest and
// size, the chunk size it is cut into and each chunk's sha256, in order.
// The last chunk may be shorter than ChunkSize. Chunks are verified
// against these digests before any byte of them is used, so the index is
// what a reader trusts; it must come from a trusted place (a digest-named
// object whose digest the caller checked, or a local build).
type Index struct {
	// Version is IndexVersion.
	Version int `json:"version"`
	// Digest is the whole image's "sha256:<64 hex>".
	Digest string `json:"digest"`
	// Size is the image's length in bytes.
	Size int64 `json:"size"`
	// ChunkSize is the length of every chunk but the last.
	ChunkSize int64 `json:"chunkSize"`
	// Chunks holds each chunk's sha256 as 64 lowercase hex digits.
	Chunks []string `json:"chunks"`
	// Config is opaque JSON carried with the index (the image's OCI
	// config, for pe image push); the store does not read it.
	Config json.RawMessage `json:"config,omitempty"`
	// MetadataChunks lists in increasing order the chunks that hold the
	// image's file system metadata (for EROFS: the superblock, inodes,
	// directories, xattrs and compression indexes), which a run
	// prefetches at its start (Image.PrefetchOrder) so that the mount
	// and the first lookups do not wait one round trip each. Optional:
	// indexes written before it, and images whose metadata could not
	// be walked, have none.
	MetadataChunks []int `json:"metadataChunks,omitempty"`
	// Files is opaque JSON carried with the index, as Config is: small
	// files of the image a reader wants before it reads any chunk (pe
	// image push: /etc/passwd and /etc/group, which a run consults
	// before its VM starts). The store does not read it.
	Files json.RawMessage `json:"files,omitempty"`
	// Packed, when set, says the chunks are also stored compressed in
	// one object (see Packed), which a lazy reader fetches instead of
	// the image's own. Optional: indexes written before it, and pushes
	// that chose not to, have none.
	Packed *Packed `json:"packed,omitempty"`
}

// NumChunks is the number of chunks an image of size bytes has when cut
// into chunkSize pieces.
func NumChunks(size, chunkSize int64) int64 {
	if chunkSize <= 0 || size <= 0 {
		return 0
	}
	return (size + chunkSize - 1) / chunkSize
}

// ChunkRange returns the offset and length of chunk i.
func (ix *Index) ChunkRange(i int) (off, length int64) {
	off = int64(i) * ix.ChunkSize
	return off, min(ix.ChunkSize, ix.Size-off)
}

// Validate checks the index against the format's rules: the version, a
// well-formed digest, sizes within the limits, a chunk size that is a
// multiple of MinChunkSize, exactly one well-formed digest per chunk, and
// metadata chunks (if any) increasing and in range, and packed chunks (if
// any) of a known codec, one per chunk, none longer than its chunk.
func (ix *Index) Validate() error {
	if ix.Version != IndexVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrInvalidIndex, ix.Version, IndexVersion)
	}
	hexDigest, ok := strings.CutPrefix(ix.Digest, "sha256:")
	if !ok || !isHexDigest(hexDigest) {
		return fmt.Errorf("%w: image digest %q is not sha256:<64 lowercase hex digits>", ErrInvalidIndex, ix.Digest)
	}
	if ix.Size <= 0 || ix.Size > MaxImageSize {
		return fmt.Errorf("%w: image size %d is outside 1..%d", ErrInvalidIndex, ix.Size, int64(MaxImageSize))
	}
	if ix.ChunkSize < MinChunkSize || ix.ChunkSize > MaxChunkSize || ix.ChunkSize%MinChunkSize != 0 {
		return fmt.Errorf("%w: chunk size %d is not a multiple of %d between %d and %d", ErrInvalidIndex, ix.ChunkSize, MinChunkSize, MinChunkSize, MaxChunkSize)
	}
	if want := NumChunks(ix.Size, ix.ChunkSize); int64(len(ix.Chunks)) != want {
		return fmt.Errorf("%w: %d chunk digests for %d bytes in chunks of %d, want %d", ErrInvalidIndex, len(ix.Chunks), ix.Size, ix.ChunkSize, want)
	}
	for i, c := range ix.Chunks {
		if !isHexDigest(c) {
			return fmt.Errorf("%w: chunk %d digest %q is not 64 lowercase hex digits", ErrInvalidIndex, i, c)
		}
	}
	if len(ix.Config) > 0 && !json.Valid(ix.Config) {
		return fmt.Errorf("%w: config is not valid JSON", ErrInvalidIndex)
	}
	if len(ix.Files) > 0 && !json.Valid(ix.Files) {
		return fmt.Errorf("%w: files is not valid JSON", ErrInvalidIndex)
	}
	prev := -1
	for k, i := range ix.MetadataChunks {
		if i <= prev || i >= len(ix.Chunks) {
			return fmt.Errorf("%w: metadata chunk entry %d is %d: want increasing chunk numbers below %d", ErrInvalidIndex, k, i, len(ix.Chunks))
		}
		prev = i
	}
	if ix.Packed != nil {
		return ix.Packed.validate(ix)
	}
	return nil
}

func isHexDigest(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Encode returns the index as JSON, after validating it.
func (ix *Index) Encode() ([]byte, error) {
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	// Without HTML escaping, which would rewrite "&", "<" and ">" in
	// Config, so that decoding gives back the same bytes.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ix); err != nil {
		return nil, fmt.Errorf("encoding chunk index: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// DecodeIndex parses and validates an encoded index. It rejects unknown
// fields and trailing data, so a file that is not an index (or a newer
// version's) is not mistaken for one.
func DecodeIndex(data []byte) (*Index, error) {
	if len(data) > MaxIndexBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d an index may have", ErrInvalidIndex, len(data), MaxIndexBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var ix Index
	if err := dec.Decode(&ix); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidIndex, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrInvalidIndex)
	}
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	// Compact the opaque fields as Encode would, so that decoding what
	// Encode wrote gives back the same Index.
	for _, f := range []struct {
		name string
		raw  *json.RawMessage
	}{{"config", &ix.Config}, {"files", &ix.Files}} {
		if len(*f.raw) == 0 {
			continue
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, *f.raw); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidIndex, f.name, err)
		}
		*f.raw = buf.Bytes()
	}
	if len(ix.MetadataChunks) == 0 {
		// "[]" and no field mean the same; Encode writes neither.
		ix.MetadataChunks = nil
	}
	return &ix, nil
}

// ReadIndex reads an encoded index from r, at most MaxIndexBytes of it.
func ReadIndex(r io.Reader) (*Index, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxIndexBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading chunk index: %w", err)
	}
	return DecodeIndex(data)
}

// BuildIndex reads the image from r to its end, once, and returns its
// index: the whole image's digest and each chunk's. chunkSize 0 means
// DefaultChunkSize. It stops early when ctx is done.
func BuildIndex(ctx context.Context, r io.Reader, chunkSize int64) (*Index, error) {
	if chunkSize == 0 {
		chunkSize = DefaultChunkSize
	}
	ix := &Index{Version: IndexVersion, ChunkSize: chunkSize}
	if chunkSize < MinChunkSize || chunkSize > MaxChunkSize || chunkSize%MinChunkSize != 0 {
		return nil, fmt.Errorf("chunk size %d is not a multiple of %d between %d and %d", chunkSize, MinChunkSize, MinChunkSize, MaxChunkSize)
	}
	whole := sha256.New()
	buf := make([]byte, chunkSize)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			whole.Write(buf[:n])
			sum := sha256.Sum256(buf[:n])
			ix.Chunks = append(ix.Chunks, hex.EncodeToString(sum[:]))
			ix.Size += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading image at byte %d: %w", ix.Size, err)
		}
		if ix.Size > MaxImageSize {
			return nil, fmt.Errorf("image is larger than %d bytes", int64(MaxImageSize))
		}
	}
	ix.Digest = "sha256:" + hex.EncodeToString(whole.Sum(nil))
	if err := ix.Validate(); err != nil {
		return nil, err
	}
	return ix, nil
}

// BuildIndexFile returns the index of the image file at path (see
// BuildIndex).
func BuildIndexFile(ctx context.Context, path string, chunkSize int64) (*Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("indexing image: %w", err)
	}
	defer f.Close()
	ix, err := BuildIndex(ctx, f, chunkSize)
	if err != nil {
		return nil, fmt.Errorf("indexing %s: %w", path, err)
	}
	return ix, nil
}

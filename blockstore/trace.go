package blockstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// TraceVersion is the version of the trace format EncodeTrace writes and
// the only one DecodeTrace accepts.
const TraceVersion = 1

// Limits of a trace. A run that reads more distinct chunks than
// MaxTraceChunks records only the first ones: the start of a run is what
// a trace speeds up, and 64 Ki chunks are 32 GiB at 512 KiB, more than any
// image pe serves. MaxTraceBytes bounds the encoded form DecodeTrace
// reads: 64 Ki indexes of at most 7 digits and a comma, plus the header.
const (
	MaxTraceChunks = 1 << 16
	MaxTraceBytes  = 1 << 20
)

// ErrInvalidTrace is wrapped by every error DecodeTrace and Trace.Validate
// return for a trace that breaks the format's rules or does not belong to
// the index it is checked against, so callers can tell a corrupt (or
// stale) trace, which they should ignore, from an I/O failure.
var ErrInvalidTrace = errors.New("invalid prefetch trace")

// Trace is the order in which a run first read an image's chunks: what a
// later run of the same command prefetches, in that order, before it asks
// for them (PrefetchOrder).
type Trace struct {
	// Version is TraceVersion.
	Version int `json:"version"`
	// Image is the digest of the image the chunks are of (Index.Digest).
	Image string `json:"image"`
	// ChunkSize is the chunk size of the index the trace was recorded
	// with; chunk numbers mean nothing under another.
	ChunkSize int64 `json:"chunkSize"`
	// Chunks are chunk numbers, each once, in first-read order.
	Chunks []int `json:"chunks"`
}

// Validate checks the trace against the format's rules and against ix,
// the index of the image it is to be used with: same image and chunk size,
// chunk numbers in range, none twice, at most MaxTraceChunks.
func (t *Trace) Validate(ix *Index) error {
	if t.Version != TraceVersion {
		return fmt.Errorf("%w: version %d, want %d", ErrInvalidTrace, t.Version, TraceVersion)
	}
	if t.Image != ix.Digest {
		return fmt.Errorf("%w: recorded for image %q, not %s", ErrInvalidTrace, t.Image, ix.Digest)
	}
	if t.ChunkSize != ix.ChunkSize {
		return fmt.Errorf("%w: chunk size %d, the image's index has %d", ErrInvalidTrace, t.ChunkSize, ix.ChunkSize)
	}
	if len(t.Chunks) > MaxTraceChunks {
		return fmt.Errorf("%w: %d chunks, more than %d", ErrInvalidTrace, len(t.Chunks), MaxTraceChunks)
	}
	seen := make([]bool, len(ix.Chunks))
	for k, i := range t.Chunks {
		if i < 0 || i >= len(ix.Chunks) {
			return fmt.Errorf("%w: entry %d is chunk %d, the image has %d", ErrInvalidTrace, k, i, len(ix.Chunks))
		}
		if seen[i] {
			return fmt.Errorf("%w: chunk %d is listed twice (entry %d)", ErrInvalidTrace, i, k)
		}
		seen[i] = true
	}
	return nil
}

// Encode returns the trace as JSON, after validating it against ix.
func (t *Trace) Encode(ix *Index) ([]byte, error) {
	if err := t.Validate(ix); err != nil {
		return nil, err
	}
	b, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encoding prefetch trace: %w", err)
	}
	return b, nil
}

// DecodeTrace parses an encoded trace and validates it against ix. It
// rejects unknown fields, trailing data and more than MaxTraceBytes, so
// that bytes from a bucket cannot make a run allocate without bound or
// prefetch chunks the image does not have.
func DecodeTrace(data []byte, ix *Index) (*Trace, error) {
	if len(data) > MaxTraceBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d a trace may have", ErrInvalidTrace, len(data), MaxTraceBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var t Trace
	if err := dec.Decode(&t); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidTrace, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrInvalidTrace)
	}
	if t.Chunks == nil {
		return nil, fmt.Errorf("%w: no chunk list", ErrInvalidTrace)
	}
	if err := t.Validate(ix); err != nil {
		return nil, err
	}
	return &t, nil
}

// recorder notes the chunks an image's demand reads touch, each the first
// time only. A read costs one atomic load per chunk once the chunk is
// known; only a chunk's first read takes the lock.
type recorder struct {
	on   atomic.Bool
	seen []atomic.Uint64 // bit per chunk
	max  int

	mu    sync.Mutex
	order []int
}

// StartTrace makes the image record the order in which demand reads
// (ReadAt, ReadAtContext; not Prefetch or PrefetchOrder) first touch each
// chunk, whether it was cached or not, up to max chunks (0 or more than
// MaxTraceChunks means MaxTraceChunks). A second call starts afresh.
func (im *Image) StartTrace(max int) {
	if max <= 0 || max > MaxTraceChunks {
		max = MaxTraceChunks
	}
	r := &recorder{seen: make([]atomic.Uint64, (len(im.ix.Chunks)+63)/64), max: max}
	r.on.Store(true)
	im.rec.Store(r)
}

// Trace returns what the image recorded since StartTrace, or nil if
// tracing was never started. Recording goes on; a later call returns a
// longer trace.
func (im *Image) Trace() *Trace {
	r := im.rec.Load()
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return &Trace{Version: TraceVersion, Image: im.ix.Digest, ChunkSize: im.ix.ChunkSize, Chunks: append([]int{}, r.order...)}
}

// note records a demand read of chunk i.
func (r *recorder) note(i int) {
	w, bit := &r.seen[i/64], uint64(1)<<(i%64)
	for {
		old := w.Load()
		if old&bit != 0 {
			return
		}
		if w.CompareAndSwap(old, old|bit) {
			break
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.order) < r.max {
		r.order = append(r.order, i)
	} else {
		r.on.Store(false)
	}
}

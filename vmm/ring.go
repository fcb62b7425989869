package vmm

import "sync"

// ConsoleLogSize is how much of a guest's console a [Machine] keeps: the
// last 64 KiB.
const ConsoleLogSize = 64 << 10

// Ring is an io.Writer that keeps the last bytes written to it, up to its
// size, and drops the rest. It is safe for concurrent use.
type Ring struct {
	mu    sync.Mutex
	buf   []byte
	size  int
	start int // index of the oldest byte once full
	full  bool
	total int64
}

// NewRing returns a Ring keeping the last size bytes.
func NewRing(size int) *Ring {
	if size <= 0 {
		size = 1
	}
	return &Ring{size: size}
}

// Write keeps the end of p. It never fails.
func (r *Ring) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(p)
	r.total += int64(n)
	if len(p) >= r.size {
		r.buf = append(r.buf[:0], p[len(p)-r.size:]...)
		r.start, r.full = 0, true
		return n, nil
	}
	if !r.full {
		if len(r.buf)+len(p) <= r.size {
			r.buf = append(r.buf, p...)
			return n, nil
		}
		// Fill up, then wrap.
		k := r.size - len(r.buf)
		r.buf = append(r.buf, p[:k]...)
		p = p[k:]
		r.full = true
		r.start = 0
	}
	for len(p) > 0 {
		k := copy(r.buf[r.start:], p)
		p = p[k:]
		r.start = (r.start + k) % r.size
	}
	return n, nil
}

// Bytes returns a copy of the bytes kept, oldest first.
func (r *Ring) Bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.full {
		return append([]byte(nil), r.buf...)
	}
	out := make([]byte, 0, r.size)
	out = append(out, r.buf[r.start:]...)
	return append(out, r.buf[:r.start]...)
}

// Total returns how many bytes were written in all, kept or not.
func (r *Ring) Total() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

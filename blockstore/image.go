package blockstore

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Image reads one image through its Store: cached chunks from disk,
// missing ones fetched (once however many reads want them), verified and
// cached. It implements io.ReaderAt and is safe for concurrent use.
type Image struct {
	s      *Store
	ix     *Index
	f      Fetcher
	c      counters
	both   pair
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	// rec records demand reads' first touches (StartTrace); sched ranks
	// PrefetchOrder's fetches below demand reads'.
	rec   atomic.Pointer[recorder]
	sched sched
	// waiting counts the reads waiting for fetches now; lastWait is
	// when one last stopped waiting (unix nanoseconds), 0 if none has.
	// Prefetches take neighbours along only while reads do not wait.
	waiting  atomic.Int32
	lastWait atomic.Int64

	// files keeps chunk files open for the next reads of the same chunk,
	// saving an open and a close per read. A kept file the cache evicts
	// keeps its disk space until it leaves this map, so the map is small.
	filesMu sync.RWMutex
	files   map[int]*keptFile
	closed  bool
}

// keptFile is an open chunk file and when its mtime (the LRU clock) was
// last set.
type keptFile struct {
	f       *os.File
	touched atomic.Int64 // unix nanoseconds
}

// maxOpenFiles bounds the chunk files an Image keeps open: 64 × 512 KiB
// = 32 MiB of evicted chunks can outlive their eviction.
const maxOpenFiles = 64

// Size returns the image's length in bytes.
func (im *Image) Size() int64 { return im.ix.Size }

// Index returns the image's index.
func (im *Image) Index() *Index { return im.ix }

// Stats returns this image's counters.
func (im *Image) Stats() Stats { return im.c.snapshot() }

// Close ends the image's reads in progress (they return ErrClosed) and
// makes later reads fail. Fetches other images wait for go on.
func (im *Image) Close() error {
	im.cancel()
	im.filesMu.Lock()
	defer im.filesMu.Unlock()
	for _, k := range im.files {
		k.f.Close()
	}
	im.files, im.closed = nil, true
	return nil
}

// readOpen reads from chunk i's kept file, if there is one.
func (im *Image) readOpen(i int, dst []byte, inOff int64) bool {
	im.filesMu.RLock()
	defer im.filesMu.RUnlock()
	k := im.files[i]
	if k == nil {
		return false
	}
	if n, _ := k.f.ReadAt(dst, inOff); n != len(dst) {
		return false
	}
	// Keep a hot chunk recent for eviction, as readCached does.
	now := time.Now().UnixNano()
	if last := k.touched.Load(); now-last > int64(touchEvery) && k.touched.CompareAndSwap(last, now) {
		t := time.Unix(0, now)
		os.Chtimes(k.f.Name(), t, t)
	}
	return true
}

// keep adds an open chunk file (just read, so just touched) to the kept
// ones: in place of the chunk's previous one (which failed a read), or of
// a random one when they are many.
func (im *Image) keep(i int, f *os.File) {
	im.filesMu.Lock()
	defer im.filesMu.Unlock()
	if im.closed {
		f.Close()
		return
	}
	if im.files == nil {
		im.files = map[int]*keptFile{}
	}
	if old := im.files[i]; old != nil {
		old.f.Close()
		delete(im.files, i)
	}
	if len(im.files) >= maxOpenFiles {
		for j, old := range im.files { // map order: a random victim
			old.f.Close()
			delete(im.files, j)
			break
		}
	}
	k := &keptFile{f: f}
	k.touched.Store(time.Now().UnixNano())
	im.files[i] = k
}

// ReadAt reads len(p) bytes at off, as io.ReaderAt; it waits for missing
// chunks until they arrive, fail, or the image is closed.
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	return im.ReadAtContext(context.Background(), p, off)
}

// ReadAtContext is ReadAt that also gives up when ctx ends. It returns
// either all the bytes asked for (io.EOF with fewer only at the image's
// end) or none: a *FetchError or *DigestError naming the chunk that could
// not be read, ErrClosed, or ctx's error.
func (im *Image) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if im.ctx.Err() != nil {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("blockstore: read at negative offset %d", off)
	}
	if off >= im.ix.Size {
		return 0, io.EOF
	}
	end := off + int64(len(p))
	var eof error
	if end > im.ix.Size {
		end, eof = im.ix.Size, io.EOF
	}
	p = p[:end-off]
	if len(p) == 0 {
		return 0, nil
	}
	type pending struct {
		i     int
		fl    *flight
		dst   []byte
		inOff int64
	}
	var waits []pending
	cs := im.ix.ChunkSize
	rec := im.rec.Load()
	for i := int(off / cs); int64(i)*cs < end; i++ {
		if rec != nil && rec.on.Load() {
			rec.note(i)
		}
		cOff, cLen := im.ix.ChunkRange(i)
		lo, hi := max(off, cOff), min(end, cOff+cLen)
		dst := p[lo-off : hi-off]
		if fl := im.cachedOrFlight(i, dst, lo-cOff, true); fl != nil {
			waits = append(waits, pending{i, fl, dst, lo - cOff})
		}
	}
	if len(waits) == 0 {
		return len(p), eof
	}
	// Waits end with the read's context or the image's.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(im.ctx, cancel)
	defer stop()
	start := time.Now()
	im.waiting.Add(1)
	defer func() {
		end := time.Now()
		im.lastWait.Store(end.UnixNano())
		im.waiting.Add(-1)
		im.both.add(func(c *counters) *atomic.Int64 { return &c.stalled }, int64(end.Sub(start)))
	}()
	for k, w := range waits {
		digest := im.ix.Chunks[w.i]
		if err := im.s.wait(ctx, digest, w.fl); err != nil {
			for _, rest := range waits[k+1:] {
				im.s.leave(im.ix.Chunks[rest.i], rest.fl)
			}
			if im.ctx.Err() != nil {
				return 0, ErrClosed
			}
			if ctx.Err() != nil {
				off, _ := im.ix.ChunkRange(w.i)
				return 0, fmt.Errorf("blockstore: reading image %s chunk %d at %d: %w", im.ix.Digest, w.i, off, ctx.Err())
			}
			return 0, err
		}
		copy(w.dst, w.fl.data[w.inOff:])
	}
	return len(p), eof
}

// Prefetch makes chunk i cached, fetching it if it is missing, without
// copying it anywhere: for trace-driven prefetch, which runs ahead of the
// reads that will want the chunks. It counts as a hit, miss or join like a
// read.
func (im *Image) Prefetch(ctx context.Context, i int) error {
	if i < 0 || i >= len(im.ix.Chunks) {
		return fmt.Errorf("blockstore: prefetch of chunk %d, image has %d", i, len(im.ix.Chunks))
	}
	if im.ctx.Err() != nil {
		return ErrClosed
	}
	fl := im.cachedOrFlight(i, nil, 0, false)
	if fl == nil {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(im.ctx, cancel)
	defer stop()
	if err := im.s.wait(ctx, im.ix.Chunks[i], fl); err != nil {
		if im.ctx.Err() != nil {
			return ErrClosed
		}
		return err
	}
	return nil
}

// readsWaited says whether a read of the image is waiting for a fetch
// now, or was within the last span of time given.
func (im *Image) readsWaited(within time.Duration) bool {
	if im.waiting.Load() > 0 {
		return true
	}
	last := im.lastWait.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < within
}

// prefetchStretch makes chunks lo..hi cached, as Prefetch does each, but
// fetches each unbroken stretch of missing ones with one request. It
// returns how many chunks failed, and the first error.
func (im *Image) prefetchStretch(ctx context.Context, lo, hi int) (failed int, err error) {
	if lo < 0 || hi >= len(im.ix.Chunks) || lo > hi {
		return 0, fmt.Errorf("blockstore: prefetch of chunks %d-%d, image has %d", lo, hi, len(im.ix.Chunks))
	}
	if im.ctx.Err() != nil {
		return hi - lo + 1, ErrClosed
	}
	fls := im.s.acquireStretch(im, lo, hi)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(im.ctx, cancel)
	defer stop()
	var first error
	for k, fl := range fls {
		switch {
		case fl == nil:
			im.both.add(func(c *counters) *atomic.Int64 { return &c.hits }, 1)
		case first != nil && ctx.Err() != nil:
			im.s.leave(im.ix.Chunks[lo+k], fl)
			failed++
		default:
			if err := im.s.wait(ctx, im.ix.Chunks[lo+k], fl); err != nil {
				failed++
				if first == nil {
					first = err
				}
			}
		}
	}
	if first != nil && im.ctx.Err() != nil {
		return failed, ErrClosed
	}
	return failed, first
}

// cachedOrFlight copies chunk i's bytes from inOff into dst from the
// cache and returns nil, or returns the flight to wait for; demand says a
// read (not a prefetch) wants it.
func (im *Image) cachedOrFlight(i int, dst []byte, inOff int64, demand bool) *flight {
	for attempt := 0; ; attempt++ {
		if attempt == 0 && im.readOpen(i, dst, inOff) || im.s.pendingRead(im.ix.Chunks[i], dst, inOff) {
			im.both.add(func(c *counters) *atomic.Int64 { return &c.hits }, 1)
			return nil
		}
		if f, ok := im.s.readCached(im, i, dst, inOff); ok {
			im.keep(i, f)
			im.both.add(func(c *counters) *atomic.Int64 { return &c.hits }, 1)
			return nil
		}
		// Look again once if the file appeared meanwhile; a file that
		// is there but unreadable is fetched.
		if fl := im.s.acquire(im, i, attempt == 0, demand); fl != nil {
			return fl
		}
	}
}

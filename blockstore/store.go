package blockstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults of Options' zero values.
const (
	DefaultMaxBytes       = 10 << 30
	DefaultRequestTimeout = 30 * time.Second
	DefaultAttempts       = 4
	DefaultBackoff        = 100 * time.Millisecond
	// DefaultHedgeAfter is when a second request for a chunk is sent if
	// the first has not answered: several times the 24-47 ms of an S3
	// ranged GET (lazy-blocks.md §4.1), so only the slow tail is hedged.
	DefaultHedgeAfter = 250 * time.Millisecond
	// DefaultCommitDelay is how long fetched chunks wait in memory after
	// the last one arrived before they are written to the cache together:
	// a run's burst of prefetches ends, then its chunks go to disk, with
	// one flush for all of them, instead of costing a file, a write and a
	// flush each while the guest is starting and the CPU is scarcest.
	DefaultCommitDelay = time.Second
	// DefaultMaxPendingBytes bounds the fetched chunks held in memory
	// before they are written: past it they are written at once.
	DefaultMaxPendingBytes = 128 << 20
)

// maxCommitWait bounds how long a fetched chunk waits to be written
// however long fetches keep arriving: a steady stream of runs (pe serve)
// never lets the cache go idle.
const maxCommitWait = 10 * time.Second

// staleTmpAge is how old a temporary chunk file must be before NewStore
// removes it: a writer writes one in milliseconds, so one this old was
// left by a process that crashed, not by a live one sharing the directory.
const staleTmpAge = time.Hour

// touchEvery bounds how often a hit updates a chunk file's mtime, the LRU
// clock eviction sorts by, so that hot reads do not turn into metadata
// writes.
const touchEvery = time.Minute

// Options configure a Store. Zero values take the defaults above.
type Options struct {
	// Dir is the cache directory. Several processes may share it.
	Dir string
	// MaxBytes bounds the chunk files' total size; the least recently
	// used chunks are removed past it, down to 90 % of it.
	MaxBytes int64
	// RequestTimeout bounds one Fetch call.
	RequestTimeout time.Duration
	// Attempts is how many times a failing chunk fetch is tried in all
	// (a corrupt chunk's one refetch does not count).
	Attempts int
	// Backoff is the wait before the first retry, doubled before each
	// next one, up to 2 s.
	Backoff time.Duration
	// HedgeAfter is how long a fetch may go unanswered before a second,
	// identical request is sent; the first answer wins. Negative
	// disables hedging.
	HedgeAfter time.Duration
	// VerifyCached hashes each cached chunk file the first time this
	// process uses it, against damage to the disk or the directory
	// after the chunk was written. Without it a cached chunk is trusted:
	// it was verified before it was written, and it was written to a
	// temporary file, flushed to the disk and only then renamed to its
	// digest, so a crash cannot leave a partial chunk under that name;
	// a file of the wrong size is still detected (once per process) and
	// fetched again.
	// Hashing costs about 0.4 ms per 512 KiB chunk per process
	// (docs/benchmarks.md), which a warm run would pay on every start.
	VerifyCached bool
	// CommitDelay is how long verified chunks stay in memory, serving
	// reads, after the last chunk was fetched, before they are written
	// to the cache directory in one batch (at most maxCommitWait after
	// the first of them; Close writes them at once).
	CommitDelay time.Duration
	// MaxPendingBytes bounds the verified chunks held in memory waiting
	// to be written; past it they are written at once.
	MaxPendingBytes int64
}

// Store is a bounded cache of verified chunks on local disk, one file per
// chunk named by its sha256 under Dir/chunks, shared by every Image it
// opens and by every process using the same Dir. Its methods are safe for
// concurrent use.
type Store struct {
	o        Options
	chunkDir string
	tmpDir   string
	c        counters

	mu sync.Mutex
	// flights holds the fetches in progress, by chunk digest.
	flights map[string]*flight
	// verified holds the chunks whose cached file this process checked
	// against its digest (or wrote), with the last time it set the
	// file's mtime.
	verified map[string]time.Time
	// pending holds verified chunks not yet written to the cache
	// directory, by digest: reads take them from memory until commit
	// writes the batch.
	pending      map[string]pendingChunk
	pendingBytes int64
	firstPending time.Time // when the oldest pending chunk arrived
	lastPending  time.Time // when the newest did
	commitTimer  *time.Timer
	commitMu     sync.Mutex // one commit at a time

	used    atomic.Int64 // bytes in chunk files, as of the last scan plus writes since
	evictMu sync.Mutex
	writes  sync.WaitGroup // cache writes in progress
}

// pendingChunk is a verified chunk waiting to be written, with the image
// whose read fetched it (its write errors count there).
type pendingChunk struct {
	data []byte
	im   *Image
}

// flight is one chunk's fetch, which every read of that chunk waits for.
type flight struct {
	done    chan struct{}
	data    []byte // the verified chunk, once done
	err     error
	waiters int // reads waiting; the fetch is cancelled when all leave
	cancel  context.CancelFunc
	// demand is set when a demand read (not a prefetch) started the
	// fetch: it counts in its image's sched until it ends.
	demand bool
}

// NewStore opens (creating it if needed) the cache directory o.Dir. It
// removes temporary files crashed writers left and, if the cache is over
// its limit, evicts.
func NewStore(o Options) (*Store, error) {
	if o.Dir == "" {
		return nil, errors.New("blockstore: no cache directory")
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Attempts <= 0 {
		o.Attempts = DefaultAttempts
	}
	if o.Backoff <= 0 {
		o.Backoff = DefaultBackoff
	}
	if o.HedgeAfter == 0 {
		o.HedgeAfter = DefaultHedgeAfter
	}
	if o.CommitDelay <= 0 {
		o.CommitDelay = DefaultCommitDelay
	}
	if o.MaxPendingBytes <= 0 {
		o.MaxPendingBytes = DefaultMaxPendingBytes
	}
	s := &Store{
		o:        o,
		chunkDir: filepath.Join(o.Dir, "chunks"),
		tmpDir:   filepath.Join(o.Dir, "tmp"),
		flights:  map[string]*flight{},
		verified: map[string]time.Time{},
		pending:  map[string]pendingChunk{},
	}
	for _, d := range []string{s.chunkDir, s.tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("blockstore: creating cache directory: %w", err)
		}
	}
	if err := s.removeStaleTmp(); err != nil {
		return nil, err
	}
	if err := s.flattenChunkDir(); err != nil {
		return nil, err
	}
	if err := s.evict(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) removeStaleTmp() error {
	entries, err := os.ReadDir(s.tmpDir)
	if err != nil {
		return fmt.Errorf("blockstore: listing %s: %w", s.tmpDir, err)
	}
	for _, e := range entries {
		info, err := e.Info()
		if err == nil && time.Since(info.ModTime()) > staleTmpAge {
			os.Remove(filepath.Join(s.tmpDir, e.Name()))
		}
	}
	return nil
}

// flattenChunkDir moves the chunk files earlier versions kept in fan-out
// directories (chunks/<2 hex>/<sha256>) to chunks/<sha256>, where reads
// look for them, and removes the emptied directories. Creating a fan-out
// directory cost a fresh cache one mkdir per chunk, as dear as the
// chunk's own file, and a single directory of 20,000 entries is nothing
// to ext4 or XFS.
func (s *Store) flattenChunkDir() error {
	entries, err := os.ReadDir(s.chunkDir)
	if err != nil {
		return fmt.Errorf("blockstore: listing %s: %w", s.chunkDir, err)
	}
	for _, e := range entries {
		if !e.IsDir() || len(e.Name()) != 2 {
			continue
		}
		sub := filepath.Join(s.chunkDir, e.Name())
		files, err := os.ReadDir(sub)
		if err != nil {
			continue // another process flattened it meanwhile
		}
		for _, f := range files {
			os.Rename(filepath.Join(sub, f.Name()), filepath.Join(s.chunkDir, f.Name()))
		}
		os.Remove(sub)
	}
	return nil
}

// Close waits for the fetches in progress and writes every chunk fetched
// so far to the cache directory, so that the next run finds them. The
// store stays usable.
func (s *Store) Close() error {
	s.writes.Wait()
	s.mu.Lock()
	if s.commitTimer != nil {
		s.commitTimer.Stop()
		s.commitTimer = nil
	}
	s.mu.Unlock()
	s.commit()
	return nil
}

// Stats returns the counters of every image the store opened.
func (s *Store) Stats() Stats { return s.c.snapshot() }

// Usage returns the bytes the cache's chunk files take, as of the last
// scan plus this process's writes since.
func (s *Store) Usage() int64 { return s.used.Load() }

func (s *Store) chunkPath(digest string) string {
	return ChunkPath(s.o.Dir, digest)
}

// Open returns a reader of the image ix describes, reading missing chunks
// through f. ix must be valid (DecodeIndex, BuildIndex).
func (s *Store) Open(ix *Index, f Fetcher) (*Image, error) {
	if err := ix.Validate(); err != nil {
		return nil, fmt.Errorf("blockstore: opening image: %w", err)
	}
	if f == nil {
		return nil, errors.New("blockstore: opening image: no fetcher")
	}
	ctx, cancel := context.WithCancel(context.Background())
	im := &Image{s: s, ix: ix, f: f, ctx: ctx, cancel: cancel}
	im.both = pair{&im.c, &s.c}
	return im, nil
}

// readCached copies chunk i's bytes from inOff into dst if the chunk is in
// the cache. A cached file shorter than its chunk, or with VerifyCached
// one whose sha256 (checked the first time this process uses it) does not
// match, is removed and reported as missing. On success it returns the
// open file, which the caller keeps or closes.
func (s *Store) readCached(im *Image, i int, dst []byte, inOff int64) (*os.File, bool) {
	digest := im.ix.Chunks[i]
	path := s.chunkPath(digest)
	s.mu.Lock()
	touched, verified := s.verified[digest]
	s.mu.Unlock()
	f, err := os.Open(path)
	if err != nil {
		return nil, false
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	_, length := im.ix.ChunkRange(i)
	if !verified && !s.o.VerifyCached {
		// Trusted, but check the size once per process: a file that
		// is not its chunk's length is not its chunk.
		if info, err := f.Stat(); err == nil && info.Size() == length {
			verified = true
		}
	}
	if verified {
		if n, _ := f.ReadAt(dst, inOff); n == len(dst) {
			s.touch(digest, path, touched)
			ok = true
			return f, true
		}
		// Shorter than it was when verified: check it again.
	}
	data, err := io.ReadAll(io.LimitReader(f, length+1))
	if err != nil {
		return nil, false
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != length || hex.EncodeToString(sum[:]) != digest {
		im.both.add(func(c *counters) *atomic.Int64 { return &c.corruptCached }, 1)
		s.mu.Lock()
		delete(s.verified, digest)
		s.mu.Unlock()
		os.Remove(path)
		return nil, false
	}
	copy(dst, data[inOff:])
	s.touch(digest, path, time.Time{})
	ok = true
	return f, true
}

// touch marks a chunk verified and, at most every touchEvery, sets its
// file's mtime so that eviction sees it as recently used.
func (s *Store) touch(digest, path string, last time.Time) {
	now := time.Now()
	if now.Sub(last) < touchEvery {
		return
	}
	s.mu.Lock()
	s.verified[digest] = now
	s.mu.Unlock()
	os.Chtimes(path, now, now)
}

// acquire returns the flight fetching chunk i, starting one if none is.
// With recheck, it returns nil instead if the chunk is pending or its file
// exists: a read that missed it may have raced a flight that finished
// since (a flight leaves the map only once its chunk is pending) or a
// commit, and should look again rather than fetch a second time.
// A demand read's new flight counts as a demand fetch in im's sched.
func (s *Store) acquire(im *Image, i int, recheck, demand bool) *flight {
	s.mu.Lock()
	defer s.mu.Unlock()
	fl, started := s.flightLocked(im, i, recheck, demand)
	if started {
		ctx, cancel := context.WithCancel(context.Background())
		fl.cancel = cancel
		go s.run(ctx, im, i, fl)
	}
	return fl
}

// flightLocked returns the flight fetching chunk i, joining one in
// progress or making a new one the caller must start (started: its
// cancel set and its fetch run, before s.mu is released), or nil when
// recheck finds the chunk pending or cached. s.mu is held.
func (s *Store) flightLocked(im *Image, i int, recheck, demand bool) (fl *flight, started bool) {
	digest := im.ix.Chunks[i]
	if fl := s.flights[digest]; fl != nil {
		fl.waiters++
		im.both.add(func(c *counters) *atomic.Int64 { return &c.joins }, 1)
		return fl, false
	}
	if recheck {
		if _, ok := s.pending[digest]; ok {
			return nil, false
		}
		if _, err := os.Stat(s.chunkPath(digest)); err == nil {
			return nil, false
		}
	}
	fl = &flight{done: make(chan struct{}), waiters: 1, demand: demand}
	s.flights[digest] = fl
	if demand {
		im.sched.startDemand()
	}
	im.both.add(func(c *counters) *atomic.Int64 { return &c.misses }, 1)
	s.writes.Add(1)
	return fl, true
}

// has says whether the chunk with this digest is cached or being fetched.
func (s *Store) has(digest string) bool {
	s.mu.Lock()
	fl := s.flights[digest]
	_, pending := s.pending[digest]
	s.mu.Unlock()
	if fl != nil || pending {
		return true
	}
	_, err := os.Stat(s.chunkPath(digest))
	return err == nil
}

// wait waits for fl, or leaves it when ctx ends first; the last read to
// leave cancels the fetch.
func (s *Store) wait(ctx context.Context, digest string, fl *flight) error {
	select {
	case <-fl.done:
		return fl.err
	case <-ctx.Done():
		s.leave(digest, fl)
		return ctx.Err()
	}
}

func (s *Store) leave(digest string, fl *flight) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fl.waiters--
	if fl.waiters == 0 {
		fl.cancel()
		if s.flights[digest] == fl {
			delete(s.flights, digest)
		}
	}
}

// run fetches and verifies chunk i for fl's waiters, then finishes fl.
func (s *Store) run(ctx context.Context, im *Image, i int, fl *flight) {
	data, err := s.fetchVerified(ctx, im, i, 0)
	s.finish(im, i, fl, data, err)
}

// finish wakes fl's waiters with its chunk (or error), then hands the
// chunk to the pending ones the next commit writes. The flight stays
// findable until the chunk is pending, so a read in between takes the
// bytes from the flight instead of fetching again.
func (s *Store) finish(im *Image, i int, fl *flight, data []byte, err error) {
	defer s.writes.Done() // Add is in acquire, before Close can wait
	digest := im.ix.Chunks[i]
	defer func() {
		s.mu.Lock()
		if s.flights[digest] == fl {
			delete(s.flights, digest)
		}
		s.mu.Unlock()
		fl.cancel()
	}()
	fl.data, fl.err = data, err
	close(fl.done)
	if fl.demand {
		im.sched.endDemand()
	}
	if err == nil {
		s.addPending(im, digest, data)
	}
}

// acquireStretch returns the flights that will bring chunks lo..hi of im
// (one per chunk; nil for one found cached meanwhile), joining those in
// progress and starting the missing ones as prefetches, each unbroken
// stretch of them fetched with one request: neighbouring chunks are
// neighbours in the stored object, and one request for them costs the
// store, the link and this process one request's work and one round
// trip instead of several.
func (s *Store) acquireStretch(im *Image, lo, hi int) []*flight {
	out := make([]*flight, hi-lo+1)
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		first  = -1 // the current stretch of new flights
		starts []func()
	)
	end := func(next int) {
		if first >= 0 {
			lo1, fls := first, out[first-lo:next-lo]
			starts = append(starts, func() { s.startStretch(im, lo1, fls) })
		}
		first = -1
	}
	for i := lo; i <= hi; i++ {
		// A chunk in progress is joined, also when it is an earlier
		// chunk of this stretch with the same bytes.
		fl, started := s.flightLocked(im, i, true, false)
		out[i-lo] = fl
		switch {
		case !started:
			end(i)
		case first < 0:
			first = i
		}
	}
	end(hi + 1)
	for _, start := range starts {
		start()
	}
	return out
}

// startStretch fetches chunks first.. (one flight each, all new) with one
// request. The request is cancelled once every flight's waiters have left.
func (s *Store) startStretch(im *Image, first int, fls []*flight) {
	ctx, cancel := context.WithCancel(context.Background())
	var left atomic.Int64
	left.Store(int64(len(fls)))
	leave := func() {
		if left.Add(-1) == 0 {
			cancel()
		}
	}
	for _, fl := range fls {
		fl.cancel = sync.OnceFunc(leave)
	}
	go s.runStretch(ctx, im, first, fls)
}

// runStretch fetches chunks first..first+len(fls)-1 with one request,
// verifies each and finishes its flight. A chunk that does not match its
// digest is fetched again alone, once, as fetchVerified does. When the
// request fails, the chunks it did not bring are fetched alone, with
// fetchVerified's retries, unless the store refused it for good.
func (s *Store) runStretch(ctx context.Context, im *Image, first int, fls []*flight) {
	if len(fls) == 1 {
		s.run(ctx, im, first, fls[0])
		return
	}
	offs := make([]int64, len(fls)+1)
	for k := range fls {
		off, length := im.ix.ChunkRange(first + k)
		if im.ix.Packed != nil {
			off, length = im.ix.PackedRange(first + k)
		}
		offs[k], offs[k+1] = off, off+length
	}
	var (
		served int
		err    error
	)
	if sf, ok := im.f.(StreamFetcher); ok {
		served, err = s.streamStretch(ctx, im, first, fls, offs, sf)
	} else {
		// A longer request may take longer before it is slow: the
		// hedge waits HedgeAfter per chunk's worth of bytes.
		length := offs[len(fls)] - offs[0]
		hedge := s.o.HedgeAfter * time.Duration(max(1, length/im.ix.ChunkSize))
		var data []byte
		if data, err = s.hedgedAfter(ctx, im, offs[0], length, hedge); err == nil {
			for k := range fls {
				s.serveStored(ctx, im, first+k, fls[k], data[offs[k]-offs[0]:offs[k+1]-offs[0]:offs[k+1]-offs[0]])
			}
			served = len(fls)
		}
	}
	for k := served; k < len(fls); k++ {
		i, fl := first+k, fls[k]
		if isPermanent(err) || ctx.Err() != nil {
			// Asking for each chunk alone would get the same answer.
			off, length := im.ix.ChunkRange(i)
			s.finish(im, i, fl, nil, &FetchError{Image: im.ix.Digest, Chunk: i, Offset: off, Length: length, Attempts: 1, Err: err})
			continue
		}
		go func() {
			data, err := s.fetchVerified(ctx, im, i, 0)
			s.finish(im, i, fl, data, err)
		}()
	}
}

// streamStretch reads chunks first.. of one request as they arrive and
// serves each at once. It returns how many it served (or fetched again
// alone, when corrupt), and why it stopped before the end. A chunk whose
// bytes take longer than HedgeAfter ends the request, as a slow single
// fetch is hedged: the rest are then fetched alone.
func (s *Store) streamStretch(ctx context.Context, im *Image, first int, fls []*flight, offs []int64, sf StreamFetcher) (int, error) {
	rctx, cancel := context.WithTimeout(ctx, s.o.RequestTimeout)
	defer cancel()
	var slow atomic.Bool
	watch := func() *time.Timer {
		if s.o.HedgeAfter <= 0 {
			return nil
		}
		return time.AfterFunc(s.o.HedgeAfter, func() {
			slow.Store(true)
			cancel()
		})
	}
	im.both.add(func(c *counters) *atomic.Int64 { return &c.gets }, 1)
	t := watch()
	r, err := sf.FetchStream(rctx, offs[0], offs[len(fls)]-offs[0])
	if err != nil {
		if t != nil {
			t.Stop()
		}
		return 0, s.streamError(im, &slow, err)
	}
	defer r.Close()
	for k := range fls {
		if k > 0 {
			t = watch()
		}
		stored := make([]byte, offs[k+1]-offs[k])
		n, err := io.ReadFull(r, stored)
		if t != nil {
			t.Stop()
		}
		im.both.add(func(c *counters) *atomic.Int64 { return &c.bytesFetched }, int64(n))
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return k, s.streamError(im, &slow, fmt.Errorf("reading chunk %d of a request for chunks %d-%d: %w", first+k, first, first+len(fls)-1, err))
		}
		s.serveStored(ctx, im, first+k, fls[k], stored)
	}
	return len(fls), nil
}

// streamError counts a request streamStretch gave up as slow as a hedge.
func (s *Store) streamError(im *Image, slow *atomic.Bool, err error) error {
	if slow.Load() {
		im.both.add(func(c *counters) *atomic.Int64 { return &c.hedges }, 1)
		return fmt.Errorf("gave up a slow request: %w", err)
	}
	return err
}

// serveStored finishes chunk i's flight with its stored bytes once they
// check out, or fetches it again alone (once more, then a DigestError).
func (s *Store) serveStored(ctx context.Context, im *Image, i int, fl *flight, stored []byte) {
	chunk, _ := s.verify(im, i, stored)
	if chunk != nil {
		s.finish(im, i, fl, chunk, nil)
		return
	}
	im.both.add(func(c *counters) *atomic.Int64 { return &c.digestMismatches }, 1)
	go func() {
		data, err := s.fetchVerified(ctx, im, i, 1)
		s.finish(im, i, fl, data, err)
	}()
}

// verify decodes chunk i's stored bytes (for a packed image) and returns
// the chunk if its sha256 matches the index; else nil and what was found
// instead.
func (s *Store) verify(im *Image, i int, stored []byte) (chunk []byte, got string) {
	_, length := im.ix.ChunkRange(i)
	chunk = stored
	if im.ix.Packed != nil {
		var err error
		chunk, err = UnpackChunk(im.ix.Packed.Codec, stored, length)
		if err != nil {
			return nil, fmt.Sprintf("does not decode (%s)", strings.TrimPrefix(err.Error(), ErrBadPackedChunk.Error()+": "))
		}
	}
	sum := sha256.Sum256(chunk)
	if got = hex.EncodeToString(sum[:]); got != im.ix.Chunks[i] {
		return nil, got
	}
	return chunk, got
}

// fetchVerified fetches chunk i with retries, and returns it once its
// sha256 matches the index. A mismatch is fetched again once (the object
// may have been read mid-replacement, or a proxy mangled it) and then
// fails with a DigestError; mismatches counts those seen before the call.
func (s *Store) fetchVerified(ctx context.Context, im *Image, i int, mismatches int) ([]byte, error) {
	off, length := im.ix.ChunkRange(i)
	want := im.ix.Chunks[i]
	backoff := s.o.Backoff
	attempts := 0
	fail := func(err error) error {
		return &FetchError{Image: im.ix.Digest, Chunk: i, Offset: off, Length: length, Attempts: attempts, Err: err}
	}
	// A packed image's chunk is fetched as stored and decoded; what does
	// not decode counts as bytes that do not match.
	getOff, getLength := off, length
	if im.ix.Packed != nil {
		getOff, getLength = im.ix.PackedRange(i)
	}
	for {
		data, err := s.hedged(ctx, im, getOff, getLength)
		attempts++
		if err == nil {
			chunk, got := s.verify(im, i, data)
			if chunk != nil {
				return chunk, nil
			}
			im.both.add(func(c *counters) *atomic.Int64 { return &c.digestMismatches }, 1)
			mismatches++
			if mismatches > 1 {
				return nil, &DigestError{Image: im.ix.Digest, Chunk: i, Offset: off, Length: length, Want: want, Got: got}
			}
			attempts-- // the refetch of a corrupt chunk is not a retry
			continue
		}
		if ctx.Err() != nil {
			return nil, fail(ctx.Err())
		}
		if isPermanent(err) || attempts >= s.o.Attempts {
			return nil, fail(err)
		}
		im.both.add(func(c *counters) *atomic.Int64 { return &c.retries }, 1)
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fail(ctx.Err())
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// hedged runs one Fetch and, if it has not answered after HedgeAfter, a
// second one; the first good answer wins and the other is cancelled.
func (s *Store) hedged(ctx context.Context, im *Image, off, length int64) ([]byte, error) {
	return s.hedgedAfter(ctx, im, off, length, s.o.HedgeAfter)
}

// hedgedAfter is hedged with the second request sent after hedgeAfter
// (none if it is negative).
func (s *Store) hedgedAfter(ctx context.Context, im *Image, off, length int64, hedgeAfter time.Duration) ([]byte, error) {
	type result struct {
		data []byte
		err  error
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan result, 2) // never blocks a losing request
	timeout := s.o.RequestTimeout
	start := func() {
		im.both.add(func(c *counters) *atomic.Int64 { return &c.gets }, 1)
		go func() {
			rctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			data, err := im.f.Fetch(rctx, off, length)
			im.both.add(func(c *counters) *atomic.Int64 { return &c.bytesFetched }, int64(len(data)))
			switch {
			case err == nil && int64(len(data)) != length:
				err = fmt.Errorf("fetcher returned %d bytes for a %d-byte range at %d", len(data), length, off)
			case err != nil && errors.Is(rctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil:
				err = fmt.Errorf("request for %d bytes at %d timed out after %v: %w", length, off, timeout, context.DeadlineExceeded)
			}
			results <- result{data, err}
		}()
	}
	start()
	inflight := 1
	var hedge <-chan time.Time
	if hedgeAfter > 0 {
		t := time.NewTimer(hedgeAfter)
		defer t.Stop()
		hedge = t.C
	}
	// A fetcher that ignores its context must not hang the read: give up
	// a little after the last request's own timeout.
	deadline := time.NewTimer(timeout + max(hedgeAfter, 0) + 100*time.Millisecond)
	defer deadline.Stop()
	var firstErr error
	for {
		select {
		case r := <-results:
			inflight--
			if r.err == nil {
				return r.data, nil
			}
			if firstErr == nil {
				firstErr = r.err
			}
			if inflight == 0 {
				return nil, firstErr
			}
		case <-hedge:
			hedge = nil
			im.both.add(func(c *counters) *atomic.Int64 { return &c.hedges }, 1)
			start()
			inflight++
		case <-deadline.C:
			return nil, fmt.Errorf("request for %d bytes at %d did not return within %v: %w", length, off, timeout, context.DeadlineExceeded)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pendingRead copies chunk digest's bytes from inOff into dst if the
// chunk is pending.
func (s *Store) pendingRead(digest string, dst []byte, inOff int64) bool {
	s.mu.Lock()
	p, ok := s.pending[digest]
	s.mu.Unlock()
	if ok {
		copy(dst, p.data[inOff:]) // pending data is never changed
	}
	return ok
}

// addPending makes a verified chunk pending, and schedules the commit
// that writes it: CommitDelay after the last chunk arrived, or at once
// when the pending chunks are over MaxPendingBytes.
func (s *Store) addPending(im *Image, digest string, data []byte) {
	now := time.Now()
	s.mu.Lock()
	if _, ok := s.pending[digest]; !ok {
		s.pending[digest] = pendingChunk{data: data, im: im}
		s.pendingBytes += int64(len(data))
	}
	if s.firstPending.IsZero() {
		s.firstPending = now
	}
	s.lastPending = now
	full := s.pendingBytes >= s.o.MaxPendingBytes
	if !full && s.commitTimer == nil {
		s.commitTimer = time.AfterFunc(s.o.CommitDelay, s.commitWhenIdle)
	}
	s.mu.Unlock()
	if full {
		s.commit()
	}
}

// commitWhenIdle is the commit timer's: it commits once no chunk arrived
// for CommitDelay, or the oldest pending one has waited maxCommitWait,
// and otherwise waits again.
func (s *Store) commitWhenIdle() {
	s.mu.Lock()
	s.commitTimer = nil
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return
	}
	now := time.Now()
	if wait := s.o.CommitDelay - now.Sub(s.lastPending); wait > 0 && now.Sub(s.firstPending) < maxCommitWait {
		s.commitTimer = time.AfterFunc(wait, s.commitWhenIdle)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.commit()
}

// commit writes the pending chunks into the cache: each to a temporary
// file, then one flush of the file system for all of them, then each
// renamed to its digest. A chunk's name thus only ever holds its complete,
// verified content, whatever crash happens; a crash before the renames
// only loses the batch, which is fetched again. A chunk that cannot be
// written (a full disk) leaves memory and costs a later refetch.
func (s *Store) commit() {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	type entry struct {
		digest string
		pendingChunk
		tmp string
	}
	s.mu.Lock()
	batch := make([]entry, 0, len(s.pending))
	for d, p := range s.pending {
		batch = append(batch, entry{digest: d, pendingChunk: p})
	}
	s.firstPending = time.Time{}
	s.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	failed := func(e entry) {
		e.im.both.add(func(c *counters) *atomic.Int64 { return &c.cacheWriteErrors }, 1)
		if e.tmp != "" {
			os.Remove(e.tmp)
		}
	}
	written := batch[:0]
	for _, e := range batch {
		tmp, err := writeTemp(s.tmpDir, e.data)
		if err != nil {
			failed(e)
			continue
		}
		e.tmp = tmp
		written = append(written, e)
	}
	paths := make([]string, len(written))
	for k, e := range written {
		paths[k] = e.tmp
	}
	if err := syncFiles(s.tmpDir, paths); err != nil {
		for _, e := range written {
			failed(e)
		}
		written = written[:0]
	}
	var added int64
	now := time.Now()
	committed := make(map[string]bool, len(written))
	for _, e := range written {
		if err := os.Rename(e.tmp, s.chunkPath(e.digest)); err != nil {
			failed(e)
			continue
		}
		committed[e.digest] = true
		added += int64(len(e.data))
	}
	s.mu.Lock()
	for _, e := range batch {
		delete(s.pending, e.digest)
		s.pendingBytes -= int64(len(e.data))
		if committed[e.digest] {
			s.verified[e.digest] = now
		}
	}
	s.mu.Unlock()
	if s.used.Add(added) > s.o.MaxBytes {
		s.evict()
	}
}

// syncFiles flushes the files at paths, all in dir, to the disk: with one
// syncfs(2) of dir's file system, which costs one journal commit where a
// fsync per file costs one each, or, where syncfs is missing, a fsync
// per file.
func syncFiles(dir string, paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = unix.Syncfs(int(d.Fd()))
	d.Close()
	if !errors.Is(err, unix.ENOSYS) {
		return err
	}
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// writeTemp writes data to a new temporary file in dir, not flushed, and
// returns its path.
func writeTemp(dir string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, "chunk-*")
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// evict scans the cache and, if it is over MaxBytes, removes the least
// recently used chunk files (oldest mtime first) down to 90 % of it.
// Removing a file a reader has open is harmless (the reader keeps its
// bytes), and a later read of it fetches it again, so no chunk needs
// pinning. Other processes sharing the directory may evict at the same
// time; a file already gone is skipped.
func (s *Store) evict() error {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	type entry struct {
		path, digest string
		size         int64
		mtime        time.Time
	}
	var entries []entry
	var total int64
	err := filepath.WalkDir(s.chunkDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		entries = append(entries, entry{p, d.Name(), info.Size(), info.ModTime()})
		total += info.Size()
		return nil
	})
	if err != nil {
		return fmt.Errorf("blockstore: scanning cache: %w", err)
	}
	s.used.Store(total)
	if total <= s.o.MaxBytes {
		return nil
	}
	slices.SortFunc(entries, func(a, b entry) int { return a.mtime.Compare(b.mtime) })
	target := s.o.MaxBytes / 10 * 9
	for _, e := range entries {
		if total <= target {
			break
		}
		if err := os.Remove(e.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			continue
		}
		s.mu.Lock()
		delete(s.verified, e.digest)
		s.mu.Unlock()
		total -= e.size
		s.used.Add(-e.size)
		s.c.evictions.Add(1)
		s.c.evictedBytes.Add(e.size)
	}
	return nil
}

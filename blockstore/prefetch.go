package blockstore

import (
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultPrefetchWorkers is PrefetchOrder's fetch budget when none is
// given: lazy-blocks.md §4 measured 8 and 32 workers alike at 1 MiB chunks
// and 32 a little better at 256 KiB; 8 leaves the link to demand reads.
const DefaultPrefetchWorkers = 8

// A prefetch fetches neighbouring chunks with one request: a chunk it
// starts takes along those next to it (and next to those, up to
// maxStretch chunks) that come up to stretchWindow places later in its
// order. A run's trace lists neighbours close together but seldom one
// right after the other (the guest reads a file's pages, then the
// directory beside it); one request for them saves the store, the link
// and pe a request's work each, and a round trip. But chunks taken along
// early take the link from the ones listed first: with 8 stretches of up
// to 8 in flight, a run on a 30 MB/s link waited twice as long for chunks
// (docs/benchmarks.md). So a claim takes neighbours only while the chunks
// in flight are fewer than stretchFactor times the workers (always
// enough for one full stretch), and no read of the image has waited for
// a fetch within stretchQuiet: once the guest waits, the link is short of
// what it needs, and each chunk comes in its own request, in order.
const (
	stretchWindow = 16
	maxStretch    = 4
	stretchFactor = 2
	stretchQuiet  = 250 * time.Millisecond
)

// sched keeps prefetches below demand reads: it counts an image's fetches
// in flight that demand reads started, and lets a prefetch start one only
// while those and the prefetches' own stay under the prefetch's budget.
// Demand reads never wait for it.
type sched struct {
	mu       sync.Mutex
	demand   int
	prefetch int
	wake     chan struct{} // closed (and replaced) when a count drops
}

func (s *sched) changedLocked() {
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}

func (s *sched) startDemand() {
	s.mu.Lock()
	s.demand++
	s.mu.Unlock()
}

func (s *sched) endDemand() {
	s.mu.Lock()
	s.demand--
	s.changedLocked()
	s.mu.Unlock()
}

// take waits until fewer than budget fetches (demand and prefetch) are in
// flight, then counts one more prefetch.
func (s *sched) take(ctx context.Context, budget int) error {
	for {
		s.mu.Lock()
		if s.demand+s.prefetch < budget {
			s.prefetch++
			s.mu.Unlock()
			return nil
		}
		if s.wake == nil {
			s.wake = make(chan struct{})
		}
		w := s.wake
		s.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *sched) release() {
	s.mu.Lock()
	s.prefetch--
	s.changedLocked()
	s.mu.Unlock()
}

// PrefetchResult says what a PrefetchOrder did.
type PrefetchResult struct {
	// Fetched is the chunks it fetched (or joined a fetch of).
	Fetched int
	// Cached is the chunks it skipped because they were cached already,
	// or listed before.
	Cached int
	// Failed is the chunks whose fetch failed; a demand read of them
	// tries again and reports the error.
	Failed int
	// Err is the first fetch error, or why the prefetch stopped early
	// (its context's error, ErrClosed), or nil.
	Err error
}

// Prefetcher is a PrefetchOrder in progress.
type Prefetcher struct {
	cancel context.CancelFunc
	done   chan struct{}
	res    PrefetchResult
}

// Wait waits until every chunk was prefetched or the prefetch stopped, and
// returns what it did.
func (p *Prefetcher) Wait() PrefetchResult {
	<-p.done
	return p.res
}

// Stop ends the prefetch (fetches it started and nobody else waits for are
// cancelled) and returns what it did.
func (p *Prefetcher) Stop() PrefetchResult {
	p.cancel()
	return p.Wait()
}

// Done is closed when the prefetch has ended.
func (p *Prefetcher) Done() <-chan struct{} { return p.done }

// PrefetchOrder fetches the chunks of order into the cache in the
// background, starting them in that order (a recorded Trace's Chunks, an
// Index's MetadataChunks), and returns at once. Chunks already cached, or
// being fetched, are not fetched again; numbers out of range are skipped.
//
// Prefetches rank below demand reads: a demand read's fetch starts at once
// however many prefetches are in flight, and a prefetch takes one of
// workers slots only while the image's demand fetches in flight plus its
// own are fewer than workers (0 means DefaultPrefetchWorkers), so the
// fetches queued behind a demand read wait for it. A failed chunk does
// not stop the prefetch. It stops when ctx ends, Stop is called or the
// image is closed.
func (im *Image) PrefetchOrder(ctx context.Context, order []int, workers int) *Prefetcher {
	if workers <= 0 {
		workers = DefaultPrefetchWorkers
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(im.ctx, cancel)
	p := &Prefetcher{cancel: cancel, done: make(chan struct{})}
	var (
		mu   sync.Mutex
		next int
		wg   sync.WaitGroup
		// at holds each listed chunk's first place in order; taken,
		// the chunks claimed, alone or as a neighbour.
		at    = make(map[int]int, len(order))
		taken = map[int]bool{}
		// inflight counts the chunks claimed and not yet in; a claim
		// takes neighbours along only while they are fewer than
		// maxInFlight.
		inflight    int
		maxInFlight = max(maxStretch, stretchFactor*workers)
	)
	for k := len(order) - 1; k >= 0; k-- {
		at[order[k]] = k
	}
	// near says whether chunk j is in order soon after next, unclaimed.
	near := func(j int) bool {
		k, ok := at[j]
		return ok && k >= next && k < next+stretchWindow && !taken[j]
	}
	// claim returns the next stretch of chunks to fetch, skipping
	// cached ones, or -1, -1 when order is used up.
	claim := func() (lo, hi int) {
		for {
			mu.Lock()
			if next >= len(order) || ctx.Err() != nil {
				mu.Unlock()
				return -1, -1
			}
			i := order[next]
			next++
			if i < 0 || i >= len(im.ix.Chunks) {
				mu.Unlock()
				continue
			}
			if taken[i] {
				// Listed before (skipped as cached), or taken along
				// with a neighbour (counted there).
				if at[i] < next-1 {
					p.res.Cached++
				}
				mu.Unlock()
				continue
			}
			taken[i] = true
			inflight++
			mu.Unlock()
			if im.isCached(i) {
				mu.Lock()
				inflight--
				p.res.Cached++
				mu.Unlock()
				continue
			}
			lo, hi = i, i
			for hi-lo+1 < maxStretch {
				mu.Lock()
				var j int
				switch {
				case hi+1 < len(im.ix.Chunks) && near(hi+1):
					j = hi + 1
				case lo > 0 && near(lo-1):
					j = lo - 1
				default:
					mu.Unlock()
					return lo, hi
				}
				if inflight >= maxInFlight || im.readsWaited(stretchQuiet) {
					mu.Unlock()
					return lo, hi
				}
				inflight++
				taken[j] = true
				mu.Unlock()
				if im.isCached(j) {
					mu.Lock()
					inflight--
					p.res.Cached++
					mu.Unlock()
					return lo, hi
				}
				lo, hi = min(lo, j), max(hi, j)
			}
			return lo, hi
		}
	}
	for range min(workers, len(order)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				// The slot first, then the chunks: chunks start in
				// order, whichever worker gets a slot.
				if err := im.sched.take(ctx, workers); err != nil {
					return
				}
				lo, hi := claim()
				if lo < 0 {
					im.sched.release()
					return
				}
				failed, err := im.prefetchStretch(ctx, lo, hi)
				im.sched.release()
				mu.Lock()
				inflight -= hi - lo + 1
				switch {
				case err == nil:
					p.res.Fetched += hi - lo + 1
				case ctx.Err() != nil || errors.Is(err, ErrClosed):
				default:
					p.res.Fetched += hi - lo + 1 - failed
					p.res.Failed += failed
					if p.res.Err == nil {
						p.res.Err = err
					}
				}
				mu.Unlock()
			}
		})
	}
	go func() {
		wg.Wait()
		stop()
		if p.res.Err == nil {
			switch {
			case im.ctx.Err() != nil:
				p.res.Err = ErrClosed
			case ctx.Err() != nil && next < len(order):
				p.res.Err = ctx.Err()
			}
		}
		cancel()
		close(p.done)
	}()
	return p
}

// isCached says whether chunk i is in the cache or on its way there,
// without fetching it or counting a read.
func (im *Image) isCached(i int) bool {
	im.filesMu.RLock()
	_, open := im.files[i]
	im.filesMu.RUnlock()
	return open || im.s.has(im.ix.Chunks[i])
}

// PrefetchPlan returns what a run prefetches, in order: the chunks of its
// command's trace t (nil if there is none), which hold what the last run
// read in the order it read it, metadata included; then the image's
// metadata chunks the trace did not list, which a different path through
// the program may look up. Without a trace, the metadata chunks alone.
func PrefetchPlan(ix *Index, t *Trace) []int {
	var out []int
	seen := map[int]bool{}
	if t != nil {
		for _, i := range t.Chunks {
			if !seen[i] {
				seen[i] = true
				out = append(out, i)
			}
		}
	}
	for _, i := range ix.MetadataChunks {
		if !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	return out
}

package blockstore

import (
	"sync/atomic"
	"time"
)

// Stats are the store's counters, for a run's --json figures and the
// server's /metrics. A Store's Stats cover every image it opened; an
// Image's cover that image only. A chunk touched by a read counts once per
// read as a hit, a miss or a join.
type Stats struct {
	// Gets is the number of Fetch calls, hedges and retries included.
	Gets int64 `json:"gets"`
	// Hedges is the number of second requests sent because the first
	// was slow.
	Hedges int64 `json:"hedges"`
	// Retries is the number of attempts after a failed one.
	Retries int64 `json:"retries"`
	// BytesFetched is the bytes Fetch returned, including those of
	// losing hedges and corrupt chunks.
	BytesFetched int64 `json:"bytes_fetched"`
	// Hits is chunk reads served from the cache.
	Hits int64 `json:"hits"`
	// Misses is chunk reads that started a fetch.
	Misses int64 `json:"misses"`
	// Joins is chunk reads that waited for a fetch another read started.
	Joins int64 `json:"joins"`
	// DigestMismatches is fetched chunks whose sha256 was wrong.
	DigestMismatches int64 `json:"digest_mismatches"`
	// CorruptCached is cached chunk files whose sha256 was wrong (a torn
	// write after a crash, a damaged disk); they were dropped and fetched.
	CorruptCached int64 `json:"corrupt_cached"`
	// CacheWriteErrors is fetched chunks that could not be written to the
	// cache (a full disk); they were served from memory.
	CacheWriteErrors int64 `json:"cache_write_errors"`
	// Evictions and EvictedBytes count chunk files removed to keep the
	// cache under its size limit.
	Evictions    int64 `json:"evictions"`
	EvictedBytes int64 `json:"evicted_bytes"`
	// Stalled is the time reads spent waiting for fetches, summed over
	// reads (concurrent waits add up).
	Stalled time.Duration `json:"stalled_ns"`
}

// counters is the live, atomically updated form of Stats.
type counters struct {
	gets, hedges, retries, bytesFetched       atomic.Int64
	hits, misses, joins                       atomic.Int64
	digestMismatches, corruptCached           atomic.Int64
	cacheWriteErrors, evictions, evictedBytes atomic.Int64
	stalled                                   atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Gets:             c.gets.Load(),
		Hedges:           c.hedges.Load(),
		Retries:          c.retries.Load(),
		BytesFetched:     c.bytesFetched.Load(),
		Hits:             c.hits.Load(),
		Misses:           c.misses.Load(),
		Joins:            c.joins.Load(),
		DigestMismatches: c.digestMismatches.Load(),
		CorruptCached:    c.corruptCached.Load(),
		CacheWriteErrors: c.cacheWriteErrors.Load(),
		Evictions:        c.evictions.Load(),
		EvictedBytes:     c.evictedBytes.Load(),
		Stalled:          time.Duration(c.stalled.Load()),
	}
}

// pair updates an image's counters and its store's together.
type pair [2]*counters

func (p pair) add(f func(*counters) *atomic.Int64, n int64) {
	for _, c := range p {
		f(c).Add(n)
	}
}

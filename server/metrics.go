package server

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pe-project/pe/blockstore"
)

// metrics are what /metrics shows.
type metrics struct {
	requests    *prometheus.CounterVec
	runDuration *prometheus.HistogramVec
	queueWait   prometheus.Histogram
	queueDepth  prometheus.Gauge
	vmsRunning  prometheus.Gauge
	imageCache  *prometheus.CounterVec
	rateLimited prometheus.Counter
	// streamDropped counts streamed runs whose client fell behind.
	streamDropped prometheus.Counter
	gistRequests  *prometheus.CounterVec
	snapshotRuns  *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pe_http_requests_total",
			Help: "HTTP requests answered, by route and status code.",
		}, []string{"route", "code"}),
		runDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pe_run_duration_seconds",
			Help:    "Wall time of runs from taking a VM slot to the result, by outcome (Ok, Overtime, Panic, error).",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
		}, []string{"kind"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pe_queue_wait_seconds",
			Help:    "Time runs waited for a VM slot.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pe_queue_depth",
			Help: "Runs waiting for a VM slot.",
		}),
		vmsRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pe_vms_running",
			Help: "VM slots in use.",
		}),
		imageCache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pe_image_cache_total",
			Help: "Images runs used, by whether the cache had them (hit) or pe pulled and converted them (miss).",
		}, []string{"result"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pe_rate_limited_total",
			Help: "Requests refused by the per-client rate limit.",
		}),
		streamDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pe_stream_dropped_total",
			Help: "Streamed runs whose client fell behind, so that their live output stopped (the run went on to its result).",
		}),
		gistRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pe_gist_requests_total",
			Help: "Gist proxy requests, by outcome.",
		}, []string{"result"}),
		snapshotRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pe_snapshot_runs_total",
			Help: "Runs of presets from their snapshot (restored), or booted after a restore failed (fallback).",
		}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{
		m.requests, m.runDuration, m.queueWait, m.queueDepth, m.vmsRunning, m.imageCache, m.rateLimited, m.streamDropped, m.gistRequests, m.snapshotRuns,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return m, nil
}

// registerHealthMetrics registers pe_ready and pe_draining, read from the
// readiness state at each scrape.
func (s *Server) registerHealthMetrics(reg *prometheus.Registry) error {
	for _, c := range []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pe_ready",
			Help: "1 when /healthz answers ready (the worker takes runs), else 0.",
		}, func() float64 { return boolGauge(s.report().Ready) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pe_draining",
			Help: "1 once the worker is shutting down (refusing new runs, finishing its own), else 0.",
		}, func() float64 { return boolGauge(s.draining.Load()) }),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	return nil
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// chunkMetric is one pe_chunk_*_total counter and the Stats field it shows.
type chunkMetric struct {
	desc  *prometheus.Desc
	value func(blockstore.Stats) float64
}

// chunkStats is the collector of the chunk store's counters: read from
// the store at each scrape, as the store keeps them itself.
type chunkStats struct {
	read    func() blockstore.Stats
	metrics []chunkMetric
}

// chunkCollector returns a collector of the counters read returns.
func chunkCollector(read func() blockstore.Stats) prometheus.Collector {
	c := &chunkStats{read: read}
	for _, m := range []struct {
		name, help string
		value      func(blockstore.Stats) float64
	}{
		{"pe_chunk_gets_total", "Ranged GETs of image chunks sent to object storage (hedges and retries included).", func(s blockstore.Stats) float64 { return float64(s.Gets) }},
		{"pe_chunk_bytes_fetched_total", "Bytes of image chunks fetched from object storage.", func(s blockstore.Stats) float64 { return float64(s.BytesFetched) }},
		{"pe_chunk_hits_total", "Chunk reads served from the local chunk cache.", func(s blockstore.Stats) float64 { return float64(s.Hits) }},
		{"pe_chunk_misses_total", "Chunk reads that started a fetch.", func(s blockstore.Stats) float64 { return float64(s.Misses) }},
		{"pe_chunk_joins_total", "Chunk reads that waited for a fetch another read started.", func(s blockstore.Stats) float64 { return float64(s.Joins) }},
		{"pe_chunk_retries_total", "Chunk fetches retried after a failure.", func(s blockstore.Stats) float64 { return float64(s.Retries) }},
		{"pe_chunk_hedges_total", "Second requests sent for slow chunk fetches.", func(s blockstore.Stats) float64 { return float64(s.Hedges) }},
		{"pe_chunk_digest_mismatches_total", "Fetched chunks whose sha256 did not match the index.", func(s blockstore.Stats) float64 { return float64(s.DigestMismatches) }},
		{"pe_chunk_evictions_total", "Chunk files removed to keep the chunk cache under its size.", func(s blockstore.Stats) float64 { return float64(s.Evictions) }},
		{"pe_chunk_stall_seconds_total", "Time reads of lazily read images waited for fetches, summed over reads.", func(s blockstore.Stats) float64 { return s.Stalled.Seconds() }},
	} {
		c.metrics = append(c.metrics, chunkMetric{prometheus.NewDesc(m.name, m.help, nil, nil), m.value})
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *chunkStats) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.metrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector.
func (c *chunkStats) Collect(ch chan<- prometheus.Metric) {
	s := c.read()
	for _, m := range c.metrics {
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, m.value(s))
	}
}

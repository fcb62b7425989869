package server

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are what /metrics shows.
type metrics struct {
	requests     *prometheus.CounterVec
	runDuration  *prometheus.HistogramVec
	queueWait    prometheus.Histogram
	queueDepth   prometheus.Gauge
	vmsRunning   prometheus.Gauge
	imageCache   *prometheus.CounterVec
	rateLimited  prometheus.Counter
	gistRequests *prometheus.CounterVec
	snapshotRuns *prometheus.CounterVec
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
		m.requests, m.runDuration, m.queueWait, m.queueDepth, m.vmsRunning, m.imageCache, m.rateLimited, m.gistRequests, m.snapshotRuns,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	return m, nil
}

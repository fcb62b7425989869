package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore"
)

// TestChunkMetrics checks that /metrics shows the chunk store's counters
// as they are at the scrape, and nothing of them without a store.
func TestChunkMetrics(t *testing.T) {
	stats := blockstore.Stats{Gets: 3, BytesFetched: 1 << 20, Hits: 5, Misses: 3, Stalled: 1500 * time.Millisecond}
	metrics := func(cfg Config) string {
		t.Helper()
		_, url := testServer(t, cfg)
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	got := metrics(Config{ChunkStats: func() blockstore.Stats { return stats }})
	for _, want := range []string{"pe_chunk_gets_total 3", "pe_chunk_bytes_fetched_total 1.048576e+06", "pe_chunk_hits_total 5",
		"pe_chunk_misses_total 3", "pe_chunk_stall_seconds_total 1.5", "# TYPE pe_chunk_gets_total counter"} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if got := metrics(Config{}); strings.Contains(got, "pe_chunk_") {
		t.Error("metrics show chunk counters without a chunk store")
	}
}

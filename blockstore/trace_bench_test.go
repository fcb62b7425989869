package blockstore

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkTracePrefetch replays a program's start: 24 reads of 64 KiB,
// one after another, in 24 different chunks scattered over the benchmark
// image (64 chunks of 512 KiB, 30 ms per fetch). Cold with demand reads
// only, every read waits a round trip; cold with the recorded trace
// prefetched (PrefetchOrder, 8 workers, started with the reads), the
// reads mostly find their chunk arriving or there; warm, every chunk is
// cached.
//
//	go test -run '^$' -bench BenchmarkTracePrefetch -benchtime 5x ./blockstore
func BenchmarkTracePrefetch(b *testing.B) {
	data, ix := testImage(b, benchSize, DefaultChunkSize)
	slow := &fakeFetcher{data: data, latency: benchLatency}
	rng := rand.New(rand.NewPCG(3, 4))
	trace := rng.Perm(len(ix.Chunks))[:24]
	run := func(b *testing.B, im *Image) {
		p := make([]byte, 64<<10)
		for k, c := range trace {
			off := int64(c)*DefaultChunkSize + int64(k%8)*int64(len(p))
			if _, err := im.ReadAt(p, off); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, tt := range []struct {
		name     string
		warm     bool
		prefetch bool
	}{
		{"cold-demand", false, false},
		{"cold-trace8", false, true},
		{"warm", true, false},
	} {
		b.Run(tt.name, func(b *testing.B) {
			var st Stats
			for b.Loop() {
				b.StopTimer()
				s := newStore(b, Options{Dir: b.TempDir()})
				im, _ := s.Open(ix, slow)
				if tt.warm {
					im.PrefetchOrder(b.Context(), trace, 8).Wait()
					s.Close()
					im.Close()
					im, _ = s.Open(ix, slow)
				}
				b.StartTimer()
				var p *Prefetcher
				if tt.prefetch {
					p = im.PrefetchOrder(b.Context(), trace, 8)
				}
				run(b, im)
				if p != nil {
					p.Stop()
				}
				st = im.Stats()
				im.Close()
			}
			b.ReportMetric(float64(st.Gets), "GETs/op")
		})
	}
}

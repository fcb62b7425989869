package blockstore

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The benchmark's image: 32 MiB in 512 KiB chunks (64 chunks), behind a
// fetcher that adds 30 ms to every request, the figure lazy-blocks.md §4
// measured S3 reads at (24-47 ms).
const (
	benchSize    = 32 << 20
	benchLatency = 30 * time.Millisecond
)

// readPattern reads the image through r.
type readPattern struct {
	name  string
	bytes int64 // read per call
	read  func(b *testing.B, r io.ReaderAt)
}

var benchPatterns = []readPattern{
	// Sequential 128 KiB reads, the largest QEMU's NBD client sends.
	{"seq128k", benchSize, func(b *testing.B, r io.ReaderAt) {
		p := make([]byte, 128<<10)
		for off := int64(0); off < benchSize; off += int64(len(p)) {
			if _, err := r.ReadAt(p, off); err != nil {
				b.Fatal(err)
			}
		}
	}},
	// 4 KiB reads at 2,048 random places, the same places every time.
	{"rand4k", 2048 * 4096, func(b *testing.B, r io.ReaderAt) {
		rng := rand.New(rand.NewPCG(1, 2))
		p := make([]byte, 4096)
		for range 2048 {
			off := rng.Int64N(benchSize/4096) * 4096
			if _, err := r.ReadAt(p, off); err != nil {
				b.Fatal(err)
			}
		}
	}},
}

// BenchmarkRead compares reading an image from a local file, through a
// warm store (chunks cached and already used by this process, or cached
// but new to the process, with and without VerifyCached), and through a cold store whose fetcher
// waits 30 ms per request: demand reads only, and with every chunk
// prefetched by 16 workers first (what a recorded trace gives).
//
//	go test -run '^$' -bench BenchmarkRead -benchtime 5x ./blockstore
func BenchmarkRead(b *testing.B) {
	data, ix := testImage(b, benchSize, DefaultChunkSize)
	path := filepath.Join(b.TempDir(), "image")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	file, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer file.Close()
	slow := &fakeFetcher{data: data, latency: benchLatency}
	warmDir := b.TempDir()
	warm := newStore(b, Options{Dir: warmDir})
	warmIm := openImage(b, warm, ix, slow)
	if _, err := warmIm.ReadAt(make([]byte, benchSize), 0); err != nil {
		b.Fatal(err)
	}
	warm.Close() // the chunks on disk, as a run leaves them at its exit

	for _, pat := range benchPatterns {
		b.Run("local/"+pat.name, func(b *testing.B) {
			b.SetBytes(pat.bytes)
			for b.Loop() {
				pat.read(b, file)
			}
		})
		b.Run("warm/"+pat.name, func(b *testing.B) {
			b.SetBytes(pat.bytes)
			for b.Loop() {
				pat.read(b, warmIm)
			}
		})
		for _, verify := range []bool{false, true} {
			name := "warm-new-process/"
			if verify {
				name = "warm-new-process-verify/"
			}
			b.Run(name+pat.name, func(b *testing.B) {
				b.SetBytes(pat.bytes)
				for b.Loop() {
					// A new Store, as in a new run; with
					// VerifyCached it hashes each cached chunk
					// on first use.
					s, err := NewStore(Options{Dir: warmDir, VerifyCached: verify})
					if err != nil {
						b.Fatal(err)
					}
					im, _ := s.Open(ix, slow)
					pat.read(b, im)
					im.Close()
				}
			})
		}
		b.Run("cold/"+pat.name, func(b *testing.B) {
			b.SetBytes(pat.bytes)
			var st Stats
			for b.Loop() {
				b.StopTimer()
				s := newStore(b, Options{Dir: b.TempDir()})
				im, _ := s.Open(ix, slow)
				b.StartTimer()
				pat.read(b, im)
				st = im.Stats()
				im.Close()
			}
			b.ReportMetric(float64(st.Gets), "GETs/op")
			b.ReportMetric(st.Stalled.Seconds(), "stalled-s/op")
		})
	}
	b.Run("cold-prefetch16/seq128k", func(b *testing.B) {
		b.SetBytes(benchSize)
		for b.Loop() {
			b.StopTimer()
			s := newStore(b, Options{Dir: b.TempDir()})
			im, _ := s.Open(ix, slow)
			b.StartTimer()
			prefetchAll(b, im, 16)
			benchPatterns[0].read(b, im)
			im.Close()
		}
	})
}

// prefetchAll fetches every chunk of im with n workers, in chunk order.
func prefetchAll(b *testing.B, im *Image, n int) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			for i := range next {
				if err := im.Prefetch(context.Background(), i); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := range im.Index().Chunks {
		next <- i
	}
	close(next)
	wg.Wait()
}

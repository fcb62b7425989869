package engine

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pe-project/pe/guest"
)

// TestBenchLive measures the data channel (docs/benchmarks.md, "Live
// runs"); it runs only with PE_BENCH_LIVE=1 (scripts/bench-live.sh):
//
//   - latency: a line goes to the program's stdin on the channel, cat
//     writes it back, and the caller's writer gets it; the round trip,
//     N times (PE_BENCH_N, default 200), is an upper bound of the time
//     from the program's write to the host's read (half of it is the
//     usual estimate);
//   - throughput: cat of 100 MiB of zeros to stdout, the result taken
//     from the I/O disk only, then also streamed on the channel to a
//     writer that drops it; the program's time in the guest and the
//     run's, for each.
func TestBenchLive(t *testing.T) {
	if os.Getenv("PE_BENCH_LIVE") != "1" {
		t.Skip("a benchmark: set PE_BENCH_LIVE=1 (scripts/bench-live.sh)")
	}
	f := vmSetup(t)
	const size = 100 << 20
	e := newBootSnapshotEngine(t, f, func(o *Options) { o.Limits = guest.Limits{MaxOutput: size} })
	// Makes the boot snapshot.
	run(t, e, &RunRequest{Overrides: Overrides{Cmd: []string{"true"}}})

	n := 200
	fmt.Sscan(os.Getenv("PE_BENCH_N"), &n)
	rtts := echoRoundTrips(t, e, n)
	slices.Sort(rtts)
	pct := func(p float64) time.Duration { return rtts[min(len(rtts)-1, int(p*float64(len(rtts))))] }
	fmt.Printf("latency (round trip stdin -> cat -> stdout, %d lines): median %v, p90 %v, p99 %v, min %v, max %v\n",
		len(rtts), pct(0.5), pct(0.9), pct(0.99), rtts[0], rtts[len(rtts)-1])

	cmd := fmt.Sprintf("head -c %d /dev/zero | cat", size)
	// The paths alternate, so that a change of the host's load hits each.
	paths := []string{"none (cat > /dev/null in the guest)", "I/O disk only", "I/O disk + channel"}
	for i := range 2 * len(paths) {
		path := paths[i%len(paths)]
		req := &RunRequest{Overrides: Overrides{Cmd: sh(cmd)}, MaxOutput: size, Timeout: 10 * time.Minute}
		var got countWriter
		switch i % len(paths) {
		case 0:
			req.Cmd = sh(cmd + " > /dev/null")
		case 2:
			req.Live = &Live{Stdout: &got, Stderr: io.Discard}
		}
		start := time.Now()
		res := run(t, e, req)
		total := time.Since(start)
		if i%len(paths) != 0 && len(res.Stdout) != size || (req.Live != nil && got.n != size) {
			t.Fatalf("%d bytes in the result, %d streamed", len(res.Stdout), got.n)
		}
		prog := res.Durations["guest_program"]
		fmt.Printf("throughput, cat of 100 MiB, %s: program %v (%.0f MiB/s), run %v\n",
			path, prog.Round(time.Millisecond), float64(size>>20)/prog.Seconds(), total.Round(time.Millisecond))
	}
}

// countWriter counts what it is given.
type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	return len(p), nil
}

// echoRoundTrips sends n lines, one at a time, to cat on the channel and
// times each until it comes back.
func echoRoundTrips(t *testing.T, e *Engine, n int) []time.Duration {
	pr, pw := io.Pipe()
	back := make(chan struct{}, 1)
	var mu sync.Mutex
	var seen strings.Builder
	out := writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		seen.Write(p)
		if strings.Contains(seen.String(), "\n") {
			seen.Reset()
			back <- struct{}{}
		}
		mu.Unlock()
		return len(p), nil
	})
	var rtts []time.Duration
	go func() {
		defer pw.Close()
		// The first line waits for the program to start: not timed.
		for i := 0; i <= n; i++ {
			start := time.Now()
			if _, err := pw.Write([]byte("line\n")); err != nil {
				return
			}
			select {
			case <-back:
			case <-time.After(time.Minute):
				return
			}
			if i > 0 {
				rtts = append(rtts, time.Since(start))
			}
		}
	}()
	res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: []string{"cat"}}, Live: &Live{Stdout: out, Stdin: pr}, Timeout: 5 * time.Minute})
	if len(rtts) != n {
		t.Fatalf("%d round trips of %d; stdout %d bytes", len(rtts), n, len(res.Stdout))
	}
	return rtts
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

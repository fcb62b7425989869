// Command benchserve measures pe serve's own cost: the same trivial run
// (IMAGE true) through the engine directly and through the HTTP API of a
// server in the same process, at several concurrencies, alternating the
// two so machine load hits both alike. It prints markdown tables of
// requests/s and p50/p99 latency.
//
// Usage: go run ./scripts/benchserve -image oci:/tmp/pe-demo-oci:demo -n 8 -c 1,2,8
// (make build first: it boots bin/pe-init; the image must be in the cache
// or pullable).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/server"
)

func main() {
	ref := flag.String("image", "oci:/tmp/pe-demo-oci:demo", "the image to run true from")
	n := flag.Int("n", 8, "runs per mode and concurrency")
	conc := flag.String("c", "1,2,8", "concurrencies")
	slots := flag.Int("slots", 2, "VM slots (engine MaxConcurrent and server Slots)")
	initBin := flag.String("init", "bin/pe-init", "the guest init")
	flag.Parse()

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	b, err := startBench(ctx, *ref, *initBin, *slots)
	if err != nil {
		log.Fatal(err)
	}
	// Warm up: the image conversion, the initramfs, the VMM choice.
	if err := b.direct(); err != nil {
		log.Fatal(err)
	}
	if err := b.viaHTTP(); err != nil {
		log.Fatal(err)
	}

	var out bytes.Buffer
	fmt.Fprintf(&out, "| concurrency | mode | runs | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n")
	for _, cs := range strings.Split(*conc, ",") {
		c, err := strconv.Atoi(cs)
		if err != nil || c < 1 {
			log.Fatalf("-c %q", *conc)
		}
		lat, wall := b.measure(c, *n)
		writeRows(&out, c, lat, wall)
		fmt.Fprintf(os.Stderr, "concurrency %d done\n", c)
	}
	os.Stdout.Write(out.Bytes())
}

// bench is an engine and a server in front of it, both able to run the
// image.
type bench struct {
	ctx context.Context
	eng *engine.Engine
	ref string
	url string // the server's run endpoint for the image's preset
}

// startBench opens the image cache, makes the engine and serves it on a
// local port until ctx ends, with the image as preset "bench".
func startBench(ctx context.Context, ref, initBin string, slots int) (*bench, error) {
	cache, err := image.OpenCache("")
	if err != nil {
		return nil, err
	}
	src := &engine.CacheSource{Cache: cache}
	eng, err := engine.New(engine.Options{Images: src, InitBinary: initBin, MaxConcurrent: slots, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	srv, err := server.New(server.Config{
		Runner: eng, Presets: []server.Preset{{Name: "bench", Source: ref}},
		Slots: slots, MaxQueue: 64, MaxWait: 10 * time.Minute, RatePerSecond: -1, RunTimeout: time.Minute,
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.Serve(ctx, ln, time.Minute)
	return &bench{ctx: ctx, eng: eng, ref: ref, url: "http://" + ln.Addr().String() + "/api/v2/runi/amd64/linux/bench"}, nil
}

// direct runs true through the engine.
func (b *bench) direct() error {
	res, err := b.eng.Run(b.ctx, &engine.RunRequest{Image: b.ref, Overrides: engine.Overrides{Cmd: []string{"true"}}, Timeout: time.Minute})
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("exit %d: %s", res.ExitCode, res.Error)
	}
	return err
}

// viaHTTP runs true through the server's HTTP API.
func (b *bench) viaHTTP() error {
	resp, err := http.Post(b.url, "application/json", strings.NewReader(`{"cmd":["true"]}`))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r server.RunResponse
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 || r.ExitCode != 0 {
		return fmt.Errorf("status %d, %+v, %v", resp.StatusCode, r, err)
	}
	return nil
}

// measure makes n runs per mode (0: engine, 1: HTTP) at concurrency c and
// returns each mode's latencies and the wall time its rounds took. Rounds
// alternate the modes, so machine load hits both alike; each round is c runs
// at once per mode, until n runs per mode.
func (b *bench) measure(c, n int) (lat [2][]time.Duration, wall [2]time.Duration) {
	for done := 0; done < n; done += c {
		for m, f := range []func() error{b.direct, b.viaHTTP} {
			start := time.Now()
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range min(c, n-done) {
				wg.Go(func() {
					t := time.Now()
					if err := f(); err != nil {
						log.Fatal(err)
					}
					mu.Lock()
					lat[m] = append(lat[m], time.Since(t))
					mu.Unlock()
				})
			}
			wg.Wait()
			wall[m] += time.Since(start)
		}
	}
	return lat, wall
}

// writeRows writes the table rows of concurrency c, one per mode.
func writeRows(out *bytes.Buffer, c int, lat [2][]time.Duration, wall [2]time.Duration) {
	for m, name := range []string{"engine", "HTTP"} {
		l := lat[m]
		slices.Sort(l)
		fmt.Fprintf(out, "| %d | %s | %d | %.3f | %d | %d |\n", c, name, len(l),
			float64(len(l))/wall[m].Seconds(), pct(l, 50).Milliseconds(), pct(l, 99).Milliseconds())
	}
}

// pct is the p-th percentile of sorted durations, 0 if there are none.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

package deploy

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFleetBench measures the fleet for docs/benchmarks.md (run by
// scripts/bench-fleet.sh, which sets PE_FLEET_BENCH=1): runs per second
// and p50/p99 latency of `echo` runs straight to one worker, through
// HAProxy to that worker alone (the others in maintenance) and through
// HAProxy to all three; and the time a SIGKILLed worker takes to leave
// HAProxy's pool, idle and under load.
func TestFleetBench(t *testing.T) {
	if os.Getenv("PE_FLEET_BENCH") != "1" {
		t.Skip("a benchmark: scripts/bench-fleet.sh runs it (PE_FLEET_BENCH=1)")
	}
	f := startFleet(t, t.Context())
	n := 24
	if s := os.Getenv("PE_FLEET_BENCH_N"); s != "" {
		fmt.Sscan(s, &n)
	}
	var rows []string
	measure := func(name, base string, conc, count int) {
		took, wall := f.load(t, base, conc, count)
		slices.Sort(took)
		rows = append(rows, fmt.Sprintf("| %s | %d | %d | %.2f | %d | %d |", name, conc, count,
			float64(count)/wall.Seconds(), pct(took, 50).Milliseconds(), pct(took, 99).Milliseconds()))
		t.Log(rows[len(rows)-1])
	}
	setMaint := func(maint bool) {
		state := "ready"
		if maint {
			state = "maint"
		}
		for _, w := range f.workers[1:] {
			if out, err := f.admin("set server pe/" + w.name + " state " + state); err != nil || strings.TrimSpace(out) != "" {
				t.Fatalf("set server %s state %s: %v %s", w.name, state, err, out)
			}
		}
		if !maint {
			for _, w := range f.workers[1:] {
				f.waitStatus(t, w, "UP")
			}
		}
	}
	// The balancer's own cost, without a VM: GET /healthz, one at a time.
	probe := func(name, base string) {
		c := f.client("127.0.1.200")
		var took []time.Duration
		for range 500 {
			start := time.Now()
			if code, body := getWith(c, base+"/healthz"); code != 200 {
				t.Fatalf("%s/healthz: %d %s", base, code, body)
			}
			took = append(took, time.Since(start))
		}
		slices.Sort(took)
		rows = append(rows, fmt.Sprintf("| %s, GET /healthz (no VM) | 1 | 500 | %.0f | %.2f | %.2f |", name, 500/sum(took).Seconds(),
			float64(pct(took, 50).Microseconds())/1000, float64(pct(took, 99).Microseconds())/1000))
		t.Log(rows[len(rows)-1])
	}
	w1 := f.workers[0]
	setMaint(true)
	for range 2 {
		probe("direct to one worker", w1.url())
		probe("HAProxy, 1 worker", f.lb)
	}
	for range 2 {
		measure("direct to one worker", w1.url(), 1, n/2)
		measure("HAProxy, 1 worker", f.lb, 1, n/2)
	}
	measure("direct to one worker", w1.url(), 2, n)
	measure("HAProxy, 1 worker", f.lb, 2, n)
	setMaint(false)
	measure("HAProxy, 3 workers", f.lb, 2, n)
	measure("HAProxy, 3 workers", f.lb, 6, n)

	// A killed worker leaving the pool: idle, only the health checks see
	// it; under load, the first refused connection marks it down.
	victim := f.workers[2]
	for _, loaded := range []bool{false, true} {
		var times []time.Duration
		for range 3 {
			ctx, stop := context.WithCancel(t.Context())
			var wg sync.WaitGroup
			if loaded {
				wg.Add(1)
				go func() { defer wg.Done(); f.loadUntil(ctx, 6) }()
				time.Sleep(3 * time.Second)
			}
			killed := time.Now()
			victim.kill(t)
			if err := waitFor(30*time.Second, func() bool { return strings.HasPrefix(f.stat(t, victim.name)["status"], "DOWN") }); err != nil {
				t.Fatalf("the killed worker never went DOWN: %v", err)
			}
			times = append(times, time.Since(killed))
			stop()
			wg.Wait()
			victim.start(t, f)
			f.waitStatus(t, victim, "UP")
		}
		t.Logf("killed worker DOWN after (loaded %v): %v", loaded, times)
		rows = append(rows, fmt.Sprintf("| time to leave the pool, %s | %v |", map[bool]string{false: "idle", true: "under load"}[loaded], times))
	}
	fmt.Println("| path | concurrency | runs | runs/s | p50 ms | p99 ms |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		fmt.Println(r)
	}
}

// load sends count runs to base, conc at a time, each client from its own
// address, and returns each run's latency and the wall time. A run that
// fails fails the test.
func (f *fleet) load(t *testing.T, base string, conc, count int) ([]time.Duration, time.Duration) {
	var mu sync.Mutex
	var took []time.Duration
	next := 0
	start := time.Now()
	var wg sync.WaitGroup
	for c := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := f.client(fmt.Sprintf("127.0.1.%d", c+1))
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= count {
					return
				}
				tok := fmt.Sprintf("bench-%d-%d", i, time.Now().UnixNano())
				a := f.run(t.Context(), client, tok, tok, nil, base)
				if a.status != 200 || a.check() != nil {
					t.Errorf("bench run: %s", a)
				}
				mu.Lock()
				took = append(took, a.took)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return took, time.Since(start)
}

// loadUntil keeps conc clients running through HAProxy until ctx is done.
func (f *fleet) loadUntil(ctx context.Context, conc int) {
	var wg sync.WaitGroup
	for c := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := f.client(fmt.Sprintf("127.0.2.%d", c+1))
			for i := 0; ctx.Err() == nil; i++ {
				f.run(context.WithoutCancel(ctx), client, fmt.Sprint("load-", c, "-", i), "", nil)
			}
		}()
	}
	wg.Wait()
}

// sum adds durations up.
func sum(ds []time.Duration) time.Duration {
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return s
}

// pct is the p-th percentile of sorted durations.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

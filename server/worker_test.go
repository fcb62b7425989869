package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/engine"
)

// The tests here are the load balancer's: what HAProxy in front of
// several pe serve workers relies on (deploy/): /healthz, the drain on
// SIGTERM, refusals before the body, the proxy's headers.

// served is a server running Serve on a loopback listener.
type served struct {
	s    *Server
	url  string
	addr string
	stop context.CancelFunc
	// done receives Serve's error, once: see wait.
	done     chan error
	mu       sync.Mutex
	returned bool
	err      error
}

// wait waits up to d for Serve to return, and returns its error
// (errStillServing if it has not).
func (sv *served) wait(d time.Duration) error {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.returned {
		return sv.err
	}
	select {
	case sv.err = <-sv.done:
		sv.returned = true
		return sv.err
	case <-time.After(d):
		return errStillServing
	}
}

var errStillServing = errors.New("Serve has not returned")

// serveTest runs Serve for cfg (over a fake runner unless given) until the
// test ends or stop is called.
func serveTest(t *testing.T, cfg Config, drainTimeout time.Duration) *served {
	t.Helper()
	if cfg.Runner == nil {
		cfg.Runner = newFakeRunner()
	}
	if cfg.Presets == nil {
		cfg.Presets = []Preset{{Name: "demo"}}
	}
	if cfg.RatePerSecond == 0 {
		cfg.RatePerSecond = -1
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	sv := &served{s: s, url: "http://" + ln.Addr().String(), addr: ln.Addr().String(), stop: stop, done: make(chan error, 1)}
	go func() { sv.done <- s.Serve(ctx, ln, drainTimeout) }()
	t.Cleanup(func() {
		s.Abort()
		if err := sv.wait(10 * time.Second); errors.Is(err, errStillServing) {
			t.Error("Serve did not return after Abort")
		}
	})
	return sv
}

// getHealth returns /healthz's status and body.
func getHealth(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitHealth waits until /healthz answers status with body.
func waitHealth(t *testing.T, url string, status int, body string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, b := getHealth(t, url)
		if st == status && b == body {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz: %d %q, want %d %q", st, b, status, body)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeImages resolves every reference, or fails with err for those in
// fail.
type fakeImages struct {
	fail     map[string]error
	resolved atomic.Int64
}

func (f *fakeImages) Resolve(ctx context.Context, ref string) (*engine.ResolvedImage, error) {
	if err := f.fail[ref]; err != nil {
		return nil, err
	}
	f.resolved.Add(1)
	return &engine.ResolvedImage{Reference: ref, Digest: "sha256:" + strings.Repeat("1", 64)}, nil
}

// TestHealthz checks /healthz names each reason the worker cannot run,
// and answers ready once none is left.
func TestHealthz(t *testing.T) {
	tmp := t.TempDir()
	blocked := make(chan struct{}) // never closed: a preparation in progress
	t.Cleanup(func() { close(blocked) })
	for _, c := range []struct {
		desc string
		cfg  Config
		want string // the body; "ready\n" with 200, else 503
	}{
		{"nothing to wait for", Config{}, "ready\n"},
		{"preparation in progress", Config{Prepare: &Preparation{Pending: "boot snapshot not made yet", Run: func(ctx context.Context) error {
			select {
			case <-blocked:
			case <-ctx.Done():
			}
			return ctx.Err()
		}}}, "not ready: boot snapshot not made yet\n"},
		{"preparation done", Config{Prepare: &Preparation{Pending: "boot snapshot not made yet", Run: func(ctx context.Context) error { return nil }}}, "ready\n"},
		{"preparation failed", Config{Prepare: &Preparation{Pending: "VMM not chosen yet", Run: func(ctx context.Context) error { return errors.New("no qemu-system-x86_64") }}},
			"not ready: VMM not chosen yet: no qemu-system-x86_64\n"},
		{"s3 preset's bucket fails", Config{
			Presets: []Preset{{Name: "gcc", Source: "s3://images/ce/gcc:14"}, {Name: "demo"}},
			CheckS3: func(ctx context.Context, ref string) error {
				return fmt.Errorf("reading s3://images/ce/gcc/tags/14: %w", errors.New("connection refused"))
			}},
			"not ready: preset gcc: reading s3://images/ce/gcc/tags/14: connection refused\n"},
		{"s3 preset's bucket answers", Config{
			Presets: []Preset{{Name: "gcc", Source: "s3://images/ce/gcc:14"}},
			CheckS3: func(ctx context.Context, ref string) error { return nil }},
			"ready\n"},
		{"preset does not resolve", Config{
			Presets: []Preset{{Name: "demo", Source: "oci:/srv/demo:latest"}, {Name: "busybox"}},
			Images:  &fakeImages{fail: map[string]error{"oci:/srv/demo:latest": errors.New("no such\nlayout")}}},
			"not ready: preset demo: no such layout\n"},
		{"disk below the limit", Config{DiskDirs: []string{tmp}, MinFreeDisk: DiskLimit{Bytes: 1 << 62}},
			"not ready: disk " + tmp + " has "},
		{"disk below the percentage", Config{DiskDirs: []string{tmp + "/not/made/yet"}, MinFreeDisk: DiskLimit{Percent: 100}},
			"not ready: disk " + tmp + "/not/made/yet has "},
		{"disk above the limit", Config{DiskDirs: []string{tmp}, MinFreeDisk: DiskLimit{Bytes: 1}}, "ready\n"},
		{"several reasons", Config{
			Prepare:     &Preparation{Pending: "boot snapshot not made yet", Run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }},
			Presets:     []Preset{{Name: "gcc", Source: "s3://images/ce/gcc:14"}},
			CheckS3:     func(ctx context.Context, ref string) error { return errors.New("bucket gone") },
			DiskDirs:    []string{tmp},
			MinFreeDisk: DiskLimit{Percent: 100},
		}, "not ready: boot snapshot not made yet\nnot ready: preset gcc: bucket gone\nnot ready: disk " + tmp + " has "},
	} {
		t.Run(c.desc, func(t *testing.T) {
			c.cfg.HealthInterval = time.Hour // one round of checks
			sv := serveTest(t, c.cfg, time.Second)
			var st int
			var b string
			waitFor(t, func() bool {
				st, b = getHealth(t, sv.url)
				return !strings.Contains(b, "not checked yet") && strings.HasPrefix(b, c.want)
			})
			wantStatus := http.StatusServiceUnavailable
			if c.want == "ready\n" {
				wantStatus = http.StatusOK
			}
			if st != wantStatus {
				t.Errorf("status %d, want %d (%q)", st, wantStatus, b)
			}
			if strings.Contains(c.want, "disk") && !strings.Contains(b, "free, below --min-free-disk ") {
				t.Errorf("disk reason %q does not name the limit", b)
			}
		})
	}
}

// TestHealthzCheap checks a probe never waits for a check: a bucket that
// does not answer leaves the preset "not checked yet" and the probe
// answers at once, and a check that passes later makes the worker ready
// at the next round.
func TestHealthzCheap(t *testing.T) {
	var calls atomic.Int64
	hang := make(chan struct{})
	sv := serveTest(t, Config{
		Presets:        []Preset{{Name: "gcc", Source: "s3://images/ce/gcc:14"}},
		HealthInterval: 20 * time.Millisecond,
		CheckS3: func(ctx context.Context, ref string) error {
			switch calls.Add(1) {
			case 1:
				select { // the first check hangs until the test lets it go
				case <-hang:
				case <-ctx.Done():
				}
				return errors.New("timed out")
			case 2:
				return errors.New("bucket gone")
			}
			return nil
		},
	}, time.Second)
	start := time.Now()
	st, b := getHealth(t, sv.url)
	if d := time.Since(start); d > time.Second || st != 503 || b != "not ready: preset gcc: not checked yet\n" {
		t.Errorf("probe during a hanging check: %d %q after %v", st, b, d)
	}
	close(hang)
	waitHealth(t, sv.url, 200, "ready\n")
	if calls.Load() < 3 {
		t.Errorf("%d checks, want 3 or more", calls.Load())
	}
}

// TestHealthzForms checks HEAD and ?json.
func TestHealthzForms(t *testing.T) {
	sv := serveTest(t, Config{Prepare: &Preparation{Pending: "boot snapshot not made yet", Run: func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }}}, time.Second)
	resp, err := http.Head(sv.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("HEAD /healthz: %d, want 503", resp.StatusCode)
	}
	for _, q := range []string{"?json", "?verbose"} {
		resp, err = http.Get(sv.url + "/healthz" + q)
		if err != nil {
			t.Fatal(err)
		}
		var rep HealthReport
		err := json.NewDecoder(resp.Body).Decode(&rep)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		want := HealthReport{Reasons: []string{"not ready: boot snapshot not made yet"}}
		if diff := cmp.Diff(want, rep); diff != "" || resp.StatusCode != 503 || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("GET /healthz%s: %d %s (-want +got):\n%s", q, resp.StatusCode, resp.Header.Get("Content-Type"), diff)
		}
	}
}

// metricValue returns the value of a metric without labels on /metrics.
func metricValue(t *testing.T, url, name string) string {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// rawRequest sends the head of a POST of a body of length bytes over a new
// connection and sends no body: it returns the answer, or fails after
// wait.
func rawRequest(t *testing.T, addr, path string, length int, extra string, wait time.Duration) *http.Response {
	resp, _ := rawRequestTimed(t, addr, path, length, extra, wait)
	return resp
}

// rawRequestTimed is rawRequest, and says how long the answer took.
func rawRequestTimed(t *testing.T, addr, path string, length int, extra string, wait time.Duration) (*http.Response, time.Duration) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n", path, length, extra)
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(wait))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("no answer within %v to a request whose body never came: %v", wait, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// The server closes the connection rather than wait for the body.
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := io.Copy(io.Discard, br); err != nil {
		t.Errorf("the connection after the answer: %d more bytes, then %v; want the server to close it", n, err)
	}
	return resp, took
}

// TestRefusedBeforeBody checks the refusals a balancer retries elsewhere
// come before the body is read, with Connection: close: the body of a
// request answered 503 never arrives here, and the answer comes at once.
func TestRefusedBeforeBody(t *testing.T) {
	for _, c := range []struct {
		desc       string
		cfg        Config
		length     int
		drain      bool
		wantStatus int
		wantError  string
	}{
		{"queue full, small body", Config{Slots: 1, MaxQueue: -1}, 1000, false, 503, "QueueFull"},
		{"queue full, large body", Config{Slots: 1, MaxQueue: -1, MaxBody: 64 << 20}, 32 << 20, false, 503, "QueueFull"},
		{"rate limited", Config{Slots: 4, RatePerSecond: 0.001, RateBurst: 1}, 1000, false, 429, "RateLimited"},
		{"draining", Config{Slots: 4}, 1000, true, 503, "Draining"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			fake := newFakeRunner()
			c.cfg.Runner = fake
			sv := serveTest(t, c.cfg, 30*time.Second)
			// One run holds the slot (and the client's one token).
			done := make(chan int, 1)
			go func() {
				resp, _ := post(t, sv.url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["block"]}`))
				done <- resp.StatusCode
			}()
			waitFor(t, func() bool { _, r := sv.s.queue.counts(); return r == 1 })
			if c.drain {
				sv.stop()
				waitFor(t, func() bool { return sv.s.draining.Load() })
			}
			resp, took := rawRequestTimed(t, sv.addr, "/api/v2/runi/amd64/linux/demo", c.length, "X-Request-Id: lb-1\r\n", 5*time.Second)
			if took > time.Second {
				t.Errorf("answered after %v, want at once", took)
			}
			if resp.StatusCode != c.wantStatus || resp.Header.Get("Retry-After") == "" || !resp.Close || resp.Header.Get("X-Request-Id") != "lb-1" {
				t.Errorf("status %d Retry-After %q Connection: close %v X-Request-Id %q, want %d with Retry-After, Connection: close and X-Request-Id lb-1",
					resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close, resp.Header.Get("X-Request-Id"), c.wantStatus)
			}
			t.Logf("answered in %v", took)
			fake.release <- struct{}{}
			if st := <-done; st != 200 {
				t.Errorf("the run in progress: status %d, want 200", st)
			}
		})
	}
}

// TestDrain checks a drain as HAProxy sees it: once Serve's context is
// done, /healthz answers 503 "draining" on the listener that stays open,
// new runs get 503 Draining before their body is read, the run in
// progress and the one queued finish with their results, and then Serve
// returns nil and the listener is closed.
func TestDrain(t *testing.T) {
	fake := newFakeRunner()
	sv := serveTest(t, Config{Runner: fake, Slots: 1, MaxQueue: 2}, time.Minute)
	waitHealth(t, sv.url, 200, "ready\n")
	if v := metricValue(t, sv.url, "pe_ready"); v != "1" {
		t.Errorf("pe_ready %q before the drain, want 1", v)
	}
	results := make(chan string, 2)
	for i := range 2 {
		go func() {
			resp, b := post(t, sv.url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["block"]}`))
			results <- fmt.Sprint(resp.StatusCode, " ", strings.Contains(string(b), `"Ok"`))
		}()
		waitFor(t, func() bool { q, r := sv.s.queue.counts(); return q+r == i+1 })
	}
	sv.stop()
	waitHealth(t, sv.url, 503, "draining\n")
	if v := metricValue(t, sv.url, "pe_draining"); v != "1" {
		t.Errorf("pe_draining %q while draining, want 1", v)
	}
	if v := metricValue(t, sv.url, "pe_ready"); v != "0" {
		t.Errorf("pe_ready %q while draining, want 0", v)
	}
	resp := rawRequest(t, sv.addr, "/api/v2/runi/amd64/linux/demo", 100, "", 5*time.Second)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" || !resp.Close {
		t.Errorf("a new run while draining: %d Retry-After %q Connection: close %v, want 503, 1, true", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close)
	}
	if err := sv.wait(100 * time.Millisecond); !errors.Is(err, errStillServing) {
		t.Fatalf("Serve returned %v with runs in progress", err)
	}
	fake.release <- struct{}{}
	fake.release <- struct{}{}
	for range 2 {
		if r := <-results; r != "200 true" {
			t.Errorf("a run accepted before the drain: %s, want 200 with a result", r)
		}
	}
	if err := sv.wait(10 * time.Second); err != nil {
		t.Fatalf("Serve after the runs were done: %v", err)
	}
	if c, err := net.Dial("tcp", sv.addr); err == nil {
		c.Close()
		t.Error("the listener is still open after the drain")
	}
}

// TestDrainGrace checks Serve stays up answering "draining" for
// DrainGrace even with no run in progress, so that the balancer's health
// check sees it leave before the listener closes.
//
// During the grace it still takes runs (the balancer sends them until its
// checks see the drain, and refusing them fails those no other worker has
// room for) and Serve waits for them; after it, runs get 503 Draining.
func TestDrainGrace(t *testing.T) {
	const grace = 1500 * time.Millisecond
	fake := newFakeRunner()
	sv := serveTest(t, Config{Runner: fake, DrainGrace: grace}, time.Minute)
	waitHealth(t, sv.url, 200, "ready\n")
	start := time.Now()
	sv.stop()
	waitHealth(t, sv.url, 503, "draining\n")
	during := make(chan string, 1)
	go func() {
		resp, b := post(t, sv.url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["block"]}`))
		during <- fmt.Sprint(resp.StatusCode, " ", strings.Contains(string(b), `"Ok"`))
	}()
	waitFor(t, func() bool { _, r := sv.s.queue.counts(); return r == 1 })
	if time.Since(start) >= grace {
		t.Fatalf("the run sent during the grace started %v after the stop, past the grace", time.Since(start))
	}
	time.Sleep(time.Until(start.Add(grace + 200*time.Millisecond)))
	resp := rawRequest(t, sv.addr, "/api/v2/runi/amd64/linux/demo", 100, "", 5*time.Second)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" {
		t.Errorf("a new run after the grace: %d Retry-After %q, want 503, 1", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if err := sv.wait(100 * time.Millisecond); !errors.Is(err, errStillServing) {
		t.Fatalf("Serve returned %v with the run taken during the grace in progress", err)
	}
	fake.release <- struct{}{}
	if r := <-during; r != "200 true" {
		t.Errorf("the run sent during the grace: %s, want 200 with a result", r)
	}
	if err := sv.wait(10 * time.Second); err != nil {
		t.Errorf("Serve: %v", err)
	}
	if d := time.Since(start); d < grace {
		t.Errorf("Serve returned %v after the stop, before the grace of %v", d, grace)
	}
}

// TestDrainAbort checks Abort during a drain cuts the run in progress off
// (its context is canceled) and Serve returns ErrAborted at once.
func TestDrainAbort(t *testing.T) {
	fake := newFakeRunner()
	sv := serveTest(t, Config{Runner: fake}, time.Hour)
	cut := make(chan error, 1)
	go func() {
		// The connection is closed under the run: no answer.
		resp, err := http.Post(sv.url+"/api/v2/runi/amd64/linux/demo", "application/json", strings.NewReader(`{"cmd":["block"]}`))
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %d", resp.StatusCode)
		}
		cut <- err
	}()
	waitFor(t, func() bool { _, r := sv.s.queue.counts(); return r == 1 })
	sv.stop()
	waitFor(t, func() bool { return sv.s.draining.Load() })
	start := time.Now()
	sv.s.Abort()
	if err := sv.wait(10 * time.Second); !errors.Is(err, ErrAborted) {
		t.Errorf("Serve: %v, want ErrAborted", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Abort took %v", d)
	}
	if _, r := sv.s.queue.counts(); r != 0 {
		t.Errorf("%d runs still hold a slot after Abort", r)
	}
	if err := <-cut; err == nil || strings.Contains(err.Error(), "answered 200") {
		t.Errorf("the run cut off: %v, want no result", err)
	}
}

// TestBehindProxy checks what HAProxy adds: X-Forwarded-For (one address
// appended by the proxy) is believed from a trusted peer only, and the
// balancer's X-Request-Id is kept, logged and returned.
func TestBehindProxy(t *testing.T) {
	for _, c := range []struct {
		desc       string
		trusted    []string
		xff        string
		id         string
		wantClient string
		wantID     string // "" : a new one
	}{
		{"trusted proxy, its address appended", []string{"127.0.0.1/32"}, "203.0.113.7", "haproxy-42", "203.0.113.7", "haproxy-42"},
		{"trusted proxy, a client's claim before it", []string{"127.0.0.0/8"}, "10.9.9.9, 203.0.113.7", "a.b-c_d", "203.0.113.7", "a.b-c_d"},
		{"untrusted peer", nil, "203.0.113.7", "haproxy-42", "127.0.0.1", "haproxy-42"},
		{"other trusted range", []string{"10.0.0.0/8"}, "203.0.113.7", "", "127.0.0.1", ""},
		{"bad request id replaced", []string{"127.0.0.1/32"}, "203.0.113.7", "has space", "203.0.113.7", ""},
	} {
		t.Run(c.desc, func(t *testing.T) {
			var trusted []netip.Prefix
			for _, p := range c.trusted {
				trusted = append(trusted, netip.MustParsePrefix(p))
			}
			var log syncBuffer
			_, url := testServer(t, Config{TrustedProxies: trusted, Log: slog.New(slog.NewJSONHandler(&log, nil))})
			req, _ := http.NewRequestWithContext(t.Context(), "POST", url+"/api/v2/runi/amd64/linux/demo", strings.NewReader(`{"cmd":["echo","hi"]}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("X-Forwarded-For", c.xff)
			if c.id != "" {
				req.Header.Set("X-Request-Id", c.id)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			gotID := resp.Header.Get("X-Request-Id")
			if c.wantID != "" && gotID != c.wantID || c.wantID == "" && (gotID == "" || gotID == c.id) {
				t.Errorf("X-Request-Id %q, want %q (or a new one for \"\")", gotID, c.wantID)
			}
			found := false
			for l := range strings.Lines(log.String()) {
				var m map[string]any
				json.Unmarshal([]byte(l), &m)
				if m["msg"] == "request" {
					found = true
					if m["client"] != c.wantClient || m["request_id"] != gotID {
						t.Errorf("logged client %v request_id %v, want %s %s", m["client"], m["request_id"], c.wantClient, gotID)
					}
				}
			}
			if !found {
				t.Errorf("no request line in the log:\n%s", log.String())
			}
		})
	}
}

// TestParseDiskLimit checks --min-free-disk's forms and how a limit is
// written back in /healthz's reasons.
func TestParseDiskLimit(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    DiskLimit
		written string // "" : an error
	}{
		{"1GiB", DiskLimit{Bytes: 1 << 30}, "1 GiB"},
		{"500MB", DiskLimit{Bytes: 500_000_000}, "476.8 MiB"},
		{"0", DiskLimit{}, "0 B"},
		{"5%", DiskLimit{Percent: 5}, "5%"},
		{" 2.5 % ", DiskLimit{Percent: 2.5}, "2.5%"},
		{"101%", DiskLimit{}, ""},
		{"-1%", DiskLimit{}, ""},
		{"NaN%", DiskLimit{}, ""},
		{"lots", DiskLimit{}, ""},
		{"%", DiskLimit{}, ""},
	} {
		got, err := ParseDiskLimit(c.in)
		if c.written == "" {
			if err == nil {
				t.Errorf("ParseDiskLimit(%q) = %+v, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want || got.String() != c.written {
			t.Errorf("ParseDiskLimit(%q) = %+v (%q), %v; want %+v (%q)", c.in, got, got.String(), err, c.want, c.written)
		}
	}
}

package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// The fleet's shape: three workers of one slot each, so that a burst of a
// dozen runs oversubscribes it four times.
const (
	numWorkers = 3
	slots      = 1
	queue      = 2
	// lbRate is PE_LB_RATE: requests to the costly API paths a client
	// may make in 10 s before HAProxy answers 429.
	lbRate = 40
	// preset is the image every worker serves, from the shared bucket.
	preset = "s3://images/fleet/busybox:v1"
)

// TestFleet starts deploy/haproxy.cfg in front of three pe serve workers
// sharing a versitygw bucket, and checks the guide's claims one after the
// other on the same fleet: a burst larger than the fleet is answered
// whole and right, a SIGKILLed worker hangs no request and leaves the
// pool, a rolling restart under load fails no request, a worker whose
// store is broken or whose disk is full is taken out by the health check,
// and the edge limits each client.
func TestFleet(t *testing.T) {
	f := startFleet(t, t.Context())

	t.Run("RequestIDAndClient", func(t *testing.T) { testRequestIDAndClient(t, f) })
	t.Run("Burst", func(t *testing.T) { testBurst(t, f) })
	t.Run("FullWorker", func(t *testing.T) { testFullWorker(t, f) })
	t.Run("KilledWorker", func(t *testing.T) { testKilledWorker(t, f) })
	t.Run("RollingRestart", func(t *testing.T) { testRollingRestart(t, f) })
	t.Run("UnhealthyWorker", func(t *testing.T) { testUnhealthyWorker(t, f) })
	t.Run("EdgeRateLimit", func(t *testing.T) { testEdgeRateLimit(t, f) })
	t.Run("Metrics", func(t *testing.T) { testMetrics(t, f) })
	t.Run("NoWorker", func(t *testing.T) { testNoWorker(t, f) })
}

// testRequestIDAndClient checks what HAProxy adds to a request: the
// client's own request id comes back, one is made when the client sent
// none, and the worker sees the client's address (X-Forwarded-For from a
// --trusted-proxy), not HAProxy's nor one the client made up.
func testRequestIDAndClient(t *testing.T, f *fleet) {
	c := f.client("127.0.0.7")
	a := f.run(t.Context(), c, "id-token", "fleet-request-1", nil)
	if a.status != 200 || a.stdout != "id-token\n" || a.requestID != "fleet-request-1" {
		t.Errorf("run with X-Request-Id fleet-request-1: %s", a)
	}
	if err := waitFor(5*time.Second, func() bool { return strings.Contains(f.lbLog.String(), "{fleet-request-1}") }); err != nil {
		t.Errorf("HAProxy's log has no line with {fleet-request-1}")
	}
	b := f.run(t.Context(), c, "no-id", "", http.Header{"X-Forwarded-For": {"203.0.113.9"}})
	if b.status != 200 || len(b.requestID) != 36 {
		t.Errorf("run without X-Request-Id: %s; want 200 and a UUID from HAProxy", b)
	}
	// The worker that ran it logged the client as HAProxy saw it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		client, ok := f.loggedClient(b.requestID)
		if ok {
			if client != "127.0.0.7" {
				t.Errorf("the worker logged client %q for request %s, want 127.0.0.7 (X-Forwarded-For set by HAProxy)", client, b.requestID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("no worker logged request %s", b.requestID)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testBurst sends four times as many runs as the fleet has slots, at
// once: each gets its own result, or a refusal that says when to retry.
func testBurst(t *testing.T, f *fleet) {
	before := f.servedBy(t)
	answers := f.burst(t.Context(), 12, "burst", nil)
	ok := 0
	for _, a := range answers {
		if a.status == 200 {
			ok++
		}
		if err := a.check(); err != nil {
			t.Error(err)
		}
	}
	if ok == 0 {
		t.Errorf("no run of the burst succeeded")
	}
	after := f.servedBy(t)
	busy := 0
	for name, n := range after {
		if n > before[name] {
			busy++
		}
	}
	if busy < 2 {
		t.Errorf("the burst went to %d workers (sessions before %v, after %v), want them all sharing it", busy, before, after)
	}
}

// testFullWorker fills a worker from outside HAProxy (another balancer's
// clients, say): one run in its slot, --queue 2 waiting. The runs HAProxy
// sends it get 503 and are sent to the other workers (retry-on 503,
// option redispatch): every one succeeds.
func testFullWorker(t *testing.T, f *fleet) {
	w := f.workers[0]
	direct := f.client("127.0.0.30")
	// The fillers' clients hang up when the test is done with them.
	fill, unfill := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer unfill()
	for range 1 + queue {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.runCmd(fill, direct, w.url(), []string{"sh", "-c", "sleep 10; echo filler"}, "filler", "", nil, 0)
		}()
	}
	if err := waitFor(30*time.Second, func() bool {
		_, m := get(w.url() + "/metrics")
		return strings.Contains(m, "\npe_queue_depth 2\n") && strings.Contains(m, "\npe_vms_running 1\n")
	}); err != nil {
		t.Fatalf("%s never had 1 run going and 2 waiting: %v", w.name, err)
	}
	redispatched := func() int {
		n, _ := strconv.Atoi(f.stat(t, w.name)["wredis"])
		return n
	}
	before := redispatched()
	// Four runs: the other two workers have room for them all (a slot
	// and two places in the queue each), so a retry never has to go
	// back to the full one. Their bodies are larger than HAProxy's
	// default buffer (16 KiB): tune.bufsize keeps them whole for a retry.
	answers := make([]answer, 4)
	var runs sync.WaitGroup
	for i := range answers {
		runs.Add(1)
		go func() {
			defer runs.Done()
			tok := fmt.Sprintf("full-%d", i)
			answers[i] = f.runCmd(t.Context(), f.client("127.0.0.31"), f.lb, []string{"echo", tok}, tok, tok, nil, 30<<10)
		}()
	}
	runs.Wait()
	for _, a := range answers {
		if a.status != 200 {
			t.Errorf("run while %s was full: %s", w.name, a)
		} else if err := a.check(); err != nil {
			t.Error(err)
		}
	}
	if after := redispatched(); after == before {
		t.Errorf("HAProxy redispatched no request away from the full %s (wredis %d)", w.name, after)
	}
}

// testKilledWorker SIGKILLs a worker while a burst runs: every request is
// answered before the client's timeout, with its own result (HAProxy runs
// those the killed worker held again elsewhere) or a refusal with
// Retry-After; the worker leaves the pool, and later runs go to the
// others.
func testKilledWorker(t *testing.T, f *fleet) {
	victim := f.workers[1]
	var answers []answer
	done := make(chan struct{})
	go func() {
		defer close(done)
		answers = f.burst(t.Context(), 9, "kill", nil)
	}()
	// Kill it while it holds a run.
	if err := waitFor(30*time.Second, func() bool { return f.stat(t, victim.name)["scur"] != "0" }); err != nil {
		t.Fatalf("%s never got a run of the burst: %v", victim.name, err)
	}
	killed := time.Now()
	victim.kill(t)
	if err := waitFor(30*time.Second, func() bool { return strings.HasPrefix(f.stat(t, victim.name)["status"], "DOWN") }); err != nil {
		t.Errorf("HAProxy did not mark the killed worker down: %v", err)
	}
	t.Logf("the killed worker was DOWN in HAProxy's stats after %v", time.Since(killed).Round(time.Millisecond))
	<-done
	// The runs the killed worker held were run again on the others
	// (retry-on empty-response): none failed.
	for _, a := range answers {
		if err := a.check(); err != nil {
			t.Error(err)
		}
	}
	// Later runs go to the survivors.
	before := f.stat(t, victim.name)["stot"]
	for _, a := range f.burst(t.Context(), 4, "after-kill", nil) {
		if a.status != 200 {
			t.Errorf("run after the kill: %s", a)
		} else if err := a.check(); err != nil {
			t.Error(err)
		}
	}
	if after := f.stat(t, victim.name)["stot"]; after != before {
		t.Errorf("the killed worker's sessions went from %s to %s: HAProxy still sends it requests", before, after)
	}
	victim.start(t, f)
	f.waitStatus(t, victim, "UP")
}

// testRollingRestart restarts every worker in turn, SIGTERM then start,
// under a steady load of three clients: no request fails.
func testRollingRestart(t *testing.T, f *fleet) {
	ctx, stop := context.WithCancel(t.Context())
	var mu sync.Mutex
	var answers []answer
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := f.client(fmt.Sprintf("127.0.0.%d", 20+i))
			for n := 0; ctx.Err() == nil; n++ {
				a := f.run(context.WithoutCancel(ctx), c, fmt.Sprintf("roll-%d-%d", i, n), fmt.Sprintf("roll-%d-%d", i, n), nil)
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
				if a.status != 200 {
					// A client that failed does not hammer on.
					time.Sleep(time.Second)
				}
			}
		}()
	}
	for _, w := range f.workers {
		w.stop(t)
		w.start(t, f)
		f.waitStatus(t, w, "UP")
	}
	stop()
	wg.Wait()
	if len(answers) < 2*numWorkers {
		t.Errorf("only %d runs during the rolling restart: no load to speak of", len(answers))
	}
	failed := 0
	for _, a := range answers {
		err := a.check()
		if a.status != 200 && err == nil {
			err = fmt.Errorf("run during the rolling restart failed: %s", a)
		}
		if err != nil {
			if failed++; failed <= 5 {
				t.Error(err)
			}
		}
	}
	t.Logf("%d runs during the rolling restart, %d failed", len(answers), failed)
}

// testUnhealthyWorker restarts a worker whose bucket is unreachable, then
// one whose disk is below --min-free-disk: each time its /healthz says
// why it is not ready, HAProxy's check marks it down and no run goes to
// it.
func testUnhealthyWorker(t *testing.T, f *fleet) {
	w := f.workers[2]
	defer func() {
		w.stop(t)
		w.extraArgs, w.extraEnv = nil, nil
		w.start(t, f)
		f.waitStatus(t, w, "UP")
	}()
	var st syscall.Statfs_t
	if err := syscall.Statfs(w.cache, &st); err != nil {
		t.Fatal(err)
	}
	freeMiB := st.Bavail * uint64(st.Bsize) >> 20
	for _, c := range []struct {
		name      string
		args, env []string
		// why is in the /healthz line that says what is wrong.
		why string
	}{
		{"broken store", nil, []string{"AWS_ENDPOINT_URL=http://" + deadAddr(t)}, "preset demo"},
		{"full disk", []string{"--min-free-disk", fmt.Sprintf("%dMiB", 2*freeMiB+1024)}, nil, "--min-free-disk"},
	} {
		w.stop(t)
		w.extraArgs, w.extraEnv = c.args, c.env
		w.start(t, f)
		// The worker says why it cannot run...
		var body string
		err := waitFor(60*time.Second, func() bool {
			var code int
			code, body = get(w.url() + "/healthz")
			return code == http.StatusServiceUnavailable && strings.HasPrefix(body, "not ready") && strings.Contains(body, c.why)
		})
		if err != nil {
			t.Errorf("%s: %s/healthz answered %q, want 503 not ready: … naming %s", c.name, w.name, body, c.why)
			continue
		}
		// ...and HAProxy's check (not a refused connection) keeps it out.
		if err := waitFor(10*time.Second, func() bool {
			s := f.stat(t, w.name)
			return strings.HasPrefix(s["status"], "DOWN") && s["check_status"] == "L7STS"
		}); err != nil {
			t.Errorf("%s: HAProxy shows %s as %v, want DOWN by its /healthz (L7STS)", c.name, w.name, f.stat(t, w.name))
			continue
		}
		before := f.stat(t, w.name)["stot"]
		for _, a := range f.burst(t.Context(), 4, "unhealthy", nil) {
			if a.status != 200 {
				t.Errorf("%s: run: %s", c.name, a)
			} else if err := a.check(); err != nil {
				t.Error(err)
			}
		}
		if after := f.stat(t, w.name)["stot"]; after != before {
			t.Errorf("%s: runs went to the unhealthy worker (sessions %s → %s)", c.name, before, after)
		}
	}
}

// testEdgeRateLimit sends more run requests from one address than
// PE_LB_RATE allows in 10 s: HAProxy answers the rest 429 with
// Retry-After and the API's error JSON, without reaching a worker.
func testEdgeRateLimit(t *testing.T, f *fleet) {
	c := f.client("127.0.0.99")
	limited := 0
	for i := range lbRate + 10 {
		// An empty body: the worker refuses it at once, no VM needed.
		req, _ := http.NewRequestWithContext(t.Context(), "POST", f.lb+"/api/v2/runi/amd64/linux/demo", strings.NewReader("{"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", fmt.Sprintf("rate-%d", i))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e struct {
			Error     string `json:"error"`
			RequestID string `json:"request_id"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusTooManyRequests:
			limited++
			if resp.Header.Get("Retry-After") != "10" || e.Error != "RateLimited" || e.RequestID != fmt.Sprintf("rate-%d", i) {
				t.Errorf("429 with Retry-After %q, body %+v", resp.Header.Get("Retry-After"), e)
			}
		case i >= lbRate:
			t.Errorf("request %d from one address: status %d, want 429 past %d in 10 s", i+1, resp.StatusCode, lbRate)
		case resp.StatusCode != http.StatusBadRequest:
			t.Errorf("request %d: status %d, want the worker's 400", i+1, resp.StatusCode)
		}
	}
	if limited < 10 {
		t.Errorf("%d requests of %d limited, want at least 10", limited, lbRate+10)
	}
	// Another client is not limited by this one.
	if a := f.run(t.Context(), f.client("127.0.0.98"), "other", "", nil); a.status != 200 {
		t.Errorf("run from another address: %s", a)
	}
}

// testMetrics checks what deploy/prometheus.yml scrapes: every worker's
// /metrics and HAProxy's on its admin address; the public address keeps
// the workers' to itself.
func testMetrics(t *testing.T, f *fleet) {
	for _, w := range f.workers {
		if code, body := get(w.url() + "/metrics"); code != 200 || !strings.Contains(body, "pe_http_requests_total") {
			t.Errorf("%s/metrics: %d\n%s", w.name, code, clip(body))
		}
	}
	if code, body := get(f.adminURL + "/metrics"); code != 200 || !strings.Contains(body, `proxy="pe",server="w1"`) {
		t.Errorf("HAProxy's /metrics: %d, without server pe/w1\n%s", code, clip(body))
	}
	if code, body := get(f.adminURL + "/stats"); code != 200 || !strings.Contains(body, "w1") {
		t.Errorf("HAProxy's /stats: %d\n%s", code, clip(body))
	}
	if code, _ := get(f.lb + "/metrics"); code != http.StatusNotFound {
		t.Errorf("/metrics on the public address: %d, want 404", code)
	}
}

// testNoWorker puts every worker in maintenance through the admin socket:
// HAProxy answers 503 itself, with Retry-After, the request id and the
// API's error JSON.
func testNoWorker(t *testing.T, f *fleet) {
	setState := func(state string) {
		for _, w := range f.workers {
			if out, err := f.admin("set server pe/" + w.name + " state " + state); err != nil || strings.TrimSpace(out) != "" {
				t.Fatalf("set server pe/%s state %s: %v %s", w.name, state, err, out)
			}
		}
	}
	setState("maint")
	a := f.run(t.Context(), f.client("127.0.0.8"), "none", "no-worker-1", nil)
	setState("ready")
	for _, w := range f.workers {
		f.waitStatus(t, w, "UP")
	}
	if a.status != http.StatusServiceUnavailable || a.retryAfter != "5" || a.errorName != "NoWorker" || a.requestID != "no-worker-1" || !strings.Contains(a.body, `"request_id":"no-worker-1"`) {
		t.Errorf("run with every worker in maintenance: %s; want HAProxy's 503 NoWorker with Retry-After 5", a)
	}
}

// fleet is HAProxy in front of pe serve workers sharing a bucket.
type fleet struct {
	dir     string
	peBin   string   // the pe binary (pe-init beside it)
	s3env   []string // AWS_* for the bucket
	workers []*worker
	lb      string // HAProxy's public URL
	// adminURL is HAProxy's admin address: /stats and /metrics.
	adminURL string
	socket   string // HAProxy's admin socket
	lbLog    *syncBuffer
}

// startFleet builds pe, pushes a busybox image to a versitygw bucket,
// starts the workers and HAProxy with deploy/haproxy.cfg, and waits until
// HAProxy shows every worker UP. It skips the test when HAProxy, QEMU,
// the guest kernel, busybox or versitygw is missing.
func startFleet(t testing.TB, ctx context.Context) *fleet {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs behind HAProxy; skipped with -short")
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		// Debian puts it in /usr/sbin, which a user's PATH may lack.
		if haproxy = "/usr/sbin/haproxy"; exec.Command(haproxy, "-v").Run() != nil {
			t.Skip("haproxy is not installed (make deps installs Debian's): needed for the fleet test")
		}
	}
	if _, err := qemu.Find(""); err != nil {
		t.Skip(err)
	}
	if _, err := vmm.FindKernel(""); err != nil {
		t.Skip(err)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed (apt-get install busybox-static)")
	}
	g := s3test.Start(t)
	f := &fleet{dir: t.TempDir()}
	f.peBin = buildPe(t, f.dir)

	none := filepath.Join(f.dir, "none")
	f.s3env = []string{"AWS_ENDPOINT_URL=" + g.Endpoint, "AWS_ACCESS_KEY_ID=" + s3test.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s3test.SecretKey, "AWS_REGION=us-east-1", "AWS_PROFILE=",
		"AWS_CONFIG_FILE=" + none, "AWS_SHARED_CREDENTIALS_FILE=" + none, "AWS_SESSION_TOKEN=", "AWS_ENDPOINT_URL_S3="}
	client, err := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, PathStyle: true}, s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.CreateBucket(ctx, "images"); err != nil {
		t.Fatal(err)
	}
	img := busyboxImage(t, f, busybox)
	if out, err := f.pe(ctx, nil, "image", "push", "--cache-dir", filepath.Join(f.dir, "push-cache"), img, preset); err != nil {
		t.Fatalf("pe image push: %v\n%s", err, out)
	}

	for i := range numWorkers {
		w := &worker{name: fmt.Sprintf("w%d", i+1), addr: "127.0.0.1:" + strconv.Itoa(freePort(t)),
			cache: filepath.Join(f.dir, fmt.Sprintf("cache-w%d", i+1))}
		f.workers = append(f.workers, w)
		w.start(t, f)
		t.Cleanup(func() { w.kill(t) })
	}
	f.startHAProxy(t, haproxy)
	for _, w := range f.workers {
		f.waitStatus(t, w, "UP")
	}
	// The first run of each worker warms its image (and, under today's
	// serve, its boot snapshot): give each one.
	for _, w := range f.workers {
		a := f.run(ctx, &http.Client{Timeout: 3 * time.Minute}, "warm", "", nil, w.url())
		if a.status != 200 {
			t.Fatalf("warm-up run on %s: %s\n%s", w.name, a, w.log.tail())
		}
	}
	return f
}

// buildPe builds pe and pe-init into dir (pe finds pe-init beside it).
func buildPe(t testing.TB, dir string) string {
	t.Helper()
	pe := filepath.Join(dir, "pe")
	for _, b := range []struct {
		out, pkg string
		env      []string
	}{
		{pe, "github.com/pe-project/pe/cmd/pe", nil},
		{filepath.Join(dir, "pe-init"), "github.com/pe-project/pe/guest/cmd/pe-init", []string{"CGO_ENABLED=0"}},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", b.pkg, err, out)
		}
	}
	return pe
}

// busyboxImage builds an EROFS image of busybox with pe image build-erofs.
func busyboxImage(t testing.TB, f *fleet, busybox string) string {
	t.Helper()
	root := filepath.Join(f.dir, "root")
	for _, d := range []string{"bin", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755)
	for _, a := range []string{"sh", "echo", "cat", "sleep"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644)
	img := filepath.Join(f.dir, "busybox.erofs")
	if out, err := f.pe(context.Background(), nil, "image", "build-erofs", root, "-o", img); err != nil {
		t.Fatalf("pe image build-erofs: %v\n%s", err, out)
	}
	return img
}

// pe runs the pe binary to the end with the bucket's environment.
func (f *fleet) pe(ctx context.Context, env []string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, f.peBin, args...)
	cmd.Env = append(append(os.Environ(), f.s3env...), env...)
	return cmd.CombinedOutput()
}

// startHAProxy checks deploy/haproxy.cfg and runs it in the foreground
// until the test ends.
func (f *fleet) startHAProxy(t testing.TB, haproxy string) {
	t.Helper()
	f.lb = "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	f.adminURL = "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	f.socket = filepath.Join(f.dir, "haproxy.sock")
	env := append(os.Environ(),
		"PE_LB_BIND="+strings.TrimPrefix(f.lb, "http://"),
		"PE_LB_ADMIN="+strings.TrimPrefix(f.adminURL, "http://"),
		"PE_LB_SOCKET="+f.socket,
		"PE_LB_LOG=stdout",
		"PE_LB_RATE="+strconv.Itoa(lbRate),
		"PE_MAXCONN="+strconv.Itoa(slots+queue))
	for i, w := range f.workers {
		env = append(env, fmt.Sprintf("PE_WORKER%d=%s", i+1, w.addr))
	}
	check := exec.Command(haproxy, "-c", "-f", "haproxy.cfg")
	check.Env = env
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c -f deploy/haproxy.cfg: %v\n%s", err, out)
	}
	f.lbLog = &syncBuffer{}
	cmd := exec.Command(haproxy, "-f", "haproxy.cfg", "-db")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f.lbLog, f.lbLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("HAProxy's log:\n%s", f.lbLog.tail())
		}
	})
	if err := waitFor(10*time.Second, func() bool { _, err := os.Stat(f.socket); return err == nil }); err != nil {
		t.Fatalf("HAProxy made no admin socket: %v\n%s", err, f.lbLog.tail())
	}
}

// worker is one pe serve process, restarted as the test goes.
type worker struct {
	name, addr string
	cache      string // its own cache directory (boot snapshot, chunks)
	// extraArgs and extraEnv are added at its next start.
	extraArgs, extraEnv []string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	log    *syncBuffer
}

func (w *worker) url() string { return "http://" + w.addr }

// start starts pe serve with the flags every worker shares and waits
// until it listens.
func (w *worker) start(t testing.TB, f *fleet) {
	t.Helper()
	args := []string{"serve", "--listen", w.addr, "--accel", "tcg", "--cache-dir", w.cache,
		"--preset", "demo=" + preset, "--allow-image", "",
		"--slots", strconv.Itoa(slots), "--queue", strconv.Itoa(queue), "--max-wait", "30s", "--run-timeout", "20s",
		"--trusted-proxy", "127.0.0.1/32", "--rate", "5", "--burst", "50",
		"--drain-timeout", "60s", "--drain-grace", "3s"}
	w.log = &syncBuffer{}
	w.cmd = exec.Command(f.peBin, append(args, w.extraArgs...)...)
	w.cmd.Env = append(append(append(os.Environ(), f.s3env...), "PE_CACHE_DIR="+w.cache), w.extraEnv...)
	w.cmd.Stdout, w.cmd.Stderr = w.log, w.log
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { w.err = cmd.Wait(); close(exited) }(w.cmd, w.exited)
	if err := waitFor(60*time.Second, func() bool {
		select {
		case <-w.exited:
			return true
		default:
		}
		c, err := net.DialTimeout("tcp", w.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		t.Fatalf("%s did not listen on %s: %v\n%s", w.name, w.addr, err, w.log.tail())
	}
	select {
	case <-w.exited:
		t.Fatalf("%s exited at start: %v\n%s", w.name, w.err, w.log.tail())
	default:
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (w *worker) stop(t testing.TB) {
	t.Helper()
	w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.exited:
		if w.err != nil {
			t.Errorf("%s exited with %v after SIGTERM, want status 0\n%s", w.name, w.err, w.log.tail())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("%s still running 90 s after SIGTERM\n%s", w.name, w.log.tail())
	}
}

// kill sends SIGKILL and waits for the process to go.
func (w *worker) kill(t testing.TB) {
	w.cmd.Process.Kill()
	<-w.exited
}

// client returns an HTTP client whose connections come from the loopback
// address src: HAProxy's stick table tells clients apart by it.
func (f *fleet) client(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{
		Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16},
		// Longer than HAProxy's own timeouts: a request that reaches it
		// is a hang.
		Timeout: 150 * time.Second,
	}
}

// answer is what a run request got.
type answer struct {
	token, sentID string
	status        int
	stdout        string
	requestID     string // the X-Request-Id header
	retryAfter    string
	errorName     string
	body          string
	err           error
	took          time.Duration
}

func (a answer) String() string {
	if a.err != nil {
		return fmt.Sprintf("token %s: %v after %v", a.token, a.err, a.took.Round(time.Millisecond))
	}
	return fmt.Sprintf("token %s: status %d, stdout %q, X-Request-Id %q, Retry-After %q, after %v: %s",
		a.token, a.status, a.stdout, a.requestID, a.retryAfter, a.took.Round(time.Millisecond), clip(a.body))
}

// check says what is wrong with an answer: a 200 must carry the run's own
// output and request id; a refusal (429, 503) must say when to retry.
func (a answer) check() error {
	switch {
	case a.err != nil:
		return fmt.Errorf("run %s", a)
	case a.status == 200:
		if a.stdout != a.token+"\n" || a.sentID != "" && a.requestID != a.sentID {
			return fmt.Errorf("run answered with another's result: %s", a)
		}
	case a.status == http.StatusTooManyRequests, a.status == http.StatusServiceUnavailable:
		if a.retryAfter == "" {
			return fmt.Errorf("refusal without Retry-After: %s", a)
		}
	default:
		return fmt.Errorf("run: %s", a)
	}
	return nil
}

// run asks for `echo token` through HAProxy (or base, when given).
func (f *fleet) run(ctx context.Context, c *http.Client, token, requestID string, h http.Header, base ...string) answer {
	url := f.lb
	if len(base) > 0 {
		url = base[0]
	}
	return f.runCmd(ctx, c, url, []string{"echo", token}, token, requestID, h, 0)
}

// runCmd runs argv at base, whose output should be token and a newline;
// the request body carries pad more bytes in a field the API ignores.
func (f *fleet) runCmd(ctx context.Context, c *http.Client, url string, argv []string, token, requestID string, h http.Header, pad int) answer {
	payload := map[string]any{"cmd": argv}
	if pad > 0 {
		payload["pad"] = strings.Repeat("x", pad)
	}
	body, _ := json.Marshal(payload)
	req, _ := http.NewRequestWithContext(ctx, "POST", url+"/api/v2/runi/amd64/linux/demo", bytes.NewReader(body))
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	if requestID != "" {
		req.Header.Set("X-Request-Id", requestID)
	}
	start := time.Now()
	a := answer{token: token, sentID: requestID}
	resp, err := c.Do(req)
	if err != nil {
		a.err, a.took = err, time.Since(start)
		return a
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	a.took, a.err = time.Since(start), err
	a.status, a.body = resp.StatusCode, string(b)
	a.requestID, a.retryAfter = resp.Header.Get("X-Request-Id"), resp.Header.Get("Retry-After")
	var r struct {
		Stdout *string `json:"stdout"`
		Error  string  `json:"error"`
	}
	json.Unmarshal(b, &r)
	if r.Stdout != nil {
		a.stdout = *r.Stdout
	}
	a.errorName = r.Error
	return a
}

// burst sends n runs at once, from three client addresses, and returns
// their answers.
func (f *fleet) burst(ctx context.Context, n int, prefix string, h http.Header) []answer {
	answers := make([]answer, n)
	clients := []*http.Client{f.client("127.0.0.11"), f.client("127.0.0.12"), f.client("127.0.0.13")}
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("%s-%d-%d", prefix, i, time.Now().UnixNano())
			answers[i] = f.run(ctx, clients[i%len(clients)], id, id, h)
		}()
	}
	wg.Wait()
	return answers
}

// stat returns HAProxy's statistics of one server of backend pe, by CSV
// column name (status, scur, stot, check_status...).
func (f *fleet) stat(t testing.TB, server string) map[string]string {
	t.Helper()
	out, err := f.admin("show stat")
	if err != nil {
		t.Fatalf("HAProxy's admin socket: %v", err)
	}
	rows, err := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# "))).ReadAll()
	if err != nil || len(rows) < 2 {
		t.Fatalf("show stat: %v\n%s", err, out)
	}
	for _, row := range rows[1:] {
		if len(row) > 1 && row[0] == "pe" && row[1] == server {
			m := map[string]string{}
			for i, name := range rows[0] {
				if i < len(row) {
					m[name] = row[i]
				}
			}
			return m
		}
	}
	t.Fatalf("show stat has no server pe/%s:\n%s", server, out)
	return nil
}

// servedBy returns each worker's total sessions in HAProxy's stats.
func (f *fleet) servedBy(t testing.TB) map[string]int {
	m := map[string]int{}
	for _, w := range f.workers {
		m[w.name], _ = strconv.Atoi(f.stat(t, w.name)["stot"])
	}
	return m
}

// admin sends one command to HAProxy's admin socket.
func (f *fleet) admin(command string) (string, error) {
	c, err := net.DialTimeout("unix", f.socket, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, command+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

// waitStatus waits until HAProxy's stats show w with status (UP, DOWN).
func (f *fleet) waitStatus(t testing.TB, w *worker, status string) {
	t.Helper()
	if err := waitFor(3*time.Minute, func() bool { return f.stat(t, w.name)["status"] == status }); err != nil {
		t.Fatalf("HAProxy never showed %s %s: %v (now %v)\n%s", w.name, status, err, f.stat(t, w.name), w.log.tail())
	}
}

// loggedClient finds the request id in the workers' logs and returns the
// client address logged with it.
func (f *fleet) loggedClient(id string) (string, bool) {
	for _, w := range f.workers {
		sc := bufio.NewScanner(strings.NewReader(w.log.String()))
		for sc.Scan() {
			var l struct {
				Msg       string `json:"msg"`
				RequestID string `json:"request_id"`
				Client    string `json:"client"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "request" && l.RequestID == id {
				return l.Client, true
			}
		}
	}
	return "", false
}

// waitFor polls cond every 50 ms for up to d.
func waitFor(d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not after %v", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// get returns the status and body of a GET, 0 when it failed.
func get(url string) (int, string) {
	return getWith(&http.Client{Timeout: 5 * time.Second}, url)
}

// getWith is get with client c.
func getWith(c *http.Client, url string) (int, string) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// deadAddr returns a loopback address where nothing listens.
func deadAddr(t testing.TB) string { return "127.0.0.1:" + strconv.Itoa(freePort(t)) }

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// syncBuffer is a bytes.Buffer a process writes while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail is the end of the buffer, for failure messages.
func (b *syncBuffer) tail() string {
	s := b.String()
	if len(s) > 8000 {
		s = "..." + s[len(s)-8000:]
	}
	return s
}

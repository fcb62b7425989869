package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/engine/enginetest"
	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/gist/gisttest"
	"github.com/pe-project/pe/pearchive"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// The tests here run the server over a real engine: VMs under QEMU TCG,
// seconds each, so only a few, in parallel.

// TestMain fails the tests when a VMM process outlived them.
func TestMain(m *testing.M) {
	code := m.Run()
	enginetest.Cleanup()
	if kids := enginetest.ChildProcesses(); len(kids) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind by the tests: %q\n", kids)
		code = 1
	}
	os.Exit(code)
}

// newTestEngine returns an engine with the fixture's image as "busybox"
// (digest sha256:test), 2 VMs at once, under QEMU with TCG: KVM does not
// work on every machine these tests run on; TCG does.
func newTestEngine(t *testing.T, f *enginetest.Fixture) *engine.Engine {
	t.Helper()
	e, err := engine.New(engine.Options{
		Images: engine.StaticSource{"busybox": &engine.ResolvedImage{
			Reference: "busybox", Digest: "sha256:test", EROFSPath: f.EROFS, Config: enginetest.BusyboxConfig(),
		}},
		Backend:       qemu.New(""),
		Accel:         vmm.AccelTCG,
		KernelInfo:    f.Kernel,
		InitBinary:    f.Init,
		CacheDir:      filepath.Join(f.Dir, "cache"),
		TempDir:       t.TempDir(),
		MaxConcurrent: 2,
		Log:           slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// vmServer starts a server over a real engine with the fixture's busybox
// image as the preset "busybox".
func vmServer(t *testing.T, cfg Config) string {
	t.Helper()
	f := enginetest.Setup(t)
	if cfg.Runner == nil {
		cfg.Runner = newTestEngine(t, f)
	}
	cfg.Slots = 2
	cfg.Presets = []Preset{{Name: "busybox", Description: "the test image"}}
	if cfg.RunTimeout == 0 {
		cfg.RunTimeout = 30 * time.Second
	}
	cfg.RatePerSecond = -1
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return ts.URL
}

// TestVMRuns sends the three kinds of request a client makes, at once, to
// a server over real VMs: the page's (input files, stdin, output files),
// the original client's JSON, and one that runs past its time limit.
func TestVMRuns(t *testing.T) {
	url := vmServer(t, Config{})
	var wg sync.WaitGroup
	wg.Go(func() {
		files := []pearchive.MemFile{
			{Path: "test.sh", Data: []byte("echo hello from $(pwd); cat; echo oops >&2; mkdir -p /run/pe/output/sub; echo result > /run/pe/output/sub/r.txt; exit 3\n")},
			{Path: "folder/data.txt", Data: []byte("input data\n")},
		}
		body := archiveBody(t, map[string]any{"cmd": []string{"sh", "test.sh"}, "stdin": "folder/data.txt"}, files)
		resp, b := post(t, url+"/api/v2/runi/amd64/linux/busybox", pearchive.ContentType, body)
		if resp.StatusCode != 200 {
			t.Errorf("archive run: status %d: %s", resp.StatusCode, b)
			return
		}
		got, out := decodeArchiveResponse(t, b)
		want := map[string]string{
			"stdout": "hello from /run/pe/input\ninput data\n", "stderr": "oops\n",
			"dir/": "", "dir/sub/": "", "dir/sub/r.txt": "result\n",
		}
		if fmt.Sprint(out) != fmt.Sprint(want) || got.Kind != KindOk || got.Siginfo.Exited == nil || *got.Siginfo.Exited != 3 {
			t.Errorf("archive run: %s %+v, files %q; want Ok Exited 3, files %q", got.Kind, got.Siginfo, out, want)
		}
	})
	wg.Go(func() {
		// The original client: entrypoint [] (the image's cmd would stay
		// were cmd null), env replacing the image's, a blank line of its
		// env editor (""), its stdin menu's "/dev/null".
		body := `{"entrypoint":[],"cmd":["sh","-c","cat; echo \"$A|$GREETING|$PATH\""],"env":["A=1",""],"stdin":"/dev/null"}`
		resp, b := post(t, url+"/api/v2/runi/amd64/linux/busybox", "application/json", []byte(body))
		var got RunResponse
		if err := json.Unmarshal(b, &got); err != nil || resp.StatusCode != 200 {
			t.Errorf("JSON run: status %d: %s", resp.StatusCode, b)
			return
		}
		if want := "1||/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"; got.Stdout == nil || *got.Stdout != want || got.ManifestDigest != "sha256:test" {
			t.Errorf("JSON run: stdout %v digest %q, want %q", got.Stdout, got.ManifestDigest, want)
		}
	})
	wg.Go(func() {
		body := `{"cmd":["sh","-c","echo started; sleep 60"],"timeout_ms":4000}`
		resp, b := post(t, url+"/api/v2/runi/amd64/linux/busybox", "application/json", []byte(body))
		var got RunResponse
		json.Unmarshal(b, &got)
		if resp.StatusCode != 200 || got.Kind != KindOvertime || got.Siginfo.Killed == nil || got.Stdout == nil || *got.Stdout != "started\n" {
			t.Errorf("overtime run: status %d: %s", resp.StatusCode, b)
		}
	})
	wg.Wait()
}

// TestVMSnapshots serves the preset from a snapshot: runs restore it, and
// when the snapshot is damaged a run boots instead and the snapshot is
// made again.
func TestVMSnapshots(t *testing.T) {
	f := enginetest.Setup(t)
	eng := newTestEngine(t, f)
	reg := prometheus.NewRegistry()
	snaps := eng.NewSnapshotPool(engine.PoolOptions{Dir: t.TempDir(), MemoryMiB: 512})
	url := vmServer(t, Config{Runner: eng, Snapshots: snaps, MemoryMiB: 512, Registry: reg})
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	kept := make(chan struct{})
	go func() { snaps.Keep(ctx, PresetImages([]Preset{{Name: "busybox"}})); close(kept) }()
	defer func() { stop(); <-kept }()
	deadline := time.Now().Add(5 * time.Minute)
	for !snaps.Ready("busybox") {
		if time.Now().After(deadline) {
			t.Fatal("no snapshot after 5 minutes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	run := func(word string) {
		t.Helper()
		body := archiveBody(t, map[string]any{"cmd": []string{"sh", "-c", "cat in.txt; echo " + word}}, []pearchive.MemFile{{Path: "in.txt", Data: []byte("input\n")}})
		resp, b := post(t, url+"/api/v2/runi/amd64/linux/busybox", pearchive.ContentType, body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		_, out := decodeArchiveResponse(t, b)
		if out["stdout"] != "input\n"+word+"\n" {
			t.Errorf("stdout %q", out["stdout"])
		}
	}
	run("one")
	run("two")
	// Damage the snapshot's device state: the next run boots.
	snap := snaps.Snapshot("busybox")
	if err := os.WriteFile(filepath.Join(snap.Dir, "state"), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("three")
	counts := metricValues(t, reg, "pe_snapshot_runs_total")
	if counts["restored"] != 2 || counts["fallback"] != 1 {
		t.Errorf("snapshot runs %v, want 2 restored and 1 fallback", counts)
	}
}

// metricValues returns a counter vector's values by its one label.
func metricValues(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) > 0 {
				out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// TestVMQueue sends 20 runs at once to a server with 2 VM slots: every
// one is answered with its own output (the fake-engine TestQueueOrder
// checks their order), and no VM is left (TestMain).
func TestVMQueue(t *testing.T) {
	url := vmServer(t, Config{MaxQueue: 20, MaxWait: 10 * time.Minute})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			body := fmt.Sprintf(`{"cmd":["echo","run %d"]}`, i)
			resp, b := post(t, url+"/api/v2/runi/amd64/linux/busybox", "application/json", []byte(body))
			var got RunResponse
			json.Unmarshal(b, &got)
			if want := fmt.Sprintf("run %d\n", i); resp.StatusCode != 200 || got.Stdout == nil || *got.Stdout != want {
				t.Errorf("run %d: status %d: %s", i, resp.StatusCode, b)
			}
		})
	}
	wg.Wait()
}

// TestBrowser drives the page in Debian's chromium with playwright-core
// (web/test/e2e.mjs) against a server over real VMs and a fake GitHub API:
// edit and run, share and reload, load a #gist= link and run it, keyboard
// only, save as gist, phone width. PE_SCREENSHOTS=1 writes the screenshots
// to docs/screenshots.
func TestBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs and a browser; skipped with -short")
	}
	chromium := os.Getenv("PE_CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		t.Skipf("no chromium at %s (apt-get install chromium; make test installs it)", chromium)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed (make test needs Node.js and npm)")
	}
	webDir, _ := filepath.Abs("../web")
	if _, err := os.Stat(filepath.Join(webDir, "node_modules", "playwright-core")); err != nil {
		t.Skip("web/node_modules lacks playwright-core (make web-deps runs npm ci)")
	}
	gh := gisttest.New(t, "../gist/testdata")
	gh.Token = "test-token"
	gh.AddGist(t, "aa5a315d61ae9438b18d", "57a7f021a713b1c5a6a199b54cc514735d2d462f", map[string]string{
		"pe.toml":   "image = \"busybox\"\ncmd = \"sh main.sh\"\nenv = \"WHO=gist\"\n",
		"main.sh":   "echo \"hello from the $WHO\"\ncat notes.txt\n",
		"notes.txt": "notes\n",
	})
	api := gh.Server
	url := vmServer(t, Config{
		Gists:     &gist.Client{BaseURL: api.URL, CacheDir: t.TempDir()},
		GitHubAPI: api.URL,
	})

	cmd := exec.CommandContext(t.Context(), node, "test/e2e.mjs")
	cmd.Dir = webDir
	cmd.Env = append(os.Environ(),
		"PE_URL="+url,
		"PE_CHROMIUM="+chromium,
		"PE_GIST_ID=aa5a315d61ae9438b18d",
		"PE_GIST_EXPECT=hello from the gist",
		"PE_GIST_TOKEN="+gh.Token,
		"PE_RUN_TIMEOUT_MS=180000",
	)
	if os.Getenv("PE_SCREENSHOTS") != "" {
		shots, _ := filepath.Abs("../docs/screenshots")
		cmd.Env = append(cmd.Env, "PE_SCREENSHOT_DIR="+shots)
	}
	out, err := cmd.CombinedOutput()
	t.Logf("e2e.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("browser test failed: %v", err)
	}
	if gh.Created() == nil {
		t.Error("the page saved no gist to the GitHub API")
	}
}

// TestVMRefusals sends a real engine what it refused as its own failure
// (500 before): each is now a 4xx naming the problem and no host path.
func TestVMRefusals(t *testing.T) {
	url := vmServer(t, Config{})
	for _, c := range []struct {
		desc, ref, body string
		wantStatus      int
	}{
		{"env entry without =", "busybox", `{"cmd":["env"],"env":["NOEQUALS"]}`, 400},
		{"empty program", "busybox", `{"entrypoint":[],"cmd":[""]}`, 400},
		{"NUL in an argument", "busybox", `{"cmd":["echo","a\u0000b"]}`, 400},
		{"unknown image", "docker.io/library/nosuch:1", `{"cmd":["true"]}`, 404},
	} {
		t.Run(c.desc, func(t *testing.T) {
			resp, b := post(t, url+"/api/v2/runi/amd64/linux/"+c.ref, "application/json", []byte(c.body))
			if resp.StatusCode != c.wantStatus || bytes.Contains(b, []byte(os.TempDir())) {
				t.Errorf("status %d: %s; want %d naming no host path", resp.StatusCode, b, c.wantStatus)
			}
		})
	}
}

// TestVMOverload is the overload test over real VMs: ten times --slots
// clients for a bounded time, each request answered with its own result
// or a 429/503 carrying Retry-After, and afterwards no VM (TestMain checks
// the processes), no work file and no queued run left. The fake-runner
// TestOverload does the same at a rate VMs under TCG cannot reach.
func TestVMOverload(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs for several seconds; skipped with -short")
	}
	work := t.TempDir()
	f := enginetest.Setup(t)
	e := newTestEngine(t, f)
	const slots = 2
	s, err := New(Config{
		Runner: e, Slots: slots, MaxQueue: slots, MaxWait: 2 * time.Second,
		Presets: []Preset{{Name: "busybox"}}, RunTimeout: 30 * time.Second,
		RatePerSecond: -1, TempDir: work,
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	defer ts.Close()
	url := ts.URL + "/api/v2/runi/amd64/linux/busybox"
	deadline := time.Now().Add(8 * time.Second)
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	for i := range 10 * slots {
		wg.Go(func() {
			for n := 0; time.Now().Before(deadline) && n < 50; n++ {
				want := fmt.Sprintf("client %d run %d\n", i, n)
				// Every other run also floods its output past the limit.
				cmd := fmt.Sprintf(`echo "client %d run %d"`, i, n)
				if n%2 == 1 {
					cmd += "; yes >&2"
				}
				body, _ := json.Marshal(map[string]any{"cmd": []string{"sh", "-c", cmd}, "timeout_ms": 3000})
				resp, b := post(t, url, "application/json", body)
				mu.Lock()
				counts[resp.StatusCode]++
				mu.Unlock()
				switch resp.StatusCode {
				case 200:
					var got RunResponse
					if err := json.Unmarshal(b, &got); err != nil || got.Stdout == nil || *got.Stdout != want {
						t.Errorf("client %d run %d: %s, want stdout %q", i, n, b, want)
					}
				case 429, 503:
					if resp.Header.Get("Retry-After") == "" {
						t.Errorf("client %d: %d without Retry-After", i, resp.StatusCode)
					}
				default:
					t.Errorf("client %d run %d: status %d: %s", i, n, resp.StatusCode, b)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("answers by status: %v", counts)
	if counts[200] == 0 || counts[503]+counts[429] == 0 {
		t.Errorf("statuses %v: want both results and refusals", counts)
	}
	if q, r := s.queue.counts(); q != 0 || r != 0 {
		t.Errorf("after the load: %d queued, %d running", q, r)
	}
	if left, _ := os.ReadDir(work); len(left) > 0 {
		t.Errorf("left in the work directory: %v", left)
	}
}

// TestVMStream streams a run over a real VM: the line printed before a
// sleep arrives before the sleep ends, and the result comes after it
// with both lines.
func TestVMStream(t *testing.T) {
	url := vmServer(t, Config{})
	body := `{"cmd":["sh","-c","echo first; sleep 2; echo second >&2; echo third"]}`
	resp := postStream(t, t.Context(), url+"/api/v2/runi/amd64/linux/busybox", "application/json", []byte(body))
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var first, result time.Time
	var names []string
	var stdout, stderr string
	var res RunResponse
	for ev := range readEvents(resp.Body) {
		if ev.name == ":" {
			continue
		}
		names = append(names, ev.name)
		var s string
		switch ev.name {
		case "stdout", "stderr":
			if err := json.Unmarshal([]byte(ev.data), &s); err != nil {
				t.Fatal(err)
			}
			if ev.name == "stdout" {
				stdout += s
			} else {
				stderr += s
			}
			if strings.Contains(stdout, "first") && first.IsZero() {
				first = ev.at
			}
		case "result":
			result = ev.at
			if err := json.Unmarshal([]byte(ev.data), &res); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("events %q; first line %v before the result", names, result.Sub(first))
	if stdout != "first\nthird\n" || stderr != "second\n" || res.Stdout == nil || *res.Stdout != stdout || res.Kind != KindOk {
		t.Errorf("live stdout %q stderr %q, result %+v", stdout, stderr, res)
	}
	if first.IsZero() || result.Sub(first) < 1500*time.Millisecond {
		t.Errorf("the first line came %v before the result: want it before the 2 s sleep ended", result.Sub(first))
	}
}

// smallWriteBuffers gives accepted connections small socket send
// buffers, so that a client that does not read is felt at once.
type smallWriteBuffers struct{ net.Listener }

func (l smallWriteBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetWriteBuffer(8 << 10)
	}
	return c, err
}

// TestVMStreamSlowClient streams a program that floods its output (yes)
// to a client that reads nothing: the program is held back until its
// time limit at most, the VM's slot comes back while the client still
// reads nothing, and the client then finds the live output dropped and
// the run's result (Overtime).
func TestVMStreamSlowClient(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	f := enginetest.Setup(t)
	s, err := New(Config{
		Runner: newTestEngine(t, f), Slots: 1, Presets: []Preset{{Name: "busybox"}},
		RunTimeout: 30 * time.Second, RatePerSecond: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Only the time limit may end the wait for the client.
	s.liveStall = 10 * time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &httptest.Server{Listener: smallWriteBuffers{ln}, Config: &http.Server{Handler: s}}
	ts.Start()
	defer ts.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	body := `{"cmd":["sh","-c","echo go; yes"],"timeout_ms":3000}`
	fmt.Fprintf(c, "POST /api/v2/runi/amd64/linux/busybox HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	start := time.Now()
	for began := false; ; time.Sleep(10 * time.Millisecond) {
		_, running := s.queue.counts()
		began = began || running == 1
		if began && running == 0 {
			break
		}
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("the run holds its slot %v after it was sent, the client reading nothing", time.Since(start))
		}
	}
	t.Logf("the slot came back %v after the run was sent, the client reading nothing", time.Since(start))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	names, stdout, _, data := collectStream(t, readEvents(resp.Body))
	if len(names) < 3 || names[len(names)-2] != "dropped" || names[len(names)-1] != "result" || !strings.HasPrefix(stdout, "go\ny\ny\n") {
		t.Errorf("events %q (stdout %d bytes): want start, stdout, dropped, result", names[max(0, len(names)-3):], len(stdout))
	}
	var res RunResponse
	if err := json.Unmarshal([]byte(data["result"]), &res); err != nil || res.Kind != KindOvertime {
		t.Errorf("result %.300s: %v; want Overtime", data["result"], err)
	}
}

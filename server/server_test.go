package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/gist/gisttest"
	"github.com/pe-project/pe/pearchive"
)

// testServer starts a server over fake and returns its URL.
func testServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Runner == nil {
		cfg.Runner = newFakeRunner()
	}
	if cfg.Presets == nil {
		cfg.Presets = []Preset{{Name: "demo", Source: "oci:/srv/demo:latest", Description: "busybox"}}
	}
	if cfg.RatePerSecond == 0 {
		cfg.RatePerSecond = -1
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts.URL
}

// archiveBody frames req and files as the page sends them.
func archiveBody(t testing.TB, req any, files []pearchive.MemFile) []byte {
	t.Helper()
	js, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var ar bytes.Buffer
	if err := pearchive.PackFiles(&ar, files); err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	if err := pearchive.WriteFramed(&body, js, &ar); err != nil {
		t.Fatal(err)
	}
	return body.Bytes()
}

func post(t *testing.T, url, ctype string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "POST", url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// decodeArchiveResponse splits a framed response into its JSON and files.
func decodeArchiveResponse(t *testing.T, b []byte) (RunResponse, map[string]string) {
	t.Helper()
	js, ar, err := pearchive.SplitFramed(b)
	if err != nil {
		t.Fatalf("response framing: %v", err)
	}
	var resp RunResponse
	if err := json.Unmarshal(js, &resp); err != nil {
		t.Fatalf("response JSON %q: %v", js, err)
	}
	files, err := pearchive.ReadAll(ar, pearchive.Limits{})
	if err != nil {
		t.Fatalf("response archive: %v", err)
	}
	m := map[string]string{}
	for _, f := range files {
		m[f.Path] = string(f.Data)
	}
	return resp, m
}

func TestRunJSON(t *testing.T) {
	_, url := testServer(t, Config{})
	for _, c := range []struct {
		desc       string
		cmd        []string
		wantKind   string
		wantSiginf string
		wantStdout string
		wantMsg    string
	}{
		{"exit 0", []string{"echo", "hello"}, KindOk, `{"Exited":0}`, "hello\n", ""},
		{"killed", []string{"kill", "9"}, KindOk, `{"Killed":9}`, "", ""},
		{"overtime", []string{"overtime"}, KindOvertime, `{"Killed":9}`, "partial\n", ""},
		{"guest failure", []string{"panic", "mount failed"}, KindPanic, ``, "", "mount failed"},
		{"not found", []string{"nosuch"}, KindPanic, ``, "", "nosuch: command not found"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"cmd": c.cmd})
			resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			var raw map[string]json.RawMessage
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			var got RunResponse
			json.Unmarshal(b, &got)
			if got.Kind != c.wantKind || string(raw["siginfo"]) != c.wantSiginf || got.Message != c.wantMsg {
				t.Errorf("kind %s siginfo %s message %q, want %s %s %q", got.Kind, raw["siginfo"], got.Message, c.wantKind, c.wantSiginf, c.wantMsg)
			}
			if c.wantKind != KindPanic {
				if got.Stdout == nil || *got.Stdout != c.wantStdout {
					t.Errorf("stdout %v, want %q", got.Stdout, c.wantStdout)
				}
				if got.ManifestDigest == "" || got.Rusage == nil || got.Rusage.Utime != (Timeval{1, 234000}) {
					t.Errorf("manifest_digest %q rusage %+v", got.ManifestDigest, got.Rusage)
				}
			}
		})
	}
}

func TestRunJSONOutputCut(t *testing.T) {
	_, url := testServer(t, Config{})
	body, _ := json.Marshal(map[string]any{"cmd": []string{"big", "5000"}})
	_, b := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", body)
	var got RunResponse
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Stdout == nil || len(*got.Stdout) != jsonOutputBytes || !got.StdoutTruncated {
		t.Errorf("stdout of %d bytes, truncated %v; want %d bytes, truncated", len(*got.Stdout), got.StdoutTruncated, jsonOutputBytes)
	}
}

func TestRunArchive(t *testing.T) {
	fake := newFakeRunner()
	_, url := testServer(t, Config{Runner: fake})
	in := []pearchive.MemFile{
		{Path: "test.sh", Data: []byte("echo hi\n")},
		{Path: "folder/data.txt", Data: []byte("some data\n")},
		{Path: "empty/"},
	}
	runArchive := func(req map[string]any) (RunResponse, map[string]string) {
		t.Helper()
		resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", pearchive.ContentType, archiveBody(t, req, in))
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != pearchive.ContentType {
			t.Fatalf("status %d, Content-Type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		return decodeArchiveResponse(t, b)
	}

	got, files := runArchive(map[string]any{"cmd": []string{"ls"}})
	if diff := cmp.Diff(map[string]string{"stdout": "empty\nfolder\nfolder/data.txt\ntest.sh\n", "stderr": "", "dir/": ""}, files); diff != "" {
		t.Errorf("ls: output archive (-want +got):\n%s", diff)
	}
	if got.Stdout != nil {
		t.Errorf("archive mode carries stdout in the JSON too: %q", *got.Stdout)
	}

	_, files = runArchive(map[string]any{"cmd": []string{"cat"}, "stdin": "folder/data.txt"})
	if files["stdout"] != "some data\n" {
		t.Errorf("stdin from folder/data.txt: stdout %q", files["stdout"])
	}

	_, files = runArchive(map[string]any{"entrypoint": []string{"write"}, "cmd": []string{"sub/out.txt", "result"}})
	if files["dir/sub/out.txt"] != "result" {
		t.Errorf("output file: %q", files)
	}

	// The Program Explorer API's env replaces the image's; the working
	// directory is the input directory when inputs come.
	_, files = runArchive(map[string]any{"cmd": []string{"env"}, "env": []string{"A=1"}})
	if want := `["A=1"] replace=true workdir=/run/pe/input`; files["stdout"] != want {
		t.Errorf("env: %q, want %q", files["stdout"], want)
	}
	_, files = runArchive(map[string]any{"cmd": []string{"env"}, "env": nil})
	if want := `[] replace=false workdir=/run/pe/input`; files["stdout"] != want {
		t.Errorf("env null: %q, want %q", files["stdout"], want)
	}
	reqs := fake.recorded()
	if r := reqs[len(reqs)-1]; r.Image != "oci:/srv/demo:latest" || !r.KeepImageCmd {
		t.Errorf("the preset went to the engine as %q (KeepImageCmd %v)", r.Image, r.KeepImageCmd)
	}
}

// rawArchive builds archive bytes by hand, for archives the Writer refuses.
func rawArchive(parts ...any) []byte {
	var b bytes.Buffer
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b.WriteByte(p)
		case string:
			b.WriteString(p)
		case uint32:
			binary.Write(&b, binary.LittleEndian, p)
		}
	}
	return b.Bytes()
}

func framed(js string, archive []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint32(len(js)))
	b.WriteString(js)
	b.Write(archive)
	return b.Bytes()
}

func TestRunRefusals(t *testing.T) {
	_, url := testServer(t, Config{MaxBody: 4096})
	okJSON := []byte(`{"cmd":["echo","x"]}`)
	for _, c := range []struct {
		desc       string
		path       string
		ctype      string
		body       []byte
		wantStatus int
		wantError  string
	}{
		{"wrong arch", "/api/v2/runi/arm64/linux/demo", "application/json", okJSON, 400, "ArchMismatch"},
		{"wrong os", "/api/v2/runi/amd64/windows/demo", "application/json", okJSON, 400, "OsMismatch"},
		{"no reference", "/api/v2/runi/amd64/linux/", "application/json", okJSON, 400, "BadPath"},
		{"reference too long", "/api/v2/runi/amd64/linux/" + strings.Repeat("a", 256), "application/json", okJSON, 400, "BadReference"},
		{"local layout", "/api/v2/runi/amd64/linux/oci:/etc", "application/json", okJSON, 400, "BadReference"},
		{"local erofs file", "/api/v2/runi/amd64/linux/erofs:/tmp/x.erofs", "application/json", okJSON, 400, "BadReference"},
		{"erofs path", "/api/v2/runi/amd64/linux/docker.io/x.erofs", "application/json", okJSON, 400, "BadReference"},
		{"registry not allowed", "/api/v2/runi/amd64/linux/quay.io/x/y:1", "application/json", okJSON, 403, "ImageNotAllowed"},
		{"content type", "/api/v2/runi/amd64/linux/demo", "text/plain", okJSON, 415, "BadContentType"},
		{"bad JSON", "/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd": "echo"}`), 400, "BadRequest"},
		{"frame longer than body", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType, []byte{200, 0, 0, 0, '{', '}'}, 400, "BadRequest"},
		{"short frame", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType, []byte{1, 0}, 400, "BadRequest"},
		{"archive traversal", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType,
			framed(`{"cmd":["ls"]}`, rawArchive(byte(1), "..", byte(0), uint32(1), "x")), 400, "BadRequest"},
		{"archive slash in name", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType,
			framed(`{"cmd":["ls"]}`, rawArchive(byte(1), "a/../../etc/passwd", byte(0), uint32(1), "x")), 400, "BadRequest"},
		{"archive unknown tag", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType,
			framed(`{"cmd":["ls"]}`, rawArchive(byte(9))), 400, "BadRequest"},
		{"archive dir not closed", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType,
			framed(`{"cmd":["ls"]}`, rawArchive(byte(2), "d", byte(0))), 400, "BadRequest"},
		{"archive duplicate", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType,
			framed(`{"cmd":["ls"]}`, rawArchive(byte(1), "a", byte(0), uint32(0), byte(1), "a", byte(0), uint32(0))), 400, "BadRequest"},
		{"stdin not in archive", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType, framed(`{"cmd":["cat"],"stdin":"nope"}`, nil), 400, "BadRequest"},
		{"stdin escapes", "/api/v2/runi/amd64/linux/demo", pearchive.ContentType, framed(`{"cmd":["cat"],"stdin":"../../etc/passwd"}`, nil), 400, "BadRequest"},
		{"stdin in JSON mode", "/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["cat"],"stdin":"x"}`), 400, "BadRequest"},
		{"relative workdir", "/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["ls"],"workdir":"tmp"}`), 400, "BadRequest"},
		{"no command", "/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{}`), 400, "OciSpec"},
		{"body too large", "/api/v2/runi/amd64/linux/demo", "application/json", bytes.Repeat([]byte(" "), 5000), 413, "TooLarge"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			resp, b := post(t, url+c.path, c.ctype, c.body)
			var e ErrorBody
			json.Unmarshal(b, &e)
			if resp.StatusCode != c.wantStatus || e.Error != c.wantError || e.Detail == "" {
				t.Errorf("status %d %s, want %d with error %q and a detail", resp.StatusCode, b, c.wantStatus, c.wantError)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if v := resp.Header.Get("Vary"); v != "Accept" {
				t.Errorf("Vary %q, want Accept: the run's answer depends on it", v)
			}
		})
	}
}

func TestChunkedBodyTooLarge(t *testing.T) {
	_, url := testServer(t, Config{MaxBody: 4096})
	// An io.Reader of unknown length makes the client send it chunked,
	// with no Content-Length to refuse it early.
	body := io.MultiReader(strings.NewReader(`{"cmd":["echo","`), strings.NewReader(strings.Repeat("a", 10000)), strings.NewReader(`"]}`))
	req, _ := http.NewRequestWithContext(t.Context(), "POST", url+"/api/v2/runi/amd64/linux/demo", body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 || req.ContentLength != 0 {
		t.Errorf("status %d (request length %d), want 413 for a chunked body", resp.StatusCode, req.ContentLength)
	}
}

func TestSlowBody(t *testing.T) {
	s, url := testServer(t, Config{BodyTimeout: 300 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v2/runi/amd64/linux/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"cmd\":")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("status %d, want 408", resp.StatusCode)
	}
	s.inFlight.Wait()
}

func TestRateLimit(t *testing.T) {
	trusted := netip.MustParsePrefix("127.0.0.0/8")
	for _, c := range []struct {
		desc    string
		trusted []netip.Prefix
		// xff gives each request's X-Forwarded-For.
		xff        []string
		wantStatus []int
	}{
		{"burst then 429", nil, []string{"", "", ""}, []int{200, 200, 429}},
		{"X-Forwarded-For from an untrusted peer is ignored", nil, []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}, []int{200, 200, 429}},
		{"X-Forwarded-For from a trusted proxy keys by client", []netip.Prefix{trusted}, []string{"10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.1"}, []int{200, 200, 200, 429}},
		{"a client cannot claim to be another behind the proxy", []netip.Prefix{trusted}, []string{"1.2.3.4, 10.0.0.9", "5.6.7.8, 10.0.0.9", "10.0.0.9"}, []int{200, 200, 429}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			_, url := testServer(t, Config{RatePerSecond: 0.001, RateBurst: 2, TrustedProxies: c.trusted})
			var got []int
			for _, xff := range c.xff {
				req, _ := http.NewRequestWithContext(t.Context(), "POST", url+"/api/v2/runi/amd64/linux/demo", strings.NewReader(`{"cmd":["echo"]}`))
				req.Header.Set("Content-Type", "application/json")
				if xff != "" {
					req.Header.Set("X-Forwarded-For", xff)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				got = append(got, resp.StatusCode)
				if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
					t.Error("429 without Retry-After")
				}
			}
			if diff := cmp.Diff(c.wantStatus, got); diff != "" {
				t.Errorf("statuses (-want +got):\n%s", diff)
			}
		})
	}
}

// TestQueueOrder sends 20 runs to 2 slots: every one is answered, they
// start in order of arrival, and no more than 2 run at once.
func TestQueueOrder(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake, Slots: 2, MaxQueue: 20})
	const n = 20
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, _ := json.Marshal(map[string]any{"cmd": []string{"block", fmt.Sprint(i)}})
			resp, _ := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", body)
			statuses[i] = resp.StatusCode
		}()
		// Wait until request i holds a slot or a place in the queue, so
		// arrival order is i's order.
		waitFor(t, func() bool { q, r := s.queue.counts(); return q+r == i+1 })
	}
	// One release grants exactly one waiter, so each start is seen
	// before the next release: starts happen in grant order.
	order := []string{<-fake.started, <-fake.started}
	for range n - 2 {
		fake.release <- struct{}{}
		order = append(order, <-fake.started)
	}
	fake.release <- struct{}{}
	fake.release <- struct{}{}
	wg.Wait()
	// The first two start together; the rest in order of arrival.
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprint(i)
	}
	if diff := cmp.Diff(want[2:], order[2:]); diff != "" {
		t.Errorf("start order after the first two (-want +got):\n%s", diff)
	}
	for i, st := range statuses {
		if st != 200 {
			t.Errorf("run %d: status %d", i, st)
		}
	}
	if fake.peak > 2 {
		t.Errorf("%d runs at once on 2 slots", fake.peak)
	}
	if q, r := s.queue.counts(); q != 0 || r != 0 {
		t.Errorf("after all runs: %d queued, %d running", q, r)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestQueueFullAndMaxWait(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake, Slots: 1, MaxQueue: 1, MaxWait: 300 * time.Millisecond})
	blockBody := []byte(`{"cmd":["block"]}`)
	done := make(chan int, 1)
	go func() {
		resp, _ := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", blockBody)
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { _, r := s.queue.counts(); return r == 1 })

	// One may wait; it gives up after MaxWait.
	waited := make(chan *http.Response, 1)
	go func() {
		resp, _ := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["echo"]}`))
		waited <- resp
	}()
	waitFor(t, func() bool { q, _ := s.queue.counts(); return q == 1 })
	// The queue is full: refused at once.
	resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["echo"]}`))
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "QueueFull") {
		t.Errorf("full queue: status %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if r := <-waited; r.StatusCode != 503 || r.Header.Get("Retry-After") == "" {
		t.Errorf("past MaxWait: status %d", r.StatusCode)
	}
	fake.release <- struct{}{}
	if st := <-done; st != 200 {
		t.Errorf("the running request: status %d", st)
	}
}

// TestClientGoneWhileQueued checks a client that hangs up leaves the
// queue, and one that hangs up mid-run cancels the run.
func TestClientGone(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake, Slots: 1, MaxQueue: 4})
	conns := make([]net.Conn, 2)
	for i := range conns {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		body := `{"cmd":["block"]}`
		fmt.Fprintf(c, "POST /api/v2/runi/amd64/linux/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		conns[i] = c
		waitFor(t, func() bool { q, r := s.queue.counts(); return q+r == i+1 })
	}
	conns[1].Close()
	waitFor(t, func() bool { q, _ := s.queue.counts(); return q == 0 })
	conns[0].Close()
	waitFor(t, func() bool { _, r := s.queue.counts(); return r == 0 })
	s.inFlight.Wait()
}

// TestClientStopsReading checks a client that never reads a large
// response does not keep its handler past WriteTimeout.
func TestClientStopsReading(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake, WriteTimeout: 500 * time.Millisecond, MaxOutput: 64 << 20})
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	body := archiveBody(t, map[string]any{"cmd": []string{"big", fmt.Sprint(48 << 20)}}, nil)
	fmt.Fprintf(c, "POST /api/v2/runi/amd64/linux/demo HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n", pearchive.ContentType, len(body))
	c.Write(body)
	start := time.Now()
	waitFor(t, func() bool { return len(fake.recorded()) == 1 })
	done := make(chan struct{})
	go func() { s.inFlight.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the handler still runs %v after the client stopped reading", time.Since(start))
	}
}

func TestGracefulShutdown(t *testing.T) {
	fake := newFakeRunner()
	s, err := New(Config{Runner: fake, Presets: []Preset{{Name: "demo"}}, RatePerSecond: -1})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, time.Minute) }()
	url := "http://" + ln.Addr().String()
	done := make(chan int, 1)
	go func() {
		resp, _ := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["block"]}`))
		done <- resp.StatusCode
	}()
	waitFor(t, func() bool { _, r := s.queue.counts(); return r == 1 })
	stop()
	// New runs are refused while the run finishes (TestDrain has more).
	waitFor(t, func() bool {
		resp, _ := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["echo"]}`))
		return resp.StatusCode == 503
	})
	fake.release <- struct{}{}
	if st := <-done; st != 200 {
		t.Errorf("the run in progress at shutdown: status %d, want 200", st)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestInfoEndpoints(t *testing.T) {
	s, url := testServer(t, Config{Slots: 3, GitHubAPI: "http://gh.example"})
	s.Start(t.Context())
	get := func(path string) (*http.Response, []byte) {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	var images ImagesResponse
	_, b := get("/api/v2/images")
	json.Unmarshal(b, &images)
	if diff := cmp.Diff(ImagesResponse{Default: "demo", Images: []ImagePreset{{Reference: "demo", Description: "busybox"}}}, images); diff != "" {
		t.Errorf("images (-want +got):\n%s", diff)
	}
	var st StatusResponse
	_, b = get("/api/v2/status")
	json.Unmarshal(b, &st)
	if st != (StatusResponse{Slots: 3}) {
		t.Errorf("status %+v", st)
	}
	var cfg ConfigResponse
	_, b = get("/api/v2/config")
	json.Unmarshal(b, &cfg)
	if cfg.GitHubAPI != "http://gh.example" || cfg.MaxBody != 1<<20 {
		t.Errorf("config %+v", cfg)
	}
	waitHealth(t, url, 200, "ready\n")
	if resp, b := get("/api/v2/nothing"); resp.StatusCode != 404 || !strings.Contains(string(b), `"error"`) {
		t.Errorf("unknown API path: %d %s", resp.StatusCode, b)
	}
	resp, b := get("/")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "connect-src 'self' http://gh.example") || !bytes.Contains(b, []byte("<")) {
		t.Errorf("page: %d CSP %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["echo"]}`))
	_, b = get("/metrics")
	for _, want := range []string{`pe_http_requests_total{code="200",route="runi"} 1`, `pe_image_cache_total{result="hit"} 1`, "pe_queue_depth 0", "pe_run_duration_seconds_count{kind=\"Ok\"} 1"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestCrossOriginRefused(t *testing.T) {
	_, url := testServer(t, Config{})
	req, _ := http.NewRequestWithContext(t.Context(), "POST", url+"/api/v2/runi/amd64/linux/demo", strings.NewReader(`{"cmd":["echo"]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	req.Header.Set("Origin", "https://evil.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-site POST got %d, want 403", resp.StatusCode)
	}
}

func TestGistProxy(t *testing.T) {
	gh := gisttest.New(t, "../gist/testdata")
	const id, rev = "bbbbbbbbbbbbbbbbbbbb", "2222222222222222222222222222222222222222"
	gh.AddGist(t, id, rev, map[string]string{"pe.toml": "image = \"busybox\"\n", "main.sh": "echo hi\n"})
	_, url := testServer(t, Config{Gists: &gist.Client{BaseURL: gh.URL}})
	for _, c := range []struct {
		desc, path string
		wantStatus int
		wantCache  string
		wantFiles  map[string]string
	}{
		{"latest", "/api/gh/gist/" + id, 200, "public, max-age=60", map[string]string{"pe.toml": "image = \"busybox\"\n", "main.sh": "echo hi\n"}},
		{"revision", "/api/gh/gist/" + id + "/" + rev, 200, "public, max-age=31536000, immutable", map[string]string{"pe.toml": "image = \"busybox\"\n", "main.sh": "echo hi\n"}},
		{"not found", "/api/gh/gist/cccccccccccccccccccc", 404, "", nil},
		{"bad id", "/api/gh/gist/..%2Fetc", 400, "", nil},
		{"short revision", "/api/gh/gist/" + id + "/abc", 400, "", nil},
	} {
		t.Run(c.desc, func(t *testing.T) {
			resp, err := http.Get(url + c.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var got GistResponse
			json.NewDecoder(resp.Body).Decode(&got)
			if resp.StatusCode != c.wantStatus || resp.Header.Get("Cache-Control") != c.wantCache {
				t.Fatalf("status %d Cache-Control %q, want %d %q", resp.StatusCode, resp.Header.Get("Cache-Control"), c.wantStatus, c.wantCache)
			}
			if c.wantFiles != nil {
				if diff := cmp.Diff(c.wantFiles, got.Files); diff != "" {
					t.Errorf("files (-want +got):\n%s", diff)
				}
				if got.Version != rev || len(got.Versions) == 0 || got.Versions[0] != rev {
					t.Errorf("version %q versions %q, want %s first", got.Version, got.Versions, rev)
				}
			}
		})
	}
	gh.SetRateLimited(time.Now().Add(time.Minute))
	resp, err := http.Get(url + "/api/gh/gist/dddddddddddddddddddd")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("GitHub rate limit: status %d Retry-After %q, want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/gist/gisttest"
	"github.com/pe-project/pe/pearchive"
)

// The tests here are the hostile visitor's: what the original client
// sends that pe refused, the errors a visitor may see, the budgets, and
// the attacks tried against pe serve, each answered with a clear 4xx.

// TestOriginalClientRequests sends what Program Explorer's page sends: a
// blank line of its env editor (""), and its stdin menu's first option
// ("/dev/null"). The original ran both, ignoring the blank entry and
// giving no stdin; so does pe.
func TestOriginalClientRequests(t *testing.T) {
	fake := newFakeRunner()
	_, url := testServer(t, Config{Runner: fake})
	in := []pearchive.MemFile{{Path: "test.sh", Data: []byte("echo hi\n")}}
	for _, c := range []struct {
		desc       string
		ctype      string
		req        map[string]any
		wantStdout string
		wantEnv    []string
		wantStdin  bool
	}{
		{"blank env line", pearchive.ContentType, map[string]any{"entrypoint": []string{}, "cmd": []string{"env"}, "env": []string{"A=1", "", "B=2", ""}, "stdin": nil},
			`["A=1" "B=2"] replace=true workdir=/run/pe/input`, []string{"A=1", "B=2"}, false},
		{"only a blank env line", pearchive.ContentType, map[string]any{"entrypoint": []string{}, "cmd": []string{"env"}, "env": []string{""}},
			`[] replace=true workdir=/run/pe/input`, []string{}, false},
		{"stdin /dev/null", pearchive.ContentType, map[string]any{"entrypoint": []string{}, "cmd": []string{"cat"}, "env": []string{}, "stdin": "/dev/null"},
			"", []string{}, false},
		{"stdin /dev/null in JSON mode", "application/json", map[string]any{"cmd": []string{"cat"}, "stdin": "/dev/null"},
			"", nil, false},
		{"stdin a file", pearchive.ContentType, map[string]any{"cmd": []string{"cat"}, "stdin": "test.sh"},
			"echo hi\n", nil, true},
	} {
		t.Run(c.desc, func(t *testing.T) {
			var body []byte
			if c.ctype == pearchive.ContentType {
				body = archiveBody(t, c.req, in)
			} else {
				body, _ = json.Marshal(c.req)
			}
			resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", c.ctype, body)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			var stdout string
			if c.ctype == pearchive.ContentType {
				_, files := decodeArchiveResponse(t, b)
				stdout = files["stdout"]
			} else {
				var got RunResponse
				json.Unmarshal(b, &got)
				stdout = *got.Stdout
			}
			if stdout != c.wantStdout {
				t.Errorf("stdout %q, want %q", stdout, c.wantStdout)
			}
			reqs := fake.recorded()
			r := reqs[len(reqs)-1]
			if c.wantEnv != nil {
				if diff := cmp.Diff(c.wantEnv, r.Env); diff != "" {
					t.Errorf("env (-want +got):\n%s", diff)
				}
			}
			if (r.Stdin != nil) != c.wantStdin {
				t.Errorf("stdin given: %v, want %v", r.Stdin != nil, c.wantStdin)
			}
		})
	}
}

// TestClientErrorsAre4xx sends what the engine or the guest would refuse
// as its own failure (a 500 before): each is a 400 naming the problem.
func TestClientErrorsAre4xx(t *testing.T) {
	_, url := testServer(t, Config{})
	for _, c := range []struct {
		desc, body string
		wantError  string
	}{
		{"env entry without =", `{"cmd":["env"],"env":["JUSTANAME"]}`, "BadRequest"},
		{"env entry without a name", `{"cmd":["env"],"env":["=x"]}`, "BadRequest"},
		{"NUL in an argument", `{"cmd":["echo","a\u0000b"]}`, "BadRequest"},
		{"NUL in env", `{"cmd":["env"],"env":["A=\u0000"]}`, "BadRequest"},
		{"NUL in workdir", `{"cmd":["ls"],"workdir":"/tmp\u0000"}`, "BadRequest"},
		{"empty program", `{"entrypoint":[],"cmd":[""]}`, "OciSpec"},
		{"empty entrypoint program", `{"entrypoint":[""],"cmd":["x"]}`, "OciSpec"},
		{"negative timeout", `{"cmd":["echo"],"timeout_ms":-5}`, "BadRequest"},
		{"JSON of the wrong shape", `["cmd"]`, "BadRequest"},
		{"env of the wrong type", `{"cmd":["env"],"env":"A=1"}`, "BadRequest"},
		{"not JSON", `cmd=echo`, "BadRequest"},
		{"image not found", `{"cmd":["imagefail"]}`, "ImageNotFound"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(c.body))
			var e ErrorBody
			json.Unmarshal(b, &e)
			if resp.StatusCode < 400 || resp.StatusCode > 499 || e.Error != c.wantError || e.Detail == "" {
				t.Errorf("status %d %s, want a 4xx with error %q and a detail", resp.StatusCode, b, c.wantError)
			}
		})
	}
}

// TestErrorsHideHostDetails checks what a visitor sees of the server's
// own failures: a generic detail with the request id, never the host
// paths or the guest console, which go to the log under the same id.
func TestErrorsHideHostDetails(t *testing.T) {
	var logBuf syncBuffer
	log := slog.New(slog.NewJSONHandler(&logBuf, nil))
	_, url := testServer(t, Config{Log: log})
	for _, c := range []struct {
		desc       string
		cmd        string
		wantStatus int
		wantError  string
		secrets    []string
	}{
		{"VM failure", "vmfail", 500, "Worker", []string{"/var/lib/pe-secret", "secret-console-line"}},
		{"image failure", "imagefail", 404, "ImageNotFound", []string{"/home/operator"}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["`+c.cmd+`"]}`))
			var e ErrorBody
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			id := resp.Header.Get("X-Request-Id")
			if resp.StatusCode != c.wantStatus || e.Error != c.wantError || e.RequestID != id || id == "" {
				t.Errorf("status %d %s (X-Request-Id %q), want %d %s with the request id", resp.StatusCode, b, id, c.wantStatus, c.wantError)
			}
			for _, s := range c.secrets {
				if strings.Contains(string(b), s) {
					t.Errorf("the response carries %q: %s", s, b)
				}
				if !strings.Contains(logBuf.String(), s) {
					t.Errorf("the log lacks %q", s)
				}
			}
			if c.wantStatus == 500 && !strings.Contains(e.Detail, id) {
				t.Errorf("detail %q does not give the request id %s", e.Detail, id)
			}
		})
	}
	// A preset whose source is a file on the server is reported by its
	// name.
	resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["echo"]}`))
	var ran RunResponse
	if json.Unmarshal(b, &ran) != nil || resp.StatusCode != 200 || ran.Image != "demo" || strings.Contains(string(b), "/srv/demo") {
		t.Errorf("a run of the preset: %d %s, want image \"demo\" and no host path", resp.StatusCode, b)
	}
	// A run whose output files the engine refused is still the program's
	// result (a Panic, as the original had it), without the host path.
	resp, b = post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["badoutput"]}`))
	var got RunResponse
	json.Unmarshal(b, &got)
	if resp.StatusCode != 200 || got.Kind != KindPanic || strings.Contains(string(b), os.TempDir()) {
		t.Errorf("refused output files: status %d %s, want 200 Panic without host paths", resp.StatusCode, b)
	}
}

// syncBuffer is a bytes.Buffer for a log written from handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestScrubHostPaths(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"open /home/op/.cache/pe/x: no such file", "open …: no such file"},
		{`image "/srv/img.erofs": bad`, `image "…": bad`},
		{"docker.io/library/busybox:latest not found", "docker.io/library/busybox:latest not found"},
		{"GET https://registry-1.docker.io/v2/x/manifests/y: UNAUTHORIZED", "GET https://registry-1.docker.io/v2/x/manifests/y: UNAUTHORIZED"},
		{"no file /run/pe/input/x.txt", "no file /run/pe/input/x.txt"},
		{"stdin /dev/null", "stdin /dev/null"},
		{"/tmp/pe-serve-1/input/a: file exists", "…: file exists"},
		{"(at /etc/passwd)", "(at …)"},
	} {
		if got := scrubHostPaths(c.in); got != c.want {
			t.Errorf("scrubHostPaths(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestSweepWorkDirs checks a new server removes the work directories of
// servers that are gone, and only those.
func TestSweepWorkDirs(t *testing.T) {
	tmp := t.TempDir()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	mk := func(name, owner string, age time.Duration) {
		d := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Join(d, "input"), 0o700); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			os.WriteFile(filepath.Join(d, workDirOwner), []byte(owner), 0o600)
		}
		old := time.Now().Add(-age)
		os.Chtimes(d, old, old)
	}
	mk("pe-serve-dead", fmt.Sprint(dead.Process.Pid), 0)
	mk("pe-serve-live", fmt.Sprint(os.Getpid()), 2*time.Hour)
	mk("pe-serve-noowner-new", "", 0)
	mk("pe-serve-noowner-old", "", 2*time.Hour)
	mk("pe-run-other", fmt.Sprint(dead.Process.Pid), 0)
	if _, err := New(Config{Runner: newFakeRunner(), TempDir: tmp}); err != nil {
		t.Fatal(err)
	}
	var left []string
	ents, _ := os.ReadDir(tmp)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if diff := cmp.Diff([]string{"pe-run-other", "pe-serve-live", "pe-serve-noowner-new"}, left); diff != "" {
		t.Errorf("left after the sweep (-want +got):\n%s", diff)
	}
}

// blockingImages is an ImageSource whose resolutions wait for release.
type blockingImages struct {
	release chan struct{}
	calls   atomic.Int32
}

func (b *blockingImages) Resolve(ctx context.Context, ref string) (*engine.ResolvedImage, error) {
	b.calls.Add(1)
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	switch ref {
	case "missing":
		return nil, fmt.Errorf("image %s: open /secret/path: no such file", ref)
	case "/srv/file.erofs":
		// An EROFS file resolves without a digest.
		return &engine.ResolvedImage{Reference: ref, EROFSPath: ref}, nil
	}
	return &engine.ResolvedImage{Reference: ref, Digest: "sha256:" + strings.Repeat("a", 64)}, nil
}

// TestImagesNeverWait checks GET /api/v2/images answers at once while
// the presets are being resolved, then with their digests, and that its
// errors name no host path.
func TestImagesNeverWait(t *testing.T) {
	imgs := &blockingImages{release: make(chan struct{})}
	_, url := testServer(t, Config{Images: imgs, Presets: []Preset{{Name: "demo"}, {Name: "gone", Source: "missing"}, {Name: "file", Source: "/srv/file.erofs"}}})
	get := func() ImagesResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", url+"/api/v2/images", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /api/v2/images while a resolution hangs: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if strings.Contains(string(b), "/secret") {
			t.Errorf("the answer names a host path: %s", b)
		}
		var got ImagesResponse
		json.Unmarshal(b, &got)
		return got
	}
	for range 3 {
		if got := get(); len(got.Images) != 3 || got.Images[0].Digest != "" {
			t.Errorf("while resolving: %+v", got)
		}
	}
	if n := imgs.calls.Load(); n > 1 {
		t.Errorf("%d resolutions under way at once, want 1", n)
	}
	close(imgs.release)
	waitFor(t, func() bool { return get().Images[0].Digest != "" })
	got := get()
	if got.Images[1].Digest != "" || got.Images[1].Error == "" {
		t.Errorf("the missing preset: %+v", got.Images[1])
	}
	if got.Images[2].Error != "" || strings.Contains(got.Images[2].Reference, "/srv") {
		t.Errorf("the EROFS file preset: %+v", got.Images[2])
	}
}

// TestImagesRateLimited checks /api/v2/images has a per-client limit.
func TestImagesRateLimited(t *testing.T) {
	_, url := testServer(t, Config{RatePerSecond: 0.001, RateBurst: 1})
	var statuses []int
	for range readRateFactor + 1 {
		resp, err := http.Get(url + "/api/v2/images")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
			t.Error("429 without Retry-After")
		}
	}
	want := []int{200, 200, 200, 200, 200, 429}
	if diff := cmp.Diff(want, statuses); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
}

// TestGistBudget checks the per-client budget of gist fetches: a fetch
// GitHub answers costs one, a cached revision and a 304 nothing, and a
// client past its budget gets 429 with Retry-After for the rest, while
// another client still has its own.
func TestGistBudget(t *testing.T) {
	gh := gisttest.New(t, "../gist/testdata")
	ids := []string{"aaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccc"}
	const rev = "2222222222222222222222222222222222222222"
	for _, id := range ids {
		gh.AddGist(t, id, rev, map[string]string{"pe.toml": "image = \"busybox\"\n"})
	}
	_, url := testServer(t, Config{
		Gists:          &gist.Client{BaseURL: gh.URL, CacheDir: t.TempDir()},
		GistsPerHour:   2,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	get := func(path, client string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "GET", url+"/api/gh/gist/"+path, nil)
		req.Header.Set("X-Forwarded-For", client)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s: 429 without Retry-After", path)
		}
		return resp.StatusCode
	}
	var got []int
	for _, path := range []string{
		ids[0],             // GitHub answers: 1 spent
		ids[0],             // 304: free
		ids[0] + "/" + rev, // cached revision: free
		ids[1],             // 2 spent
		ids[2],             // over budget
		ids[1] + "/" + rev, // cached revision: still served
		ids[2] + "/" + rev, // not cached: over budget
	} {
		got = append(got, get(path, "10.0.0.1"))
	}
	if diff := cmp.Diff([]int{200, 200, 200, 200, 429, 200, 429}, got); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	if st := get(ids[2], "10.0.0.2"); st != 200 {
		t.Errorf("another client: status %d, want 200", st)
	}
}

// TestTimeoutCapped checks a request cannot ask for more time than the
// server's limit (a gist's pe.toml timeout reaches the server as
// timeout_ms), nor for memory: the request has no such field.
func TestTimeoutCapped(t *testing.T) {
	fake := newFakeRunner()
	_, url := testServer(t, Config{Runner: fake, RunTimeout: 3 * time.Second, MemoryMiB: 256})
	for _, ms := range []int64{1 << 62, 100000, 1500} {
		body := fmt.Sprintf(`{"cmd":["echo"],"timeout_ms":%d,"memory":"64G","memory_mib":65536}`, ms)
		resp, b := post(t, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(body))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, b)
		}
		reqs := fake.recorded()
		r := reqs[len(reqs)-1]
		want := min(3*time.Second, time.Duration(ms)*time.Millisecond)
		if r.Timeout != want || r.MemoryMiB != 256 {
			t.Errorf("timeout_ms %d: run with %v and %d MiB, want %v and 256 MiB", ms, r.Timeout, r.MemoryMiB, want)
		}
	}
}

// TestAttacks tries what a hostile visitor would: each gets a clear 4xx.
func TestAttacks(t *testing.T) {
	gh := gisttest.New(t, "../gist/testdata")
	_, url := testServer(t, Config{MaxBody: 64 << 10, Gists: &gist.Client{BaseURL: gh.URL}})
	run := "/api/v2/runi/amd64/linux/"
	okJSON := []byte(`{"cmd":["echo","x"]}`)
	for _, c := range []struct {
		desc       string
		method     string
		path       string
		ctype      string
		body       []byte
		wantStatus int
	}{
		{"traversal reference", "POST", run + "../../etc/passwd", "application/json", okJSON, 400},
		{"encoded traversal reference", "POST", run + "%2e%2e/%2e%2e/etc/passwd", "application/json", okJSON, 400},
		{"traversal inside a reference", "POST", run + "docker.io/library/../../../etc/busybox", "application/json", okJSON, 400},
		{"absolute path reference", "POST", run + "/etc/passwd", "application/json", okJSON, 400},
		{"encoded absolute path", "POST", run + "%2Fetc%2Fpasswd", "application/json", okJSON, 400},
		{"oci layout", "POST", run + "oci:/var/lib/images/x", "application/json", okJSON, 400},
		{"oci relative layout", "POST", run + "oci:../x", "application/json", okJSON, 400},
		{"docker archive", "POST", run + "docker-archive:/tmp/x.tar", "application/json", okJSON, 400},
		{"erofs file", "POST", run + "erofs:/etc/passwd", "application/json", okJSON, 400},
		{"erofs suffix", "POST", run + "x.erofs", "application/json", okJSON, 400},
		{"URL reference", "POST", run + "https://evil.example/x", "application/json", okJSON, 400},
		// s3:// images are pulled with the operator's AWS credentials:
		// only presets and --allow-image s3:// prefixes may name them
		// (TestS3Allowed).
		{"s3 reference", "POST", run + "s3://operator-bucket/images/x:latest", "application/json", okJSON, 400},
		{"encoded s3 reference", "POST", run + "s3:%2F%2Foperator-bucket%2Fimages%2Fx", "application/json", okJSON, 403},
		{"tar path", "POST", run + "%2Ftmp%2Fx.tar", "application/json", okJSON, 400},
		{"empty segment", "POST", run + "docker.io//library/busybox", "application/json", okJSON, 400},
		{"huge stdin name", "POST", run + "demo", pearchive.ContentType, framed(`{"cmd":["cat"],"stdin":"`+strings.Repeat("a", 60000)+`"}`, nil), 400},
		{"huge env entry", "POST", run + "demo", "application/json", []byte(`{"cmd":["env"],"env":["` + strings.Repeat("a", 60000) + `"]}`), 400},
		{"stdin traversal", "POST", run + "demo", pearchive.ContentType, framed(`{"cmd":["cat"],"stdin":"/run/pe/input/../../../etc/passwd"}`, nil), 400},
		{"stdin absolute", "POST", run + "demo", pearchive.ContentType, framed(`{"cmd":["cat"],"stdin":"/etc/passwd"}`, nil), 400},
		{"huge body", "POST", run + "demo", "application/json", bytes.Repeat([]byte("a"), 1<<20), 413},
		{"huge frame length", "POST", run + "demo", pearchive.ContentType, []byte{0xff, 0xff, 0xff, 0x7f, '{', '}'}, 400},
		{"archive file larger than the body", "POST", run + "demo", pearchive.ContentType,
			framed(`{"cmd":["ls"]}`, rawArchive(byte(1), "f", byte(0), uint32(1<<31))), 400},
		{"deep archive", "POST", run + "demo", pearchive.ContentType,
			framed(`{"cmd":["ls"]}`, bytes.Repeat(rawArchive(byte(2), "d", byte(0)), 10000)), 400},
		{"gist id with ..", "GET", "/api/gh/gist/..", "", nil, 400},
		{"gist id with ../", "GET", "/api/gh/gist/..%2F..%2Fetc%2Fpasswd", "", nil, 400},
		{"gist revision with ..", "GET", "/api/gh/gist/aaaaaaaaaaaaaaaaaaaa/..", "", nil, 400},
		{"gist id too long", "GET", "/api/gh/gist/" + strings.Repeat("a", 5000), "", nil, 400},
		{"arch too long", "POST", "/api/v2/runi/" + strings.Repeat("a", 5000) + "/linux/demo", "application/json", okJSON, 400},
		{"content type too long", "POST", run + "demo", strings.Repeat("a", 5000), okJSON, 415},
	} {
		t.Run(c.desc, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), c.method, url+c.path, bytes.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			if c.ctype != "" {
				req.Header.Set("Content-Type", c.ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var e ErrorBody
			json.Unmarshal(b, &e)
			// Go's mux answers a path with ".." segments with a redirect
			// to the cleaned path, which is then refused like the rest.
			if resp.StatusCode != c.wantStatus || e.Error == "" || e.Detail == "" || len(e.Detail) > 1000 {
				t.Errorf("status %d %s, want %d with an error and a detail", resp.StatusCode, clip(string(b), 300), c.wantStatus)
			}
		})
	}
}

// TestSlowlorisBody sends a chunked body that never ends, a byte at a
// time: the body deadline answers 408 and frees the handler.
func TestSlowlorisBody(t *testing.T) {
	s, url := testServer(t, Config{BodyTimeout: 500 * time.Millisecond})
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v2/runi/amd64/linux/demo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
	stop := make(chan struct{})
	trickled := make(chan struct{})
	go func() {
		defer close(trickled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := fmt.Fprintf(conn, "1\r\n \r\n"); err != nil {
				return
			}
		}
	}()
	defer func() { close(stop); <-trickled }()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 4096)
	n, _ := conn.Read(b)
	if !bytes.Contains(b[:n], []byte(" 408 ")) {
		t.Errorf("after %v: %q, want a 408", time.Since(start).Round(time.Millisecond), b[:n])
	}
	s.inFlight.Wait()
}

// TestOverload has 10 × Slots clients send runs for a few seconds over
// the fake runner (real VMs under TCG would be too slow for that many
// runs; TestVMRuns and TestVMQueue cover the real engine). Every request
// is answered: a result, or 429 or 503 with Retry-After. After it no
// goroutine, file or request is left and the heap is back near where it
// started.
func TestOverload(t *testing.T) {
	if testing.Short() {
		t.Skip("a few seconds of load; skipped with -short")
	}
	const slots = 2
	clients := 10 * slots
	duration := 4 * time.Second
	tmp := t.TempDir()
	fake := newFakeRunner()
	s, err := New(Config{
		Runner: fake, Presets: []Preset{{Name: "demo"}},
		Slots: slots, MaxQueue: 2 * slots, MaxWait: 300 * time.Millisecond,
		RatePerSecond: 20, RateBurst: 10, MaxBody: 256 << 10, TempDir: tmp,
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutinesBefore := runtime.NumGoroutine()

	ctx, stop := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln, 10*time.Second) }()
	url := "http://" + ln.Addr().String() + "/api/v2/runi/amd64/linux/demo"
	files := []pearchive.MemFile{{Path: "in.txt", Data: bytes.Repeat([]byte("x"), 100<<10)}, {Path: "d/e/f.txt", Data: []byte("f")}}
	bodies := []struct {
		ctype string
		body  []byte
	}{
		{"application/json", []byte(`{"cmd":["sleep","50"]}`)},
		{"application/json", []byte(`{"cmd":["big","300000"]}`)},
		{pearchive.ContentType, archiveBody(t, map[string]any{"cmd": []string{"cat"}, "stdin": "in.txt"}, files)},
		{pearchive.ContentType, archiveBody(t, map[string]any{"entrypoint": []string{"write"}, "cmd": []string{"o/p.txt", "out"}}, files)},
	}
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(duration)
	for i := range clients {
		wg.Go(func() {
			// Clients 0-4 share an address, the rest have their own.
			addr := fmt.Sprintf("10.0.0.%d", max(i, 4))
			for n := 0; time.Now().Before(deadline) && n < 10000; n++ {
				b := bodies[(i+n)%len(bodies)]
				req, _ := http.NewRequestWithContext(t.Context(), "POST", url, bytes.NewReader(b.body))
				req.Header.Set("Content-Type", b.ctype)
				req.Header.Set("X-Forwarded-For", addr)
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("client %d: %v", i, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				counts[resp.StatusCode]++
				mu.Unlock()
				switch resp.StatusCode {
				case 200:
				case 429, 503:
					if resp.Header.Get("Retry-After") == "" {
						t.Errorf("client %d: %d without Retry-After", i, resp.StatusCode)
					}
				default:
					t.Errorf("client %d: status %d", i, resp.StatusCode)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("answers by status after %v with %d clients on %d slots: %v", duration, clients, slots, counts)
	if counts[200] == 0 || counts[429]+counts[503] == 0 {
		t.Errorf("statuses %v: want results and refusals both", counts)
	}
	if fake.peak > slots {
		t.Errorf("%d runs at once on %d slots", fake.peak, slots)
	}
	tr.CloseIdleConnections()
	stop()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}

	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left in the work directory: %v", left)
	}
	if q, r := s.queue.counts(); q != 0 || r != 0 {
		t.Errorf("after the load: %d queued, %d running", q, r)
	}
	// Goroutines take a moment to end after their connections close.
	var n int
	for range 200 {
		if n = runtime.NumGoroutine(); n <= goroutinesBefore {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n > goroutinesBefore {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the load, %d before:\n%s", n, goroutinesBefore, buf[:runtime.Stack(buf, true)])
	}
	fake.mu.Lock()
	fake.requests = nil // the fake's record is the test's, not the server's
	fake.mu.Unlock()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	const bound = 32 << 20
	t.Logf("heap in use: %d KiB before, %d KiB after", before.HeapInuse>>10, after.HeapInuse>>10)
	if after.HeapInuse > before.HeapInuse+bound {
		t.Errorf("heap in use grew from %d to %d bytes, over the bound of %d", before.HeapInuse, after.HeapInuse, bound)
	}
}

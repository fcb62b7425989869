package s3test_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
)

// backend serves body with a few headers of its own, and records the Host
// of the last request.
type backend struct {
	body []byte
	mu   sync.Mutex
	host string
}

func (b *backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.host = r.Host
	b.mu.Unlock()
	w.Header().Set("ETag", `"abc"`)
	w.Header().Set("X-Amz-Request-Id", "req-1")
	w.WriteHeader(http.StatusPartialContent)
	w.Write(b.body)
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// get GETs url and returns the answer, its body and how long it took.
func get(t *testing.T, u string) (*http.Response, []byte, time.Duration) {
	t.Helper()
	start := time.Now()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body, time.Since(start)
}

func TestDelay(t *testing.T) {
	for _, tc := range []struct {
		name       string
		perRequest time.Duration
		rate       int64
		size       int
		// least is the least the GET must take.
		least time.Duration
	}{
		{name: "request delay only", perRequest: 150 * time.Millisecond, size: 1 << 20, least: 150 * time.Millisecond},
		{name: "rate only", rate: 4 << 20, size: 1 << 20, least: 250 * time.Millisecond},
		{name: "both", perRequest: 100 * time.Millisecond, rate: 8 << 20, size: 2 << 20, least: 350 * time.Millisecond},
		{name: "empty body", perRequest: 100 * time.Millisecond, rate: 1, size: 0, least: 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &backend{body: randomBytes(t, tc.size)}
			srv := httptest.NewServer(s3test.Delay(b, tc.perRequest, s3test.NewLink(tc.rate)))
			defer srv.Close()
			resp, body, took := get(t, srv.URL+"/bucket/key")
			if !bytes.Equal(body, b.body) {
				t.Errorf("body changed: got %d bytes, want the backend's %d", len(body), len(b.body))
			}
			if resp.StatusCode != http.StatusPartialContent || resp.Header.Get("ETag") != `"abc"` || resp.Header.Get("X-Amz-Request-Id") != "req-1" {
				t.Errorf("answer changed: status %d, headers %v", resp.StatusCode, resp.Header)
			}
			if took < tc.least {
				t.Errorf("the GET took %v, want at least %v", took, tc.least)
			}
			// Far more than asked would be a bug too (a rate misread as
			// bits, a delay per write): the bound leaves room for load.
			if most := 3*tc.least + time.Second; took > most {
				t.Errorf("the GET took %v, want at most %v", took, most)
			}
		})
	}
}

// The link's rate is shared: two GETs at once take as long as both bodies
// one after the other, not as one.
func TestLinkShared(t *testing.T) {
	const size, rate = 1 << 20, 4 << 20
	b := &backend{body: randomBytes(t, size)}
	srv := httptest.NewServer(s3test.Delay(b, 0, s3test.NewLink(rate)))
	defer srv.Close()
	start := time.Now()
	var wg sync.WaitGroup
	bodies := make([][]byte, 2)
	for i := range bodies {
		wg.Go(func() { _, bodies[i], _ = get(t, srv.URL+"/k") })
	}
	wg.Wait()
	took := time.Since(start)
	for i, body := range bodies {
		if !bytes.Equal(body, b.body) {
			t.Errorf("body %d changed: %d bytes", i, len(body))
		}
	}
	if least := time.Duration(2 * size * int64(time.Second) / rate); took < least {
		t.Errorf("two GETs at once took %v, want at least %v (the link is shared)", took, least)
	}
}

// The proxy keeps the Host a client signed for, so that a real S3 server
// that checks signatures accepts requests made through it.
func TestProxyVersitygw(t *testing.T) {
	g := s3test.Start(t)
	proxy, err := s3test.Proxy(g.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s3test.Delay(proxy, 10*time.Millisecond, s3test.NewLink(64<<20)))
	defer srv.Close()
	c, err := s3.New(s3.Config{Endpoint: srv.URL, Region: s3.DefaultRegion, AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, PathStyle: true}, s3.Options{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := c.CreateBucket(ctx, "bench"); err != nil {
		t.Fatalf("creating a bucket through the proxy: %v", err)
	}
	data := randomBytes(t, 3<<20)
	if _, err := c.PutObject(ctx, "bench", "blob", data, s3.PutOptions{}); err != nil {
		t.Fatalf("PUT through the proxy: %v", err)
	}
	rc, err := c.ReadRange(ctx, "bench", "blob", 1<<20, 1<<20)
	if err != nil {
		t.Fatalf("ranged GET through the proxy: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(data[1<<20:2<<20], got); diff != "" {
		t.Errorf("ranged GET through the proxy: bytes differ (-want +got):\n%.300s", diff)
	}
}

func TestProxyKeepsHost(t *testing.T) {
	b := &backend{body: []byte("x")}
	back := httptest.NewServer(b)
	defer back.Close()
	proxy, err := s3test.Proxy(back.URL)
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(proxy)
	defer front.Close()
	get(t, front.URL+"/b/k")
	u, _ := url.Parse(front.URL)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.host != u.Host {
		t.Errorf("the server saw Host %q, want the proxy's %q (signatures cover it)", b.host, u.Host)
	}
}

func TestProxyBadTarget(t *testing.T) {
	for _, target := range []string{"", "127.0.0.1:7070", "ftp://x", "http://"} {
		if _, err := s3test.Proxy(target); err == nil {
			t.Errorf("Proxy(%q): no error", target)
		}
	}
}

// The proxy keeps its connections to the server for the next requests,
// however many clients send at once: opening one per request cost the
// store's stand-in more CPU than the bodies, on the machine it shares with
// the VMs it feeds.
func TestProxyKeepsConnections(t *testing.T) {
	var opened atomic.Int64
	upstream := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond) // the clients' requests overlap
		io.WriteString(w, "chunk")
	}))
	upstream.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	upstream.Start()
	defer upstream.Close()
	proxy, err := s3test.Proxy(upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s3test.Delay(proxy, 0, nil))
	defer srv.Close()
	const clients, each = 8, 5
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for range each {
				resp, err := client.Get(srv.URL + "/bucket/key")
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if n := opened.Load(); n > clients {
		t.Errorf("the proxy opened %d connections to the server for %d clients' %d requests, want at most %d", n, clients, clients*each, clients)
	}
}

// Files serves a bucket laid out as versitygw's posix backend does to
// pe's own S3 client, ranges included, and nothing outside its directory.
func TestFiles(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(t, 1<<20)
	if err := os.MkdirAll(filepath.Join(dir, "bench", "ce", "blobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench", "ce", "blobs", "b1"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	// A file beside the directory served, which no path may reach.
	if err := os.WriteFile(filepath.Join(filepath.Dir(dir), filepath.Base(dir)+"-secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(filepath.Join(filepath.Dir(dir), filepath.Base(dir)+"-secret"))
	srv := httptest.NewServer(s3test.Delay(s3test.Files(dir), 0, s3test.NewLink(64<<20)))
	defer srv.Close()
	c, err := s3.New(s3.Config{Endpoint: srv.URL, Region: s3.DefaultRegion, AccessKeyID: "any",
		SecretAccessKey: "any", PathStyle: true}, s3.Options{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.ReadRange(t.Context(), "bench", "ce/blobs/b1", 1000, 5000)
	if err != nil {
		t.Fatalf("ranged GET: %v", err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data[1000:6000]) {
		t.Errorf("ranged GET: %d bytes, err %v; want bytes 1000-5999 of the file", len(got), err)
	}
	if _, err := c.ReadRange(t.Context(), "bench", "ce/blobs/none", 0, 10); !s3.IsPermanent(err) || !strings.Contains(err.Error(), "NoSuchKey") {
		t.Errorf("GET of a missing key: %v, want a permanent NoSuchKey", err)
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodHead, "/bench/ce/blobs/b1", http.StatusOK},
		{http.MethodGet, "/bench/../" + filepath.Base(dir) + "-secret", http.StatusNotFound},
		{http.MethodGet, "/../" + filepath.Base(dir) + "-secret", http.StatusNotFound},
		{http.MethodGet, "/bench/ce/blobs", http.StatusNotFound},
		{http.MethodPut, "/bench/ce/blobs/b2", http.StatusNotImplemented},
		{http.MethodDelete, "/bench/ce/blobs/b1", http.StatusNotImplemented},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), tc.method, srv.URL+tc.path, strings.NewReader(""))
		req.URL.Opaque = tc.path // as sent: no client-side cleaning of ..
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
		if tc.method == http.MethodHead && resp.ContentLength != int64(len(data)) {
			t.Errorf("HEAD: length %d, want %d", resp.ContentLength, len(data))
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bench", "ce", "blobs", "b1")); err != nil {
		t.Errorf("the DELETE removed the file: %v", err)
	}
}

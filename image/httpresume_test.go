package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/ulikunitz/xz"
)

// tarServer serves a tarball over HTTP the ways servers misbehave: the
// first cuts answers end after cutAfter bytes of body, by a dropped
// connection or a stall; body gives the file (and its ETag) the n-th
// request (from 1) sees.
type tarServer struct {
	body     func(n int32) (data []byte, etag string)
	cuts     int32
	cutAfter int64
	stall    bool
	noRanges bool // answer every GET with the whole file, no Accept-Ranges
	status   func(n int32) int

	requests, ranged atomic.Int32
}

func (s *tarServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	if r.Header.Get("Range") != "" {
		s.ranged.Add(1)
	}
	if s.status != nil {
		if code := s.status(n); code != 0 {
			http.Error(w, http.StatusText(code), code)
			return
		}
	}
	data, etag := s.body(n)
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	if n <= s.cuts {
		w = &cutWriter{ResponseWriter: w, left: s.cutAfter, stall: s.stall, ctx: r.Context()}
	}
	if s.noRanges {
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data)
		return
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
}

// cutWriter passes left bytes of a body, then drops the connection, or
// stalls until the client gives up.
type cutWriter struct {
	http.ResponseWriter
	left  int64
	stall bool
	ctx   context.Context
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) <= c.left {
		c.left -= int64(len(p))
		return c.ResponseWriter.Write(p)
	}
	c.ResponseWriter.Write(p[:c.left])
	c.ResponseWriter.(http.Flusher).Flush()
	if c.stall {
		<-c.ctx.Done()
	}
	panic(http.ErrAbortHandler)
}

// randomTar returns a tarball of a few files of incompressible data, so
// that its compressed form is about as large as its contents (~600 KB).
func randomTar(t *testing.T) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	entries := []fakeEntry{{name: "tool-1/"}, {name: "tool-1/bin/"}}
	for i := range 6 {
		b := make([]byte, 100<<10)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		entries = append(entries, fakeEntry{name: fmt.Sprintf("tool-1/bin/f%d", i), body: string(b)})
	}
	entries = append(entries, fakeEntry{name: "tool-1/bin/hello", body: "hello\n"})
	return fakeTar(t, entries...)
}

func gzipOf(t *testing.T, b []byte) []byte {
	return gzipBytes(t, func(w io.Writer) error { _, err := w.Write(b); return err })
}

// fastURL are URLOptions with short waits for tests.
var fastURL = URLOptions{Backoff: time.Millisecond, StallTimeout: 300 * time.Millisecond}

func TestOpenURLResumes(t *testing.T) {
	file := gzipOf(t, randomTar(t))
	same := func(int32) ([]byte, string) { return file, `"v1"` }
	for _, tc := range []struct {
		desc        string
		srv         *tarServer
		opts        URLOptions
		wantErr     error
		wantMsg     string // in the error
		wantReqs    int32
		wantRanged  int32
		wantResumes int
	}{
		{desc: "whole", srv: &tarServer{body: same}, wantReqs: 1},
		{desc: "cut three times", srv: &tarServer{body: same, cuts: 3, cutAfter: 100 << 10},
			wantReqs: 4, wantRanged: 3, wantResumes: 3},
		{desc: "stalls twice", srv: &tarServer{body: same, cuts: 2, cutAfter: 50 << 10, stall: true},
			wantReqs: 3, wantRanged: 2, wantResumes: 2},
		{desc: "cut with no bytes then resumed", srv: &tarServer{body: same, cuts: 4, cutAfter: 0},
			wantReqs: 5, wantRanged: 4, wantResumes: 4},
		{desc: "cut too often in a row", srv: &tarServer{body: same, cuts: 10, cutAfter: 0},
			opts: URLOptions{Retries: 3}, wantMsg: "unexpected EOF (after 4 tries)", wantReqs: 4, wantRanged: 3},
		{desc: "changed ETag", srv: &tarServer{cuts: 1, cutAfter: 100 << 10, body: func(n int32) ([]byte, string) {
			if n == 1 {
				return file, `"v1"`
			}
			return gzipOf(t, fakeTar(t, fakeEntry{name: "other"})), `"v2"`
		}}, wantErr: ErrRemoteChanged, wantMsg: `changed on the server while importing; start again (the server sent the whole file again, now ETag "v2")`,
			wantReqs: 2, wantRanged: 1},
		{desc: "no range support", srv: &tarServer{body: same, cuts: 1, cutAfter: 100 << 10, noRanges: true},
			wantErr: ErrCannotResume, wantMsg: "it answered the Range request with the whole file", wantReqs: 2, wantRanged: 1},
		{desc: "no validator", srv: &tarServer{body: func(int32) ([]byte, string) { return file, "" }, cuts: 1, cutAfter: 100 << 10},
			wantErr: ErrCannotResume, wantMsg: "neither an ETag nor a Last-Modified", wantReqs: 1},
		{desc: "weak ETag", srv: &tarServer{body: func(int32) ([]byte, string) { return file, `W/"v1"` }, cuts: 1, cutAfter: 100 << 10},
			wantErr: ErrCannotResume, wantMsg: "neither an ETag nor a Last-Modified", wantReqs: 1},
		{desc: "503 then fine", srv: &tarServer{body: same, status: func(n int32) int {
			if n <= 2 {
				return http.StatusServiceUnavailable
			}
			return 0
		}}, wantReqs: 3},
		{desc: "503 for ever", srv: &tarServer{body: same, status: func(int32) int { return http.StatusServiceUnavailable }},
			opts: URLOptions{Retries: 2}, wantMsg: "503 Service Unavailable (after 3 tries)", wantReqs: 3},
		{desc: "503 on resume for ever", srv: &tarServer{body: same, cuts: 1, cutAfter: 1000, status: func(n int32) int {
			if n > 1 {
				return http.StatusServiceUnavailable
			}
			return 0
		}}, opts: URLOptions{Retries: 2}, wantMsg: "503 Service Unavailable (after 3 tries)", wantReqs: 3, wantRanged: 2, wantResumes: 2},
		{desc: "404", srv: &tarServer{body: same, status: func(int32) int { return http.StatusNotFound }},
			wantErr: ErrNotFound, wantMsg: "404 Not Found", wantReqs: 1},
		{desc: "403 on resume", srv: &tarServer{body: same, cuts: 1, cutAfter: 1000, status: func(n int32) int {
			if n > 1 {
				return http.StatusForbidden
			}
			return 0
		}}, wantErr: ErrUnauthorized, wantMsg: "403 Forbidden", wantReqs: 2, wantRanged: 1, wantResumes: 1},
		{desc: "too large", srv: &tarServer{body: same}, opts: URLOptions{MaxSize: 1000},
			wantErr: ErrTooLarge, wantMsg: "over the limit of 1000 bytes", wantReqs: 1},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			srv := httptest.NewServer(tc.srv)
			defer srv.Close()
			opts := tc.opts
			opts.Backoff, opts.StallTimeout = fastURL.Backoff, fastURL.StallTimeout
			// Credentials in the URL must never show in a message.
			u := strings.Replace(srv.URL, "http://", "http://user:s3cret@", 1) + "/tool.tar.gz?X-Amz-Signature=t0ken"
			got, err := func() ([]byte, error) {
				r, err := OpenURL(t.Context(), u, opts)
				if err != nil {
					return nil, err
				}
				defer r.Close()
				b, err := io.ReadAll(r)
				if err == nil && r.Resumes() != tc.wantResumes {
					t.Errorf("%d resumes, want %d", r.Resumes(), tc.wantResumes)
				}
				return b, err
			}()
			switch {
			case tc.wantMsg == "" && err != nil:
				t.Fatal(err)
			case tc.wantMsg == "" && !bytes.Equal(got, file):
				t.Errorf("read %d bytes, not the file's %d", len(got), len(file))
			case tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)):
				t.Errorf("error %v, want one containing %q", err, tc.wantMsg)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("error %v, want errors.Is %v", err, tc.wantErr)
			case err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "t0ken")):
				t.Errorf("error shows credentials: %v", err)
			case err != nil && !strings.Contains(err.Error(), "tool.tar.gz"):
				t.Errorf("error does not name the URL: %v", err)
			}
			if n, r := tc.srv.requests.Load(), tc.srv.ranged.Load(); n != tc.wantReqs || r != tc.wantRanged {
				t.Errorf("%d requests, %d with Range; want %d, %d", n, r, tc.wantReqs, tc.wantRanged)
			}
		})
	}
}

// TestOpenURLUnknownLength: a chunked answer (no Content-Length) is read
// to its end and held to the size limit as it arrives.
func TestOpenURLUnknownLength(t *testing.T) {
	file := bytes.Repeat([]byte("0123456789"), 10000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for b := file; len(b) > 0; b = b[min(len(b), 4096):] {
			w.Write(b[:min(len(b), 4096)])
			w.(http.Flusher).Flush()
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		max     int64
		wantErr error
	}{{0, nil}, {int64(len(file)), nil}, {int64(len(file)) - 1, ErrTooLarge}} {
		r, err := OpenURL(t.Context(), srv.URL, URLOptions{MaxSize: tc.max})
		if err != nil {
			t.Fatal(err)
		}
		if r.Size() != -1 {
			t.Errorf("size %d of a chunked answer", r.Size())
		}
		got, err := io.ReadAll(r)
		r.Close()
		if !errors.Is(err, tc.wantErr) || (err == nil && !bytes.Equal(got, file)) {
			t.Errorf("max %d: %d bytes, %v; want %v", tc.max, len(got), err, tc.wantErr)
		}
	}
}

// TestOpenURLClose: Close ends a Read stalled on the network at once,
// and the context ends the retries.
func TestOpenURLClose(t *testing.T) {
	srv := httptest.NewServer(&tarServer{body: func(int32) ([]byte, string) { return make([]byte, 1<<20), `"x"` },
		cuts: 1, cutAfter: 10, stall: true})
	defer srv.Close()
	r, err := OpenURL(t.Context(), srv.URL, URLOptions{StallTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		r.Close()
	}()
	start := time.Now()
	_, err = io.ReadAll(r)
	if err == nil || time.Since(start) > 10*time.Second {
		t.Errorf("read after Close: %v after %s", err, time.Since(start))
	}

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err = OpenURL(ctx, "http://127.0.0.1:1/x", URLOptions{Backoff: time.Hour})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("OpenURL with a refused connection and an ending context: %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://example.com/a/b.tar.xz":                      "https://example.com/a/b.tar.xz",
		"https://user:pw@example.com/b.tar.xz":                "https://user:xxxxx@example.com/b.tar.xz",
		"https://example.com/b.tar.xz?X-Amz-Signature=ab&x=1": "https://example.com/b.tar.xz?X-Amz-Signature=xxxxx&x=xxxxx",
		"https://u:p@exa mple.com/x?sig=1":                    "https://exa mple.com/…",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	type r struct{ Start, End, Total int64 }
	for in, want := range map[string]*r{
		"bytes 0-0/1":                    {0, 0, 1},
		"bytes 100-199/200":              {100, 199, 200},
		"bytes 100-199/*":                {100, 199, -1},
		"BYTES  5-9/10":                  {5, 9, 10},
		"bytes 100-199/199":              nil,
		"bytes 200-100/300":              nil,
		"bytes */300":                    nil,
		"bytes -1-5/10":                  nil,
		"bytes 1-5":                      nil,
		"items 1-5/10":                   nil,
		"bytes +1-5/10":                  nil,
		"bytes 1-99999999999999999999/*": nil,
		"":                               nil,
	} {
		s, e, tot, err := parseContentRange(in)
		var got *r
		if err == nil {
			got = &r{s, e, tot}
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("parseContentRange(%q) (-want +got):\n%s (error %v)", in, diff, err)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 100-199/*", "bytes */300", "bytes 1-2/3 ", "bytes 9223372036854775806-9223372036854775806/*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		start, end, total, err := parseContentRange(s)
		if err != nil {
			return
		}
		if start < 0 || end < start || (total != -1 && end >= total) {
			t.Fatalf("parseContentRange(%q) = %d, %d, %d", s, start, end, total)
		}
		tot := "*"
		if total >= 0 {
			tot = strconv.FormatInt(total, 10)
		}
		s2, e2, t2, err := parseContentRange(fmt.Sprintf("bytes %d-%d/%s", start, end, tot))
		if err != nil || s2 != start || e2 != end || t2 != total {
			t.Fatalf("round trip of %q: %d, %d, %d, %v", s, s2, e2, t2, err)
		}
	})
}

// TestImportURL: an import from a URL whose connection drops gives the
// image an import of the same file gives, byte for byte and digest for
// digest; a failed one leaves nothing in the cache.
func TestImportURL(t *testing.T) {
	fr := newFakeRegistry(t)
	base := fr.push(t, "ubuntu:22.04", baseImage(t))
	plain := randomTar(t)
	for _, format := range []string{"xz", "gz"} {
		t.Run(format, func(t *testing.T) {
			var file []byte
			if format == "xz" {
				file = xzTarBytes(t, plain)
			} else {
				file = gzipOf(t, plain)
			}
			local := filepath.Join(t.TempDir(), "tool.tar."+format)
			if err := os.WriteFile(local, file, 0o644); err != nil {
				t.Fatal(err)
			}
			// The gzip server stalls where the xz one drops the connection.
			ts := &tarServer{body: func(int32) ([]byte, string) { return file, `"v1"` }, cuts: 3, cutAfter: int64(len(file) / 5), stall: format == "gz"}
			srv := httptest.NewServer(ts)
			defer srv.Close()
			url := srv.URL + "/dl/tool.tar." + format + "?token=secret"
			opts := ImportOptions{Tar: local, StripComponents: 1, Prefix: "/opt/tool", Base: base, Tag: "tool:1", URL: fastURL}

			want, err := testCache(t).Import(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			c := testCache(t)
			log, converted := countingLog(t)
			opts.Tar, opts.Pull.Log = url, log
			got, err := c.Import(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			if n, r := ts.requests.Load(), ts.ranged.Load(); n != 4 || r != 3 {
				t.Errorf("%d requests, %d with Range; want 4, 3", n, r)
			}
			if got.Digest != want.Digest {
				t.Errorf("digest %s from the URL, %s from the file", got.Digest, want.Digest)
			}
			a, _ := os.ReadFile(want.EROFSPath)
			b, _ := os.ReadFile(got.EROFSPath)
			if !bytes.Equal(a, b) {
				t.Errorf("EROFS image from the URL (%d bytes) differs from the file's (%d bytes)", len(b), len(a))
			}
			if files := readImageFiles(t, got.EROFSPath); files["opt/tool/bin/hello"] != "hello\n" {
				t.Errorf("imported files lack opt/tool/bin/hello")
			}
			if cfg, _ := json.Marshal(got.Config); bytes.Contains(cfg, []byte("secret")) || bytes.Contains(cfg, []byte(srv.URL)) {
				t.Errorf("config names the URL: %s", cfg)
			}

			// Again: the same digest from the cache, found by the URL and
			// its ETag without downloading or converting again.
			ts.requests.Store(0)
			again, err := c.Import(t.Context(), opts)
			if err != nil || again.Digest != want.Digest || converted() != 1 || ts.requests.Load() != 1 {
				t.Errorf("second import: %v, %v; %d conversions, %d requests", again, err, converted(), ts.requests.Load())
			}
			assertNoLeftovers(t, c, 1)
			// Under another name too, with the record gone: downloaded and
			// converted again, and found to be the same image.
			os.RemoveAll(c.path(importsDir))
			opts.Tag = "tool:2"
			ts.requests.Store(0)
			again, err = c.Import(t.Context(), opts)
			if err != nil || again.Digest != want.Digest || converted() != 1 || ts.requests.Load() < 2 {
				t.Errorf("import without the record: %v, %v; %d conversions, %d requests", again, err, converted(), ts.requests.Load())
			}
			assertNoLeftovers(t, c, 1)
			if _, err := c.Get(t.Context(), mustRef(t, "tool:2"), PullOptions{Policy: PullNever}); err != nil {
				t.Errorf("Get tool:2: %v", err)
			}

			// build-erofs --tar URL writes the same image as from the file.
			outFile, outURL := filepath.Join(t.TempDir(), "a.erofs"), filepath.Join(t.TempDir(), "b.erofs")
			opts.Tag, opts.Tar = "", local
			if err := c.BuildImportEROFS(t.Context(), outFile, opts, BuildOptions{}); err != nil {
				t.Fatal(err)
			}
			ts.requests.Store(0)
			opts.Tar = url
			if err := c.BuildImportEROFS(t.Context(), outURL, opts, BuildOptions{}); err != nil {
				t.Fatal(err)
			}
			a, _ = os.ReadFile(outFile)
			b, _ = os.ReadFile(outURL)
			if !bytes.Equal(a, b) || len(a) == 0 {
				t.Errorf("build-erofs from the URL (%d bytes) differs from the file's (%d bytes)", len(b), len(a))
			}
		})
	}
}

// TestImportURLFails: failed imports from a URL say why, name the URL
// without its credentials and leave nothing in the cache or beside the
// output file.
func TestImportURLFails(t *testing.T) {
	file := xzTarBytes(t, randomTar(t))
	for _, tc := range []struct {
		desc    string
		srv     *tarServer
		max     int64
		lim     Limits
		wantErr string
	}{
		{"changed", &tarServer{cuts: 1, cutAfter: 100 << 10, body: func(n int32) ([]byte, string) {
			if n == 1 {
				return file, `"v1"`
			}
			return xzTarBytes(t, fakeTar(t, fakeEntry{name: "x"})), `"v2"`
		}}, 0, Limits{}, "changed on the server while importing; start again"},
		{"no ranges", &tarServer{body: func(int32) ([]byte, string) { return file, `"v1"` }, cuts: 1, cutAfter: 100 << 10, noRanges: true},
			0, Limits{}, "the server cannot resume a transfer"},
		{"404", &tarServer{body: func(int32) ([]byte, string) { return file, "" }, status: func(int32) int { return 404 }},
			0, Limits{}, "404 Not Found"},
		{"too large", &tarServer{body: func(int32) ([]byte, string) { return file, "" }},
			1000, Limits{}, "over the limit of 1000 bytes (--max-image-size)"},
		{"truncated for good", &tarServer{body: func(int32) ([]byte, string) { return file[:len(file)/2], "" }},
			0, Limits{}, "unexpected EOF"},
		{"unpacks to too much", &tarServer{body: func(int32) ([]byte, string) { return file, `"v1"` }},
			0, Limits{MaxUnpacked: 200 << 10}, "--max-image-unpacked"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			srv := httptest.NewServer(tc.srv)
			defer srv.Close()
			c := testCache(t)
			url := srv.URL + "/tool.tar.xz?sig=secret"
			opts := ImportOptions{Tar: url, Tag: "tool:1", URL: fastURL, Pull: PullOptions{MaxSize: tc.max, Limits: tc.lim}}
			_, err := c.Import(t.Context(), opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "tool.tar.xz") ||
				strings.Contains(err.Error(), "secret") {
				t.Errorf("import: %v, want an error containing %q and the URL, without its query", err, tc.wantErr)
			}
			t.Log(err)
			assertNoLeftovers(t, c, 0)
			dir := t.TempDir()
			opts.Tag = ""
			tc.srv.requests.Store(0)
			err = c.BuildImportEROFS(t.Context(), filepath.Join(dir, "out.erofs"), opts, BuildOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("build-erofs: %v, want an error containing %q", err, tc.wantErr)
			}
			if des, _ := os.ReadDir(dir); len(des) != 0 {
				t.Errorf("build-erofs left %v", des)
			}
		})
	}
}

// assertNoLeftovers checks that the cache holds n images and no temporary
// files.
func assertNoLeftovers(t *testing.T, c *Cache, n int) {
	t.Helper()
	des, err := os.ReadDir(c.path(imagesDir))
	if err != nil {
		t.Fatal(err)
	}
	var images []string
	for _, de := range des {
		switch {
		case strings.HasPrefix(de.Name(), tmpPrefix):
			t.Errorf("temporary file left in the cache: %s", de.Name())
		case de.IsDir():
			images = append(images, de.Name())
		}
	}
	if len(images) != n {
		t.Errorf("cache holds images %v, want %d", images, n)
	}
}

func xzTarBytes(t *testing.T, tarball []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(tarball)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestOpenURLNoRetry: a certificate that does not verify fails at once,
// not after the retries.
func TestOpenURLNoRetry(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	start := time.Now()
	_, err := OpenURL(t.Context(), srv.URL+"/x.tar", URLOptions{Backoff: 10 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "certificate") || time.Since(start) > 5*time.Second {
		t.Errorf("OpenURL of a server with an unknown certificate: %v after %s", err, time.Since(start))
	}
	// With the server's certificate trusted, the same URL reads.
	r, err := OpenURL(t.Context(), srv.URL+"/x.tar", URLOptions{Transport: srv.Client().Transport})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// randomBytes returns n random bytes, so that a misplaced range cannot
// match by accident.
func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestPutHeadGetRange(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	c := g.client(t, testSecret)
	ctx := t.Context()

	data := randomBytes(t, 3<<20+123)
	// A key with characters that need escaping checks that the signature
	// covers the path exactly as sent.
	key := "images/sha256:abc/chunk 1+2=3 é"
	if _, err := c.PutObject(ctx, bucket, key, data, PutOptions{ContentType: "application/octet-stream"}); err != nil {
		t.Fatalf("PutObject: %v", err)
	}
	// The posix backend stores the object as a plain file.
	onDisk, err := os.ReadFile(filepath.Join(g.dir, bucket, key))
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("object on disk: %d bytes, err %v; want the %d put", len(onDisk), err, len(data))
	}

	info, err := c.HeadObject(ctx, bucket, key)
	if err != nil {
		t.Fatalf("HeadObject: %v", err)
	}
	if info.Size != int64(len(data)) || info.ETag == "" || info.LastModified.IsZero() {
		t.Errorf("HeadObject = %+v; want size %d, an ETag and a time", info, len(data))
	}

	got, err := c.ReadAll(ctx, bucket, key, 4<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("ReadAll: %d bytes, err %v; want the %d put", len(got), err, len(data))
	}
	if _, err := c.ReadAll(ctx, bucket, key, 1<<20); err == nil || !strings.Contains(err.Error(), "more than the 1048576 expected") {
		t.Errorf("ReadAll with a 1 MiB limit: err %v; want it refused as too big", err)
	}

	for _, tc := range []struct {
		name        string
		off, length int64
		want        []byte
	}{
		{"start", 0, 4096, data[:4096]},
		{"middle", 1<<20 + 7, 1 << 20, data[1<<20+7 : 2<<20+7]},
		{"last byte", int64(len(data)) - 1, 1, data[len(data)-1:]},
		{"past the end is cut", int64(len(data)) - 10, 1 << 20, data[len(data)-10:]},
		{"whole", 0, int64(len(data)), data},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := c.ReadRange(ctx, bucket, key, tc.off, tc.length)
			if err != nil {
				t.Fatalf("ReadRange(%d, %d): %v", tc.off, tc.length, err)
			}
			defer r.Close()
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Errorf("ReadRange(%d, %d) = %d bytes, not the %d expected (or different)", tc.off, tc.length, len(got), len(tc.want))
			}
		})
	}
	if _, err := c.ReadRange(ctx, bucket, key, int64(len(data)), 10); !errors.Is(err, ErrInvalidRange) {
		t.Errorf("ReadRange at the end: err %v; want ErrInvalidRange", err)
	}

	var keys []string
	if _, err := c.PutObject(ctx, bucket, "images/tags/latest", []byte("sha256:abc"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	for o, err := range c.ListObjects(ctx, bucket, "images/") {
		if err != nil {
			t.Fatalf("ListObjects: %v", err)
		}
		keys = append(keys, o.Key)
	}
	if diff := cmp.Diff([]string{key, "images/tags/latest"}, keys); diff != "" {
		t.Errorf("ListObjects images/ (-want +got):\n%s", diff)
	}

	// An empty object: HEAD says 0 bytes, a whole read gives nothing, a
	// ranged read has nothing to give.
	if _, err := c.PutObject(ctx, bucket, "empty", nil, PutOptions{}); err != nil {
		t.Fatalf("PutObject of nothing: %v", err)
	}
	if info, err := c.HeadObject(ctx, bucket, "empty"); err != nil || info.Size != 0 {
		t.Errorf("HeadObject of an empty object: %+v, %v", info, err)
	}
	if got, err := c.ReadAll(ctx, bucket, "empty", 10); err != nil || len(got) != 0 {
		t.Errorf("ReadAll of an empty object: %q, %v", got, err)
	}
	if _, err := c.ReadRange(ctx, bucket, "empty", 0, 10); !errors.Is(err, ErrInvalidRange) {
		t.Errorf("ReadRange of an empty object: err %v; want ErrInvalidRange", err)
	}

	if err := c.DeleteObject(ctx, bucket, key); err != nil {
		t.Fatalf("DeleteObject: %v", err)
	}
	if _, err := c.HeadObject(ctx, bucket, key); !errors.Is(err, ErrNotFound) {
		t.Errorf("HeadObject after delete: err %v; want ErrNotFound", err)
	}
}

func TestNotFound(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	c := g.client(t, testSecret)
	ctx := t.Context()

	_, err := c.HeadObject(ctx, bucket, "no/such/key")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("HeadObject of a missing key: err %v; want ErrNotFound", err)
	}
	_, err = c.ReadRange(ctx, bucket, "no/such/key", 0, 10)
	var e *Error
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &e) || e.Code != "NoSuchKey" {
		t.Errorf("ReadRange of a missing key: err %v; want ErrNotFound with code NoSuchKey", err)
	}
	_, _, err = c.GetObject(ctx, "no-such-bucket", "k")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("GetObject in a missing bucket: err %v; want ErrNotFound", err)
	}
	if errors.Is(err, ErrAccessDenied) || IsRetriable(err) {
		t.Errorf("not found error %v also matches access denied or retriable", err)
	}
}

func TestWrongSecret(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	if _, err := g.client(t, testSecret).PutObject(t.Context(), bucket, "k", []byte("x"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	bad := g.client(t, "not-the-secret")
	for name, call := range map[string]func() error{
		"HeadObject": func() error { _, err := bad.HeadObject(t.Context(), bucket, "k"); return err },
		"ReadRange":  func() error { _, err := bad.ReadRange(t.Context(), bucket, "k", 0, 1); return err },
		"PutObject": func() error {
			_, err := bad.PutObject(t.Context(), bucket, "k2", []byte("x"), PutOptions{})
			return err
		},
	} {
		err := call()
		if !errors.Is(err, ErrAccessDenied) {
			t.Errorf("%s with a wrong secret: err %v; want ErrAccessDenied", name, err)
			continue
		}
		msg := err.Error()
		for _, want := range []string{`bucket "pe-test"`, g.endpoint, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%s: message %q does not name %q", name, msg, want)
			}
		}
	}
	// Unsigned requests are refused too, with advice to set the keys.
	anon, err := New(Config{Endpoint: g.endpoint, PathStyle: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = anon.ReadRange(t.Context(), bucket, "k", 0, 1)
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "no credentials are configured") {
		t.Errorf("anonymous ReadRange: err %v; want access denied saying no credentials are configured", err)
	}
}

func TestMultipartUpload(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	c := g.client(t, testSecret)
	ctx := t.Context()

	// Three full parts and a short last one, sent two at a time.
	data := randomBytes(t, 3*MinPartSize+12345)
	var sent atomic.Int64
	etag, err := c.Upload(ctx, bucket, "images/big", bytes.NewReader(data), UploadOptions{
		PartSize: MinPartSize, Concurrency: 2, Progress: func(n int64) { sent.Add(n) },
	})
	if err != nil {
		t.Fatalf("Upload: %v", err)
	}
	// A multipart ETag ends in -<number of parts>.
	if !strings.HasSuffix(strings.Trim(etag, `"`), "-4") {
		t.Errorf("ETag %q; want a multipart ETag of 4 parts", etag)
	}
	if sent.Load() != int64(len(data)) {
		t.Errorf("progress counted %d bytes; want %d", sent.Load(), len(data))
	}
	got, err := c.ReadAll(ctx, bucket, "images/big", int64(len(data)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, err %v; want the %d uploaded", len(got), err, len(data))
	}

	// Exactly three parts: the reader ends on a part boundary.
	data = data[:3*MinPartSize]
	if _, err := c.Upload(ctx, bucket, "images/three", bytes.NewReader(data), UploadOptions{PartSize: MinPartSize}); err != nil {
		t.Fatalf("Upload of 3 whole parts: %v", err)
	}
	r, err := c.ReadRange(ctx, bucket, "images/three", 2*MinPartSize-5, 10)
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(r)
	r.Close()
	if !bytes.Equal(got, data[2*MinPartSize-5:2*MinPartSize+5]) {
		t.Errorf("range across the part boundary differs")
	}

	// A small object goes up in one PutObject.
	if _, err := c.Upload(ctx, bucket, "small", strings.NewReader("hello"), UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := c.ReadAll(ctx, bucket, "small", 100); err != nil || string(got) != "hello" {
		t.Errorf("small upload read back %q, %v", got, err)
	}
}

// failingReader yields n bytes, then fails.
type failingReader struct{ n int }

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("disk on fire")
	}
	m := min(len(p), f.n)
	f.n -= m
	return m, nil
}

func TestUploadAbortsOnReadError(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	c := g.client(t, testSecret)

	_, err := c.Upload(t.Context(), bucket, "broken", &failingReader{n: MinPartSize + 10}, UploadOptions{PartSize: MinPartSize})
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Upload from a failing reader: err %v; want the read error", err)
	}
	if _, err := c.HeadObject(t.Context(), bucket, "broken"); !errors.Is(err, ErrNotFound) {
		t.Errorf("object after a failed upload: err %v; want ErrNotFound", err)
	}
	// The upload was aborted: versitygw keeps no pending uploads.
	q := request{op: "ListMultipartUploads", method: http.MethodGet, bucket: bucket, query: map[string][]string{"uploads": {""}}}
	resp, err := c.do(t.Context(), q)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "<UploadId>") {
		t.Errorf("a multipart upload is still pending after the failure:\n%s", body)
	}
}

func TestContextDeadlineEndsHungRequest(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") == "bytes=0-9" && r.URL.Query().Has("body") {
			// Answer the headers, then stall the body.
			w.Header().Set("Content-Range", "bytes 0-9/100")
			w.Header().Set("Content-Length", "10")
			w.WriteHeader(http.StatusPartialContent)
			w.Write([]byte("abc"))
			w.(http.Flusher).Flush()
		}
		<-release
	}))
	defer srv.Close()
	defer close(release)

	c, err := New(Config{Endpoint: srv.URL, AccessKeyID: "AK", SecretAccessKey: "SK", PathStyle: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.HeadObject(ctx, "bucket", "key")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("HeadObject on a hung server: err %v; want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("HeadObject returned after %v; the 300ms deadline should have ended it", d)
	}
}

func TestContextDeadlineEndsStalledBody(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Range", "bytes 0-9/100")
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(http.StatusPartialContent)
		w.Write([]byte("abc"))
		w.(http.Flusher).Flush()
		<-release
	}))
	defer srv.Close()
	defer close(release)

	c, err := New(Config{Endpoint: srv.URL, AccessKeyID: "AK", SecretAccessKey: "SK", PathStyle: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	r, err := c.ReadRange(ctx, "bucket", "key", 0, 10)
	if err != nil {
		t.Fatalf("ReadRange: %v", err)
	}
	defer r.Close()
	start := time.Now()
	got, err := io.ReadAll(r)
	if !errors.Is(err, context.DeadlineExceeded) || string(got) != "abc" {
		t.Errorf("reading a stalled body: %q, err %v; want \"abc\" then context.DeadlineExceeded", got, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("read returned after %v", d)
	}
}

func TestRetryThrottled(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Content-Sha256") == "" || !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
			http.Error(w, "unsigned", http.StatusBadRequest)
			return
		}
		if calls.Add(1) < 3 {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>R1</RequestId></Error>`)
			return
		}
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hello"))
	}))
	defer srv.Close()
	cfg := Config{Endpoint: srv.URL, AccessKeyID: "AK", SecretAccessKey: "SK", PathStyle: true}

	one, _ := New(cfg, Options{MaxAttempts: 1})
	_, _, err := one.GetObject(t.Context(), "bucket", "key")
	var e *Error
	if !errors.Is(err, ErrThrottled) || !IsRetriable(err) || !errors.As(err, &e) {
		t.Fatalf("GetObject with no retries: err %v; want a retriable ErrThrottled", err)
	}
	if diff := cmp.Diff(&Error{Op: "GetObject", Bucket: "bucket", Key: "key", Endpoint: srv.URL, StatusCode: 503,
		Code: "SlowDown", Message: "Please reduce your request rate.", RequestID: "R1"}, e); diff != "" {
		t.Errorf("error (-want +got):\n%s", diff)
	}

	calls.Store(0)
	three, _ := New(cfg, Options{MaxAttempts: 3})
	body, _, err := three.GetObject(t.Context(), "bucket", "key")
	if err != nil {
		t.Fatalf("GetObject with 3 attempts: %v", err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	if string(got) != "hello" || calls.Load() != 3 {
		t.Errorf("got %q after %d calls; want hello after 3", got, calls.Load())
	}
}

func TestReadRangeAnswers(t *testing.T) {
	// How ReadRange treats answers a real server gives only sometimes.
	for _, tc := range []struct {
		name         string
		off, length  int64
		status       int
		contentRange string
		body         string
		want         string
		wantErr      string
	}{
		{name: "200 from offset 0 is cut to the length", off: 0, length: 4, status: 200, body: "0123456789", want: "0123"},
		{name: "200 from elsewhere is refused", off: 4, length: 4, status: 200, body: "0123456789", wantErr: "ignored the Range header"},
		{name: "206 for another range", off: 4, length: 4, status: 206, contentRange: "bytes 0-3/10", body: "0123", wantErr: `got Content-Range "bytes 0-3/10"`},
		{name: "206 without Content-Range", off: 4, length: 4, status: 206, body: "4567", wantErr: "got Content-Range"},
		{name: "206 longer than asked", off: 4, length: 2, status: 206, contentRange: "bytes 4-7/10", body: "4567", wantErr: "asked for bytes 4-5"},
		{name: "206 shorter at the end", off: 8, length: 4, status: 206, contentRange: "bytes 8-9/10", body: "89", want: "89"},
		{name: "206 body longer than its range", off: 4, length: 2, status: 206, contentRange: "bytes 4-5/10", body: "456789", want: "45"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.contentRange != "" {
					w.Header().Set("Content-Range", tc.contentRange)
				}
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			c, _ := New(Config{Endpoint: srv.URL, PathStyle: true}, Options{})
			r, err := c.ReadRange(t.Context(), "bucket", "key", tc.off, tc.length)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v; want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(r)
			r.Close()
			if string(got) != tc.want {
				t.Errorf("read %q; want %q", got, tc.want)
			}
		})
	}
}

func TestObjectURL(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		bucket string
		key    string
		want   string
	}{
		{"path style", Config{Endpoint: "http://127.0.0.1:7070", PathStyle: true}, "b1b", "a/b c+d", "http://127.0.0.1:7070/b1b/a/b%20c%2Bd"},
		{"endpoint with a path", Config{Endpoint: "https://example.com/s3/", PathStyle: true}, "bkt", "k", "https://example.com/s3/bkt/k"},
		{"aws virtual host", Config{Region: "eu-west-3"}, "bkt", "k~1", "https://bkt.s3.eu-west-3.amazonaws.com/k~1"},
		{"aws bucket with dots is path style", Config{Region: "eu-west-3"}, "my.bkt", "k", "https://s3.eu-west-3.amazonaws.com/my.bkt/k"},
		{"aws default region", Config{}, "bkt", "k", "https://bkt.s3.us-east-1.amazonaws.com/k"},
		{"bucket only", Config{Endpoint: "http://h:1", PathStyle: true}, "bkt", "", "http://h:1/bkt/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.cfg, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := c.objectURL(tc.bucket, tc.key, nil).String(); got != tc.want {
				t.Errorf("URL = %s; want %s", got, tc.want)
			}
		})
	}
}

func TestCheckNames(t *testing.T) {
	for _, tc := range []struct {
		bucket, key string
		ok          bool
	}{
		{"pe-images", "a/b", true},
		{"ab", "k", false},
		{"Upper", "k", false},
		{"a/b/c", "k", false},
		{"bkt", "", false},
		{"bkt", strings.Repeat("k", 1025), false},
	} {
		err := checkNames("Op", tc.bucket, tc.key, true)
		if (err == nil) != tc.ok {
			t.Errorf("checkNames(%q, %.20q) = %v; want ok %v", tc.bucket, tc.key, err, tc.ok)
		}
	}
}

func TestClockSkew(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	c := g.client(t, testSecret)
	c.now = func() time.Time { return time.Now().Add(-time.Hour) }
	_, err := c.HeadObject(t.Context(), bucket, "k")
	if err == nil {
		t.Fatal("HeadObject signed an hour ago succeeded")
	}
	t.Logf("versitygw's answer to a skewed clock: %v", err)
	// HEAD answers carry no body, so only a GET shows the code.
	_, err = c.ReadRange(t.Context(), bucket, "k", 0, 1)
	if !errors.Is(err, ErrAccessDenied) || !strings.Contains(err.Error(), "fix the clock") {
		t.Errorf("ReadRange signed an hour ago: err %v; want access denied saying to fix the clock", err)
	}
}

func TestListPagesAndConditionalPut(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	var requests atomic.Int32
	c, err := New(Config{Endpoint: g.endpoint, AccessKeyID: testAccess, SecretAccessKey: testSecret, PathStyle: true},
		Options{HTTPClient: &http.Client{Transport: countingTransport{&requests, NewTransport()}}})
	if err != nil {
		t.Fatal(err)
	}
	c.listPageSize = 2
	ctx := t.Context()

	var want []string
	for _, k := range []string{"p/a", "p/b", "p/c", "p/d/e", "p/f", "q/x"} {
		if _, err := c.PutObject(ctx, bucket, k, []byte(k), PutOptions{}); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(k, "p/") {
			want = append(want, k)
		}
	}
	var got []string
	requests.Store(0)
	for o, err := range c.ListObjects(ctx, bucket, "p/") {
		if err != nil {
			t.Fatalf("ListObjects: %v", err)
		}
		if o.Size != int64(len(o.Key)) {
			t.Errorf("%s: size %d; want %d", o.Key, o.Size, len(o.Key))
		}
		got = append(got, o.Key)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ListObjects p/ over pages of 2 (-want +got):\n%s", diff)
	}
	if n := requests.Load(); n != 3 {
		t.Errorf("listing 5 keys in pages of 2 took %d requests; want 3", n)
	}
	// Stopping early stops the listing.
	n := 0
	for range c.ListObjects(ctx, bucket, "p/") {
		n++
		break
	}
	if n != 1 {
		t.Errorf("broke out after %d objects", n)
	}

	// A conditional write of a new key succeeds, of an existing key fails.
	if _, err := c.PutObject(ctx, bucket, "tags/latest", []byte("1"), PutOptions{IfNoneMatch: true}); err != nil {
		t.Fatalf("conditional PutObject of a new key: %v", err)
	}
	_, err = c.PutObject(ctx, bucket, "tags/latest", []byte("2"), PutOptions{IfNoneMatch: true})
	if !errors.Is(err, ErrExists) {
		t.Errorf("conditional PutObject of an existing key: err %v; want ErrExists", err)
	}
	if got, _ := c.ReadAll(ctx, bucket, "tags/latest", 10); string(got) != "1" {
		t.Errorf("tags/latest = %q after the refused write; want 1", got)
	}
}

// countingTransport counts the requests it sends.
type countingTransport struct {
	n    *atomic.Int32
	next http.RoundTripper
}

func (c countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return c.next.RoundTrip(r)
}

func TestObjectFetch(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	c := g.client(t, testSecret)
	data := randomBytes(t, 2<<20)
	if _, err := c.PutObject(t.Context(), bucket, "img", data, PutOptions{}); err != nil {
		t.Fatal(err)
	}
	obj := c.Object(bucket, "img")
	got, err := obj.Fetch(t.Context(), 512<<10, 512<<10)
	if err != nil || !bytes.Equal(got, data[512<<10:1<<20]) {
		t.Fatalf("Fetch of the second 512 KiB chunk: %d bytes, %v", len(got), err)
	}
	// The last chunk asked for longer than the object is: a short read.
	_, err = obj.Fetch(t.Context(), 2<<20-10, 512<<10)
	if !errors.Is(err, io.ErrUnexpectedEOF) || IsPermanent(err) {
		t.Errorf("Fetch past the end: err %v; want io.ErrUnexpectedEOF", err)
	}
	for name, err := range map[string]error{
		"missing key":  func() error { _, err := c.Object(bucket, "nope").Fetch(t.Context(), 0, 1); return err }(),
		"wrong secret": func() error { _, err := g.client(t, "bad").Object(bucket, "img").Fetch(t.Context(), 0, 1); return err }(),
		"past the end": func() error { _, err := obj.Fetch(t.Context(), 2<<20, 1); return err }(),
	} {
		if !IsPermanent(err) {
			t.Errorf("%s: err %v is not permanent", name, err)
		}
	}
	if IsPermanent(&Error{StatusCode: 503, Code: "SlowDown"}) || IsPermanent(context.DeadlineExceeded) {
		t.Error("throttling or a timeout counted as permanent")
	}

	// FetchStream: the same bytes as a stream; one that ends short
	// fails its reader, naming the object.
	r, err := obj.FetchStream(t.Context(), 512<<10, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, data[512<<10:3<<19]) {
		t.Errorf("FetchStream of 1 MiB: %d bytes, %v", len(got), err)
	}
	r, err = obj.FetchStream(t.Context(), 2<<20-10, 512<<10)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	r.Close()
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 10 || !strings.Contains(err.Error(), "s3://"+bucket+"/img") {
		t.Errorf("FetchStream past the end: %d bytes, %v; want the 10 there and io.ErrUnexpectedEOF naming the object", len(got), err)
	}
	if _, err := c.Object(bucket, "nope").FetchStream(t.Context(), 0, 1); !IsPermanent(err) {
		t.Errorf("FetchStream of a missing key: %v, want a permanent error", err)
	}
}

func TestRetryDroppedConnection(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			// Drop the connection without an answer, as a restarting server does.
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		w.Header().Set("Content-Length", "3")
		w.Header().Set("Last-Modified", "Sun, 06 Dec 2026 08:00:00 GMT")
	}))
	defer srv.Close()
	cfg := Config{Endpoint: srv.URL, AccessKeyID: "AK", SecretAccessKey: "SK", PathStyle: true}

	once, _ := New(cfg, Options{MaxAttempts: 1})
	if _, err := once.HeadObject(t.Context(), "bucket", "key"); err == nil || !strings.Contains(err.Error(), srv.URL) {
		t.Fatalf("HeadObject over a dropped connection with no retry: err %v; want an error naming the endpoint", err)
	}
	calls.Store(0)
	twice, _ := New(cfg, Options{MaxAttempts: 2})
	info, err := twice.HeadObject(t.Context(), "bucket", "key")
	if err != nil {
		t.Fatalf("HeadObject with a retry: %v", err)
	}
	want := ObjectInfo{Key: "key", Size: 3, LastModified: time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)}
	if diff := cmp.Diff(want, info); diff != "" {
		t.Errorf("HeadObject (-want +got):\n%s", diff)
	}
}

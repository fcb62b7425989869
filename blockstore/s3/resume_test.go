package s3

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// opCounter counts the requests of each S3 operation it sends, and can
// cancel a context after a number of successful UploadParts.
type opCounter struct {
	next http.RoundTripper

	mu  sync.Mutex
	ops map[string]int
	// cancelAfter, when > 0, calls cancel once that many UploadParts
	// have succeeded.
	cancelAfter int
	cancel      context.CancelFunc
}

// opName names the S3 operation r is, from its method and query.
func opName(r *http.Request) string {
	q := r.URL.Query()
	switch {
	case r.Method == http.MethodPut && q.Has("partNumber"):
		return "UploadPart"
	case r.Method == http.MethodPost && q.Has("uploads"):
		return "CreateMultipartUpload"
	case r.Method == http.MethodPost && q.Has("uploadId"):
		return "CompleteMultipartUpload"
	case r.Method == http.MethodDelete && q.Has("uploadId"):
		return "AbortMultipartUpload"
	case r.Method == http.MethodGet && q.Has("uploads"):
		return "ListMultipartUploads"
	case r.Method == http.MethodGet && q.Has("uploadId"):
		return "ListParts"
	}
	return r.Method
}

func (c *opCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	op := opName(r)
	resp, err := c.next.RoundTrip(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ops == nil {
		c.ops = map[string]int{}
	}
	if err == nil && resp.StatusCode/100 == 2 {
		c.ops[op]++
		if op == "UploadPart" && c.cancelAfter > 0 && c.ops[op] == c.cancelAfter {
			c.cancel()
		}
	}
	return resp, err
}

func (c *opCounter) count(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ops[op]
}

func (c *opCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = nil
}

func countingClient(t *testing.T, endpoint string, oc *opCounter) *Client {
	t.Helper()
	oc.next = http.DefaultTransport
	c, err := New(Config{Endpoint: endpoint, Region: DefaultRegion, AccessKeyID: testAccess,
		SecretAccessKey: testSecret, PathStyle: true}, Options{MaxAttempts: 1, HTTPClient: &http.Client{Transport: oc}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func unfinished(t *testing.T, c *Client, bucket, key string) []string {
	t.Helper()
	var ids []string
	for u, err := range c.ListMultipartUploads(t.Context(), bucket, key) {
		if err != nil {
			t.Fatalf("ListMultipartUploads: %v", err)
		}
		ids = append(ids, u.UploadID)
	}
	return ids
}

func TestUploadResumable(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	oc := &opCounter{}
	c := countingClient(t, g.endpoint, oc)
	ctx := t.Context()
	const key = "blobs/sha256/x"
	data := randomBytes(t, 5*MinPartSize+12345) // 6 parts
	part := func(n int) []byte { return data[(n-1)*MinPartSize : min(n*MinPartSize, len(data))] }

	// An earlier upload holding parts 1, 2 and 4, and part 3 with other
	// bytes; and a second, empty one.
	id, err := c.CreateMultipartUpload(ctx, bucket, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{1, 2, 4} {
		if _, err := c.UploadPart(ctx, bucket, key, id, n, part(n)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.UploadPart(ctx, bucket, key, id, 3, randomBytes(t, MinPartSize)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateMultipartUpload(ctx, bucket, key); err != nil {
		t.Fatal(err)
	}
	// A page per part. (Not for ListMultipartUploads: versitygw 1.8.0
	// refuses the upload-id-marker of a second page of one key's uploads,
	// "Invalid uploadId marker", as it looks for it after that key.)
	c.listPageSize = 1
	var listed []Part
	for p, err := range c.ListParts(ctx, bucket, key, id) {
		if err != nil {
			t.Fatal(err)
		}
		listed = append(listed, p)
	}
	if len(listed) != 4 || listed[0].PartNumber != 1 || listed[3].PartNumber != 4 || listed[0].Size != MinPartSize {
		t.Fatalf("ListParts: %+v; want parts 1 to 4 of %d bytes", listed, MinPartSize)
	}
	if got := oc.count("ListParts"); got < 4 {
		t.Errorf("%d ListParts requests; want a page per part", got)
	}
	c.listPageSize = 0

	oc.reset()
	var progress atomic.Int64
	res, err := c.UploadResumable(ctx, bucket, key, bytes.NewReader(data), UploadOptions{
		PartSize: 8 << 20, // the earlier upload's part size wins
		Progress: func(n int64) { progress.Add(n) },
	})
	if err != nil {
		t.Fatalf("UploadResumable: %v", err)
	}
	want := UploadResult{ETag: res.ETag, UploadID: id, Resumed: true, PartsReused: 3, BytesReused: 3 * MinPartSize,
		PartsSent: 3, BytesSent: int64(len(data)) - 3*MinPartSize, Aborted: 1}
	if diff := cmp.Diff(want, *res); diff != "" {
		t.Errorf("UploadResumable result (-want +got):\n%s", diff)
	}
	if got := oc.count("UploadPart"); got != 3 {
		t.Errorf("%d UploadParts; want 3 (parts 3, 5, 6)", got)
	}

	if progress.Load() != int64(len(data)) {
		t.Errorf("progress counted %d bytes; want all %d, the reused parts included", progress.Load(), len(data))
	}
	if got, err := c.ReadAll(ctx, bucket, key, int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, %v; want the %d uploaded", len(got), err, len(data))
	}
	if ids := unfinished(t, c, bucket, key); len(ids) != 0 {
		t.Errorf("unfinished uploads left: %v", ids)
	}
}

func TestUploadResumableAfterCancel(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	oc := &opCounter{}
	c := countingClient(t, g.endpoint, oc)
	const key = "blobs/sha256/y"
	data := randomBytes(t, 8*MinPartSize)

	ctx, cancel := context.WithCancel(t.Context())
	oc.cancelAfter, oc.cancel = 3, cancel
	// One part at a time: no part is still arriving after the
	// cancellation, so what the server holds is what was counted.
	_, err := c.UploadResumable(ctx, bucket, key, bytes.NewReader(data), UploadOptions{PartSize: MinPartSize, Concurrency: 1})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted UploadResumable: %v; want context.Canceled", err)
	}
	if ids := unfinished(t, c, bucket, key); len(ids) != 1 {
		t.Fatalf("after the interruption, unfinished uploads %v; want the one left to resume", ids)
	}
	done := oc.count("UploadPart")

	oc.reset()
	oc.cancelAfter = 0
	res, err := c.UploadResumable(t.Context(), bucket, key, bytes.NewReader(data), UploadOptions{PartSize: MinPartSize, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.PartsReused != done || res.PartsSent != 8-done || oc.count("UploadPart") != 8-done {
		t.Errorf("resumed after %d parts: %+v, %d UploadParts; want %d reused and %d sent", done, res, oc.count("UploadPart"), done, 8-done)
	}
	if got, err := c.ReadAll(t.Context(), bucket, key, int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, %v; want the %d uploaded", len(got), err, len(data))
	}
}

// TestUploadResumableWithoutListing: a server that lacks the listing of
// uploads (many S3-compatible gateways) gets a fresh upload.
func TestUploadResumableWithoutListing(t *testing.T) {
	g := startVersitygw(t)
	bucket := g.bucket(t, "pe-test")
	u, _ := url.Parse(g.endpoint)
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Query().Has("uploads") {
			w.WriteHeader(http.StatusNotImplemented)
			w.Write([]byte(`<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message></Error>`))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	c := g.client(t, testSecret)
	c.base, _ = url.Parse(srv.URL)
	data := randomBytes(t, 2*MinPartSize+1)
	res, err := c.UploadResumable(t.Context(), bucket, "k", bytes.NewReader(data), UploadOptions{PartSize: MinPartSize})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed || res.PartsSent != 3 || res.ResumeError == nil || !strings.Contains(res.ResumeError.Error(), "NotImplemented") {
		t.Errorf("UploadResumable without ListMultipartUploads: %+v; want a fresh upload of 3 parts and the reason", res)
	}
	if got, err := c.ReadAll(t.Context(), bucket, "k", int64(len(data))); err != nil || !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, %v", len(got), err)
	}
}

func TestParseListings(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		marker     int
		wantErr    string
	}{
		{name: "uploads", body: `<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><NextKeyMarker>k</NextKeyMarker><Upload><Key>k</Key><UploadId>u</UploadId></Upload></ListMultipartUploadsResult>`},
		{name: "uploads truncated without marker", body: `<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>`, wantErr: "next key marker"},
		{name: "upload without id", body: `<ListMultipartUploadsResult><Upload><Key>k</Key></Upload></ListMultipartUploadsResult>`, wantErr: "upload id"},
		{name: "uploads not xml", body: `{}`, wantErr: "uploads listing"},
		{name: "parts", body: `<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker><Part><PartNumber>2</PartNumber><ETag>"e"</ETag><Size>5</Size></Part></ListPartsResult>`, marker: 1},
		{name: "parts marker not moving", body: `<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>3</NextPartNumberMarker></ListPartsResult>`, marker: 3, wantErr: "next marker 3"},
		{name: "part number 0", body: `<ListPartsResult><Part><PartNumber>0</PartNumber><Size>5</Size></Part></ListPartsResult>`, wantErr: "part 0"},
		{name: "part too big", body: `<ListPartsResult><Part><PartNumber>1</PartNumber><Size>9999999999999</Size></Part></ListPartsResult>`, wantErr: "bytes"},
		{name: "huge", body: strings.Repeat(" ", maxListPartsBody+1), wantErr: "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if strings.HasPrefix(tc.body, "<ListParts") {
				_, err = parsePartsPage(strings.NewReader(tc.body), tc.marker)
			} else {
				_, err = parseUploadsPage(strings.NewReader(tc.body))
			}
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("error %v; want one containing %q", err, tc.wantErr)
			}
		})
	}
}

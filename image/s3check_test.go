package image

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
)

// TestCheckS3 checks a server's readiness check of an s3:// image asks the
// bucket every time, whatever the cache holds: it passes while the tag
// and the index are there, and fails naming the object once either is
// gone, by tag and by digest.
func TestCheckS3(t *testing.T) {
	_, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	ref, _ := ParseReference("s3://images/ce/tool:v1")
	res := pushTestEROFS(t, client, file, ref)
	pinned, _ := ParseReference("s3://images/ce/tool@" + res.Digest.String())
	opts := &PullOptions{S3: client}
	for _, r := range []Reference{ref, pinned} {
		if err := CheckS3(ctx, r, opts); err != nil {
			t.Errorf("CheckS3(%s) with the image in the bucket: %v", r, err)
		}
	}
	indexKey := "ce/indexes/sha256/" + res.Digest.Hex + ".json"
	if err := client.DeleteObject(ctx, "images", indexKey); err != nil {
		t.Fatal(err)
	}
	for _, r := range []Reference{ref, pinned} {
		err := CheckS3(ctx, r, opts)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "reading s3://images/"+indexKey) {
			t.Errorf("CheckS3(%s) with the index gone: %v; want ErrNotFound naming s3://images/%s", r, err, indexKey)
		}
	}
	if err := client.DeleteObject(ctx, "images", "ce/tool/tags/v1"); err != nil {
		t.Fatal(err)
	}
	if err := CheckS3(ctx, ref, opts); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "tags/v1") {
		t.Errorf("CheckS3 with the tag gone: %v; want ErrNotFound naming the tag object", err)
	}
	if err := CheckS3(ctx, Reference{}, opts); err == nil {
		t.Error("CheckS3 of a reference that is not s3://: no error")
	}
}

// TestS3LoadTraces checks the traces stored beside a lazy image are
// listed for warming, up to the number asked, skipping objects that are
// not traces of the image.
func TestS3LoadTraces(t *testing.T) {
	_, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	ref, _ := ParseReference("s3://images/ce/tool:v1")
	res := pushTestEROFS(t, client, file, ref)
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store, err := c.ChunkStore(0)
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.OpenS3(ctx, ref, PullOptions{S3: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if tr, err := img.LoadTraces(ctx, 10); len(tr) != 0 || err != nil {
		t.Fatalf("LoadTraces before any run: %v, %v", tr, err)
	}
	ix := img.Lazy.Index()
	last := len(ix.Chunks) - 1
	for i, cmd := range []string{"/bin/a", "/bin/b", "/bin/c"} {
		tr := &blockstore.Trace{Version: blockstore.TraceVersion, Image: ix.Digest, ChunkSize: ix.ChunkSize, Chunks: []int{last - i}}
		if wrote, err := img.SaveTrace(ctx, TraceKey(cmd), tr); !wrote || err != nil {
			t.Fatalf("SaveTrace: %v, %v", wrote, err)
		}
	}
	// Not traces: a stray object, and one of the wrong shape.
	prefix := "ce/traces/sha256/" + res.Digest.Hex + "/"
	for _, k := range []string{prefix + "README", prefix + strings.Repeat("a", 64) + ".json"} {
		if _, err := client.PutObject(ctx, "images", k, []byte("not a trace"), s3.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := img.LoadTraces(ctx, 10)
	if err != nil || len(got) != 3 {
		t.Fatalf("LoadTraces: %d traces, %v; want 3", len(got), err)
	}
	if got, err := img.LoadTraces(ctx, 2); err != nil || len(got) != 2 {
		t.Errorf("LoadTraces of at most 2: %d, %v", len(got), err)
	}
}

// countingTransport counts the response body bytes it hands on.
type countingTransport struct {
	next http.RoundTripper
	n    atomic.Int64
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := c.next.RoundTrip(r)
	if err == nil {
		resp.Body = &countingBody{resp.Body, &c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// TestCheckS3TagFirstLine checks the readiness check reads only the tag
// object's first line (the index it carries can be hundreds of KB, and
// the check runs every few seconds), and still judges the line.
func TestCheckS3TagFirstLine(t *testing.T) {
	g, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFSSize(t, t.TempDir(), 16<<20) // an index of a few KB
	ref, _ := ParseReference("s3://images/ce/tool:v1")
	res := pushTestEROFS(t, client, file, ref)
	tag, err := client.ReadAll(ctx, "images", "ce/tool/tags/v1", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	ct := &countingTransport{next: s3.NewTransport()}
	counted, err := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, PathStyle: true}, s3.Options{MaxAttempts: 1, HTTPClient: &http.Client{Transport: ct}})
	if err != nil {
		t.Fatal(err)
	}
	opts := &PullOptions{S3: counted}
	if err := CheckS3(ctx, ref, opts); err != nil {
		t.Fatalf("CheckS3 of a pushed image: %v", err)
	}
	if n := ct.n.Load(); n > maxTagObject+1 || int64(len(tag)) <= maxTagObject+1 {
		t.Errorf("CheckS3 read %d body bytes of a %d-byte tag object; want at most %d", n, len(tag), maxTagObject+1)
	}
	for _, tt := range []struct {
		name, body, want string
	}{
		{"digest line only", res.Digest.String() + "\n", ""},
		{"empty", "", "does not start with a sha256 digest"},
		{"not a digest", "latest\n", "does not start with a sha256 digest"},
		{"long first line", strings.Repeat("a", 5000), "first line is over"},
	} {
		if _, err := client.PutObject(ctx, "images", "ce/tool/tags/v1", []byte(tt.body), s3.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		err := CheckS3(ctx, ref, opts)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: CheckS3 = %v; want an error containing %q", tt.name, err, tt.want)
		}
	}
}

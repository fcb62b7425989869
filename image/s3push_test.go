package image

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
)

// partCounter counts the UploadParts that succeed and cancels a context
// after cancelAfter of them (when > 0).
type partCounter struct {
	mu          sync.Mutex
	parts       int
	cancelAfter int
	cancel      context.CancelFunc
}

func (p *partCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusOK && r.Method == http.MethodPut && r.URL.Query().Has("partNumber") {
		p.mu.Lock()
		p.parts++
		if p.parts == p.cancelAfter {
			p.cancel()
		}
		p.mu.Unlock()
	}
	return resp, err
}

func (p *partCounter) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.parts
}

// s3ClientVia returns a client of g sending through rt.
func s3ClientVia(t *testing.T, g s3test.Gateway, rt http.RoundTripper, secret string) *s3.Client {
	t.Helper()
	c, err := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: secret, PathStyle: true}, s3.Options{MaxAttempts: 1, HTTPClient: &http.Client{Transport: rt}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// unfinishedUploads lists the multipart uploads left in bucket "images".
func unfinishedUploads(t *testing.T, c *s3.Client) []string {
	t.Helper()
	var keys []string
	for u, err := range c.ListMultipartUploads(t.Context(), "images", "") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, u.Key)
	}
	return keys
}

// TestS3PushResume: a push interrupted after some parts is continued by
// the next push, which sends only the missing parts: of the image's blob,
// and of its packed chunks.
func TestS3PushResume(t *testing.T) {
	file := writeTestEROFSSize(t, t.TempDir(), 7*s3.MinPartSize+999)
	data, _ := os.ReadFile(file)
	parts := (len(data) + s3.MinPartSize - 1) / s3.MinPartSize
	ix, err := blockstore.BuildIndexFile(t.Context(), file, 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := blockstore.BuildPacked(t.Context(), bytes.NewReader(data), ix)
	if err != nil {
		t.Fatal(err)
	}
	packedParts := int((p.Size() + s3.MinPartSize - 1) / s3.MinPartSize)
	for _, tt := range []struct {
		name  string
		codec string
		// the interrupted push's parts: 3 of the blob, or all of it
		// and 3 of the packed chunks
		cancelAfter, wantResent int
	}{
		{"image blob", ChunkCodecNone, 3, parts - 3},
		{"packed chunks", "", parts + 3, packedParts - 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g, client := s3Env(t)
			dest, _ := ParseReference("s3://images/ce/big:v1")
			ctx, cancel := context.WithCancel(t.Context())
			pc := &partCounter{cancelAfter: tt.cancelAfter, cancel: cancel}
			// One part at a time, so that none is still arriving at the
			// server after the cancellation, which would make the count
			// below racy.
			opts := PushOptions{PullOptions: PullOptions{S3: s3ClientVia(t, g, pc, s3test.SecretKey)}, PartSize: s3.MinPartSize, Concurrency: 1, ChunkCodec: tt.codec}
			_, err := PushEROFS(ctx, file, DefaultEROFSConfig(), dest, opts)
			t.Logf("the interrupted push: %v", err)
			if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "run the same push again") {
				t.Fatalf("interrupted push: %v; want context.Canceled saying to push again", err)
			}
			if _, err := client.HeadObject(t.Context(), "images", "ce/big/tags/v1"); !errors.Is(err, s3.ErrNotFound) {
				t.Errorf("the tag after an interrupted push: %v; want none", err)
			}
			sentBefore := 0
			for u, err := range client.ListMultipartUploads(t.Context(), "images", "") {
				if err != nil {
					t.Fatal(err)
				}
				for _, err := range client.ListParts(t.Context(), "images", u.Key, u.UploadID) {
					if err != nil {
						t.Fatal(err)
					}
					sentBefore++
				}
			}
			if sentBefore != 3 {
				t.Fatalf("the interrupted push left %d unfinished parts; want 3", sentBefore)
			}

			pc2 := &partCounter{}
			opts.S3, opts.Concurrency = s3ClientVia(t, g, pc2, s3test.SecretKey), 2
			res, err := PushEROFS(t.Context(), file, DefaultEROFSConfig(), dest, opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := pc2.count(); got != tt.wantResent {
				t.Errorf("the resumed push sent %d parts; want the %d missing", got, tt.wantResent)
			}
			if tt.codec == ChunkCodecNone {
				if !res.Resumed || res.BytesReused != int64(sentBefore)*s3.MinPartSize || res.BytesReused+res.BytesSent != int64(len(data)) {
					t.Errorf("resumed push: %+v; want %d bytes reused (%d parts) and the rest sent", res, sentBefore*s3.MinPartSize, sentBefore)
				}
			} else {
				if res.BlobSent || !res.PackedSent || res.PackedSize != p.Size() {
					t.Errorf("resumed push: %+v; want the packed chunks (%d bytes) sent, not the blob", res, p.Size())
				}
				packed, err := os.ReadFile(filepath.Join(g.Dir, "images", "ce/blobs/sha256", strings.TrimPrefix(p.Digest, "sha256:")))
				if err != nil || "sha256:"+sha256Hex(packed) != p.Digest {
					t.Errorf("the packed chunks in the bucket: %d bytes, %v; want %d bytes of %s", len(packed), err, p.Size(), p.Digest)
				}
			}
			blob, err := os.ReadFile(filepath.Join(g.Dir, "images", "ce/blobs/sha256", sha256Hex(data)))
			if err != nil || sha256Hex(blob) != sha256Hex(data) {
				t.Errorf("the blob in the bucket: %d bytes, %v; want the file's %d bytes and sha256", len(blob), err, len(data))
			}
			if left := unfinishedUploads(t, client); len(left) != 0 {
				t.Errorf("unfinished uploads left: %v", left)
			}
			c, _ := OpenCache(t.TempDir())
			if img, err := c.Pull(t.Context(), dest, PullOptions{S3: client}); err != nil || img.Digest != res.Digest {
				t.Errorf("pull of the resumed push: %v, %v", img, err)
			}
		})
	}
}

// TestS3PushConcurrent: two pushes of the same image at once both succeed
// and leave one consistent blob, index and tag.
func TestS3PushConcurrent(t *testing.T) {
	g, client := s3Env(t)
	file := writeTestEROFSSize(t, t.TempDir(), 4*s3.MinPartSize+5)
	data, _ := os.ReadFile(file)
	dest, _ := ParseReference("s3://images/big")
	var wg sync.WaitGroup
	results := make([]*PushResult, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			opts := PushOptions{PullOptions: PullOptions{S3: s3ClientVia(t, g, http.DefaultTransport, s3test.SecretKey)},
				PartSize: s3.MinPartSize, Concurrency: 2}
			results[i], errs[i] = PushEROFS(t.Context(), file, DefaultEROFSConfig(), dest, opts)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
	}
	if results[0].Digest != results[1].Digest {
		t.Errorf("the pushes gave digests %s and %s", results[0].Digest, results[1].Digest)
	}
	t.Logf("push results: %+v, %+v", *results[0], *results[1])
	blob, err := os.ReadFile(filepath.Join(g.Dir, "images", "blobs/sha256", sha256Hex(data)))
	if err != nil || sha256Hex(blob) != sha256Hex(data) {
		t.Errorf("the blob in the bucket: %d bytes, %v; want the file's %d bytes and sha256", len(blob), err, len(data))
	}
	c, _ := OpenCache(t.TempDir())
	if img, err := c.Pull(t.Context(), dest, PullOptions{S3: client}); err != nil || img.Digest != results[0].Digest {
		t.Errorf("pull after the concurrent pushes: %v, %v", img, err)
	}
	if left := unfinishedUploads(t, client); len(left) != 0 {
		t.Errorf("unfinished uploads left: %v", left)
	}
}

func TestS3PushWrongCredentials(t *testing.T) {
	g, _ := s3Env(t)
	file := writeTestEROFS(t, t.TempDir())
	dest, _ := ParseReference("s3://images/tool")
	opts := PushOptions{PullOptions: PullOptions{S3: s3ClientVia(t, g, http.DefaultTransport, "wrong")}}
	_, err := PushEROFS(t.Context(), file, DefaultEROFSConfig(), dest, opts)
	t.Logf("the error: %v", err)
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), `access denied to bucket "images"`) ||
		!strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
		t.Errorf("push with a wrong secret: %v; want ErrUnauthorized naming the bucket and the keys to check", err)
	}
}

// TestS3PullBadIndex: an index whose bytes do not hash to the digest the
// tag names, or that is not an index at all, fails the pull naming it.
func TestS3PullBadIndex(t *testing.T) {
	g, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	dest, _ := ParseReference("s3://images/tool")
	res, err := PushEROFS(ctx, file, DefaultEROFSConfig(), dest, PushOptions{PullOptions: PullOptions{S3: client}})
	if err != nil {
		t.Fatal(err)
	}
	indexKey := "indexes/sha256/" + res.Digest.Hex + ".json"
	idx := filepath.Join(g.Dir, "images", indexKey)
	good, err := os.ReadFile(idx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		index   []byte // written over the pushed index
		tagged  []byte // stored as an index and tagged
		wantErr []string
		wantIs  error
	}{
		{name: "index altered", index: append(bytes.Clone(good), ' '),
			wantErr: []string{indexKey, "digest"}, wantIs: ErrDigestMismatch},
		{name: "index truncated", index: good[:len(good)/2], wantErr: []string{indexKey, "digest"}, wantIs: ErrDigestMismatch},
		{name: "tag to invalid JSON", tagged: []byte(`{"size": 12, "chunks": [`), wantErr: []string{"indexes/sha256/"}},
		{name: "tag to something else", tagged: []byte(`{"hello": "world"}`), wantErr: []string{"indexes/sha256/"}},
		{name: "tag to a missing index", tagged: nil, wantErr: []string{"indexes/sha256/" + strings.Repeat("ab", 32), "not found"}, wantIs: ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.index != nil {
				if err := os.WriteFile(idx, tc.index, 0o644); err != nil {
					t.Fatal(err)
				}
				defer os.WriteFile(idx, good, 0o644)
			}
			// By digest: the tag object carries the index, and a pull
			// by tag would not read the index object.
			ref, _ := ParseReference("s3://images/tool@" + res.Digest.String())
			if tc.index == nil {
				digest := strings.Repeat("ab", 32)
				if tc.tagged != nil {
					digest = sha256Hex(tc.tagged)
					if _, err := client.PutObject(ctx, "images", "indexes/sha256/"+digest+".json", tc.tagged, s3.PutOptions{}); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := client.PutObject(ctx, "images", "tool/tags/bad", []byte("sha256:"+digest+"\n"), s3.PutOptions{}); err != nil {
					t.Fatal(err)
				}
				ref, _ = ParseReference("s3://images/tool:bad")
			}
			c, _ := OpenCache(t.TempDir())
			_, err := c.Pull(ctx, ref, PullOptions{S3: client})
			t.Logf("the error: %v", err)
			if err == nil {
				t.Fatal("pull succeeded")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %v is not %v", err, tc.wantIs)
			}
		})
	}
}

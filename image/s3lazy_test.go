package image

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
	"github.com/pe-project/pe/erofs"
)

// readTool reads n bytes at off of /bin/tool in the lazily opened image.
func readTool(t *testing.T, im *blockstore.Image, off, n int64) ([]byte, error) {
	t.Helper()
	fsys, err := erofs.OpenSize(im, im.Size())
	if err != nil {
		return nil, err
	}
	f, err := fsys.Open("bin/tool")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, n)
	ra, ok := f.(io.ReaderAt)
	if !ok {
		t.Fatal("erofs file is not an io.ReaderAt")
	}
	if _, err := ra.ReadAt(buf, off); err != nil {
		return nil, err
	}
	return buf, nil
}

// TestOpenS3Lazy opens a pushed image without downloading it, then again
// from the cache's copy of its index with the bucket out of reach, with
// the image deleted from the bucket, with wrong credentials, and once
// pulled whole.
func TestOpenS3Lazy(t *testing.T) {
	g, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dest, _ := ParseReference("s3://images/ce/tool:v1")
	res := pushTestEROFS(t, client, file, dest)
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store, err := c.ChunkStore(0)
	if err != nil {
		t.Fatal(err)
	}
	chunks := blockstore.NumChunks(int64(len(data)), blockstore.DefaultChunkSize)

	img, err := c.OpenS3(ctx, dest, PullOptions{S3: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	if img.Lazy == nil || img.Cached != nil || img.Digest != res.Digest || img.Size != int64(len(data)) {
		t.Fatalf("OpenS3 = %+v; want a lazy image of digest %s, %d bytes", img, res.Digest, len(data))
	}
	if ep := img.Config.Config.Entrypoint; len(ep) != 1 || ep[0] != "/bin/tool" {
		t.Errorf("config entrypoint %q, want the pushed config's", ep)
	}
	first, err := readTool(t, img.Lazy, 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	st := img.Lazy.Stats()
	t.Logf("reading the superblock, the inode and 4 KiB of the file: %+v (image of %d chunks)", st, chunks)
	if st.Gets == 0 || st.Gets >= chunks {
		t.Errorf("%d GETs for one small read, want some and fewer than the image's %d chunks", st.Gets, chunks)
	}
	img.Close()
	if _, err := img.Lazy.ReadAt(make([]byte, 1), 0); !errors.Is(err, blockstore.ErrClosed) {
		t.Errorf("read after Close: %v, want ErrClosed", err)
	}
	if _, err := os.Stat(c.s3IndexPath(res.Digest)); err != nil {
		t.Errorf("no local copy of the index: %v", err)
	}

	pinned, err := PinS3(dest.String(), res.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	pinnedRef, _ := ParseReference(pinned)
	dead, _ := s3.New(s3.Config{Endpoint: "http://127.0.0.1:1", Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, PathStyle: true}, s3.Options{MaxAttempts: 1})
	wrong, _ := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: "wrong", PathStyle: true}, s3.Options{MaxAttempts: 1})

	// cachedAndNot opens ref with client, reads what the first open read
	// (cached: no GET) and a part of the file never read (a fetch, which
	// fails with the error wantErr names).
	cachedAndNot := func(t *testing.T, ref Reference, client *s3.Client, wantErr ...string) {
		t.Helper()
		img, err := c.OpenS3(ctx, ref, PullOptions{S3: client}, store)
		if err != nil {
			t.Fatalf("OpenS3 %s: %v", ref, err)
		}
		defer img.Close()
		again, err := readTool(t, img.Lazy, 0, 4096)
		if err != nil || string(again) != string(first) {
			t.Fatalf("cached read: %v (same bytes %v)", err, string(again) == string(first))
		}
		// Joins: reads of chunks whose cache file is still being
		// written take the fetched bytes.
		if st := img.Lazy.Stats(); st.Gets != 0 || st.Hits+st.Joins == 0 {
			t.Errorf("cached read: %+v; want hits and no GET", st)
		}
		_, err = readTool(t, img.Lazy, 2<<20, 4096)
		t.Logf("the uncached read's error: %v", err)
		var fe *blockstore.FetchError
		if !errors.As(err, &fe) {
			t.Fatalf("uncached read: %v; want a FetchError", err)
		}
		for _, w := range wantErr {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("uncached read: %v; want it to say %q", err, w)
			}
		}
	}
	t.Run("pinned, bucket unreachable", func(t *testing.T) {
		cachedAndNot(t, pinnedRef, dead, "127.0.0.1:1")
	})
	t.Run("tag, bucket unreachable, record fresh", func(t *testing.T) {
		cachedAndNot(t, dest, dead, "127.0.0.1:1")
	})
	t.Run("wrong credentials", func(t *testing.T) {
		// The tag is read again (PullAlways): 403 naming the bucket.
		_, err := c.OpenS3(ctx, dest, PullOptions{S3: wrong, Policy: PullAlways}, store)
		t.Logf("the error: %v", err)
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), `bucket "images"`) {
			t.Errorf("OpenS3 with wrong credentials: %v; want ErrUnauthorized naming the bucket", err)
		}
		// Chunks: the same 403, at once (not retried).
		cachedAndNot(t, pinnedRef, wrong, `access denied to bucket "images"`, "1 attempt")
	})
	t.Run("deleted from the bucket", func(t *testing.T) {
		// Both blobs: the EROFS image and its packed chunks.
		blobs, _ := filepath.Glob(filepath.Join(g.Dir, "images", "ce/blobs/sha256", "*"))
		if len(blobs) != 2 || !slices.Contains(blobs, filepath.Join(g.Dir, "images", "ce/blobs/sha256", sha256Hex(data))) {
			t.Fatalf("blobs in the bucket: %v; want the image's and its packed chunks'", blobs)
		}
		for _, b := range blobs {
			if err := os.Remove(b); err != nil {
				t.Fatal(err)
			}
		}
		os.Remove(filepath.Join(g.Dir, "images", "ce/indexes/sha256", res.Digest.Hex+".json"))
		cachedAndNot(t, pinnedRef, client, "not found", "1 attempt")
	})
	t.Run("unknown digest offline", func(t *testing.T) {
		other, _ := PinS3(dest.String(), "sha256:"+strings.Repeat("0", 64))
		ref, _ := ParseReference(other)
		_, err := c.OpenS3(ctx, ref, PullOptions{S3: dead}, store)
		t.Logf("the error: %v", err)
		if err == nil || !strings.Contains(err.Error(), "index of s3://images/ce/tool@sha256:000") {
			t.Errorf("OpenS3 of an unknown digest, bucket unreachable: %v; want an error naming the index", err)
		}
	})
	t.Run("pulled whole", func(t *testing.T) {
		c2, _ := OpenCache(t.TempDir())
		if err := os.WriteFile(filepath.Join(g.Dir, "images", "ce/blobs/sha256", sha256Hex(data)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		idx, _ := os.ReadFile(c.s3IndexPath(res.Digest))
		os.WriteFile(filepath.Join(g.Dir, "images", "ce/indexes/sha256", res.Digest.Hex+".json"), idx, 0o644)
		if _, err := c2.Pull(ctx, dest, PullOptions{S3: client}); err != nil {
			t.Fatal(err)
		}
		store2, _ := c2.ChunkStore(0)
		img, err := c2.OpenS3(ctx, dest, PullOptions{S3: dead}, store2)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if img.Lazy != nil || img.Cached == nil || img.Cached.EROFSPath == "" || img.Digest != res.Digest {
			t.Errorf("OpenS3 of a pulled image = %+v; want the cached file", img)
		}
	})
}

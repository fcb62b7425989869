package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
	"github.com/pe-project/pe/erofs"
)

func TestParseS3Reference(t *testing.T) {
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in, want   string
		wantLoc    s3Location
		wantTag    string
		wantDigest bool
		wantErr    string
	}{
		{in: "s3://bucket/name", want: "s3://bucket/name:latest", wantLoc: s3Location{"bucket", "", "name"}, wantTag: "latest"},
		{in: "s3://bucket/a/b/name:v1.2", want: "s3://bucket/a/b/name:v1.2", wantLoc: s3Location{"bucket", "a/b", "name"}, wantTag: "v1.2"},
		{in: "s3://my.bucket-1/pre/clang@" + digest, want: "s3://my.bucket-1/pre/clang@" + digest, wantLoc: s3Location{"my.bucket-1", "pre", "clang"}, wantDigest: true},
		{in: "s3://bucket", wantErr: "s3://BUCKET/[PREFIX/]NAME"},
		{in: "s3://bucket/", wantErr: "path segment"},
		{in: "s3://bucket//name", wantErr: "path segment"},
		{in: "s3://bucket/../name", wantErr: "path segment"},
		{in: "s3://bucket/a/./name", wantErr: "path segment"},
		{in: "s3://Bucket/name", wantErr: "bucket"},
		{in: "s3://b/name", wantErr: "bucket"},
		{in: "s3://bucket/name:bad tag", wantErr: "tag"},
		{in: "s3://bucket/name:", wantErr: "tag"},
		{in: "s3://bucket/name@sha256:12", wantErr: "digest"},
		{in: "s3://bucket/name@md5:" + strings.Repeat("ab", 16), wantErr: "digest"},
		{in: "s3://bucket/p/blobs", wantErr: "reserved"},
		{in: "s3://bucket/p/traces:v1", wantErr: "reserved"},
		{in: "s3://bucket/x.erofs", wantErr: ".erofs"},
		{in: "s3://bucket/na me", wantErr: "path segment"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			r, err := ParseReference(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseReference(%q) = %v, %v; want an error containing %q", tc.in, r, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := struct {
				S, Familiar string
				Transport   Transport
				Loc         s3Location
				Tag         string
				Digest      bool
				Local       bool
			}{r.String(), r.Familiar(), r.Transport(), r.s3, r.tag, r.IsDigest(), r.IsLocal() || IsLocal(r.String())}
			want := got
			want.S, want.Familiar, want.Transport, want.Loc, want.Tag, want.Digest, want.Local = tc.want, tc.want, TransportS3, tc.wantLoc, tc.wantTag, tc.wantDigest, false
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(s3Location{})); diff != "" {
				t.Errorf("ParseReference(%q) (-want +got):\n%s", tc.in, diff)
			}
			again, err := ParseReference(r.String())
			if err != nil || again.String() != r.String() {
				t.Errorf("ParseReference(%q) = %v, %v; want it back", r.String(), again, err)
			}
		})
	}
}

// s3Env starts versitygw with a bucket "images" and returns a client for
// it, the gateway and pull options using the client.
func s3Env(t *testing.T) (s3test.Gateway, *s3.Client) {
	t.Helper()
	g := s3test.Start(t)
	client, err := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, PathStyle: true}, s3.Options{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.CreateBucket(t.Context(), "images"); err != nil {
		t.Fatal(err)
	}
	return g, client
}

// writeTestEROFS writes an EROFS image with a few MiB of random data (so
// several chunks) and returns its path.
func writeTestEROFS(t *testing.T, dir string) string {
	t.Helper()
	return writeTestEROFSSize(t, dir, 3<<20+12345)
}

// writeTestEROFSSize writes an EROFS image holding one file of size random
// bytes and returns its path.
func writeTestEROFSSize(t *testing.T, dir string, size int) string {
	t.Helper()
	path := filepath.Join(dir, "test.erofs")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := erofs.NewWriter(f, erofs.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	mt := time.Unix(1700000000, 0)
	if err := w.Add(erofs.Entry{Path: "bin", Mode: fs.ModeDir | 0o755, ModTime: mt}, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Add(erofs.Entry{Path: "bin/tool", Mode: 0o755, ModTime: mt, Size: int64(len(data))}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

const testS3Config = `{"architecture":"` + "ARCH" + `","os":"linux","config":{"Entrypoint":["/bin/tool"],"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]}}`

// testS3ConfigJSON is testS3Config for this machine's architecture.
func testS3ConfigJSON() []byte {
	return []byte(strings.Replace(testS3Config, "ARCH", strings.TrimPrefix(DefaultPlatform(), "linux/"), 1))
}

// pushTestEROFS pushes the EROFS file to ref through client, with
// testS3ConfigJSON as its config.
func pushTestEROFS(t *testing.T, client *s3.Client, file string, ref Reference) *PushResult {
	t.Helper()
	res, err := PushEROFS(t.Context(), file, testS3ConfigJSON(), ref, PushOptions{PullOptions: PullOptions{S3: client}})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestS3PushPull(t *testing.T) {
	g, client := s3Env(t)
	ctx := t.Context()
	dir := t.TempDir()
	file := writeTestEROFS(t, dir)
	config := testS3ConfigJSON()
	dest, err := ParseReference("s3://images/team/tool:v1")
	if err != nil {
		t.Fatal(err)
	}
	opts := PushOptions{PullOptions: PullOptions{S3: client}, PartSize: s3.MinPartSize}
	res, err := PushEROFS(ctx, file, config, dest, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !res.BlobSent {
		t.Error("first push: BlobSent = false")
	}
	want, _ := os.ReadFile(file)
	blobSum := sha256Hex(want)
	for _, key := range []string{"team/blobs/sha256/" + blobSum, "team/indexes/sha256/" + res.Digest.Hex + ".json", "team/tool/tags/v1"} {
		if _, err := client.HeadObject(ctx, "images", key); err != nil {
			t.Errorf("after push: %v", err)
		}
	}
	blobFile := filepath.Join(g.Dir, "images", "team/blobs/sha256", blobSum)
	before, err := os.Stat(blobFile)
	if err != nil {
		t.Fatal(err)
	}

	// Pushing again sends no blob: the object is the same file, untouched.
	time.Sleep(10 * time.Millisecond)
	again, err := PushEROFS(ctx, file, config, dest, opts)
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(blobFile)
	if err != nil {
		t.Fatal(err)
	}
	if again.BlobSent || again.Digest != res.Digest || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second push: BlobSent %v digest %s (first %s), blob mtime %v → %v; want no blob sent, the same digest",
			again.BlobSent, again.Digest, res.Digest, before.ModTime(), after.ModTime())
	}

	// Pull into a fresh cache: the same bytes and config.
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var phases []Phase
	img, err := c.Pull(ctx, dest, PullOptions{S3: client, Progress: func(p Progress) {
		if p.Done {
			phases = append(phases, p.Phase)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(img.EROFSPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || img.Digest != res.Digest || !img.Converted {
		t.Errorf("pulled image: %d bytes (want %d, equal %v), digest %s (want %s), converted %v",
			len(got), len(want), bytes.Equal(got, want), img.Digest, res.Digest, img.Converted)
	}
	if diff := cmp.Diff([]string{"/bin/tool"}, img.Config.Config.Entrypoint); diff != "" {
		t.Errorf("pulled config entrypoint (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Phase{PhaseDownload}, phases); diff != "" {
		t.Errorf("progress phases (-want +got):\n%s", diff)
	}
	// By digest, from the cache: no request needed even without a client
	// that works.
	byDigest, _ := ParseReference("s3://images/team/tool@" + res.Digest.String())
	bad, _ := s3.New(s3.Config{Endpoint: "http://127.0.0.1:1", Region: "us-east-1", PathStyle: true}, s3.Options{MaxAttempts: 1})
	if img2, err := c.Get(ctx, byDigest, PullOptions{S3: bad}); err != nil || img2.Converted {
		t.Errorf("Get by digest from the cache: %v, %v", img2, err)
	}

	// The tag deleted from the bucket: Get keeps using the cached image
	// once its record is stale; Pull says the tag is gone.
	if err := client.DeleteObject(ctx, "images", "team/tool/tags/v1"); err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return time.Now().Add(2 * DefaultTagTTL) }
	if img2, err := c.Get(ctx, dest, PullOptions{S3: client}); err != nil || img2.Digest != res.Digest {
		t.Errorf("Get with the tag deleted from the bucket: %v, %v; want the cached image", img2, err)
	}
	if _, err := c.Pull(ctx, dest, PullOptions{S3: client}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Pull with the tag deleted from the bucket: %v; want ErrNotFound", err)
	}
	c.now = time.Now

	// Push from the cache (Cache.Push, the s3 image as the source) to
	// another tag: the same digest, no blob sent.
	dest2, _ := ParseReference("s3://images/team/tool:copy")
	res2, err := c.Push(ctx, dest, dest2, opts)
	if err != nil {
		t.Fatal(err)
	}
	if res2.Digest != res.Digest || res2.BlobSent {
		t.Errorf("Cache.Push of the pulled image: digest %s (want %s), BlobSent %v", res2.Digest, res.Digest, res2.BlobSent)
	}
}

func TestS3PullErrors(t *testing.T) {
	g, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	dest, _ := ParseReference("s3://images/tool")
	res, err := PushEROFS(ctx, file, DefaultEROFSConfig(), dest, PushOptions{PullOptions: PullOptions{S3: client}})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(file)
	blobFile := filepath.Join(g.Dir, "images", "blobs/sha256", sha256Hex(data))

	assertEmpty := func(t *testing.T, c *Cache) {
		t.Helper()
		imgs, err := os.ReadDir(c.path(imagesDir))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range imgs {
			if !strings.HasSuffix(e.Name(), ".lock") {
				t.Errorf("the cache has %s after a failed pull", e.Name())
			}
		}
	}

	t.Run("missing tag", func(t *testing.T) {
		c, _ := OpenCache(t.TempDir())
		ref, _ := ParseReference("s3://images/tool:nope")
		_, err := c.Pull(ctx, ref, PullOptions{S3: client})
		t.Logf("the error: %v", err)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "tool/tags/nope") {
			t.Errorf("pull of a missing tag: %v; want ErrNotFound naming the key tool/tags/nope", err)
		}
		assertEmpty(t, c)
	})
	t.Run("wrong credentials", func(t *testing.T) {
		c, _ := OpenCache(t.TempDir())
		wrong, _ := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
			SecretAccessKey: "wrong", PathStyle: true}, s3.Options{MaxAttempts: 1})
		_, err := c.Pull(ctx, dest, PullOptions{S3: wrong})
		t.Logf("the error: %v", err)
		if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "images") {
			t.Errorf("pull with wrong credentials: %v; want ErrUnauthorized naming the bucket", err)
		}
		assertEmpty(t, c)
	})
	t.Run("corrupt blob", func(t *testing.T) {
		c, _ := OpenCache(t.TempDir())
		bad := bytes.Clone(data)
		bad[len(bad)-100] ^= 1
		if err := os.WriteFile(blobFile, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		defer os.WriteFile(blobFile, data, 0o644)
		_, err := c.Pull(ctx, dest, PullOptions{S3: client})
		t.Logf("the error: %v", err)
		if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "chunk") {
			t.Errorf("pull of a tampered blob: %v; want ErrDigestMismatch naming the chunk", err)
		}
		assertEmpty(t, c)
	})
	t.Run("import base", func(t *testing.T) {
		c, _ := OpenCache(t.TempDir())
		tarFile := filepath.Join(t.TempDir(), "x.tar")
		if err := os.WriteFile(tarFile, make([]byte, 1024), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := c.Import(ctx, ImportOptions{Tar: tarFile, Base: dest, Tag: "x:1", Pull: PullOptions{S3: client}})
		t.Logf("the error: %v", err)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "without layers") {
			t.Errorf("import over an s3:// base: %v; want ErrUnsupported", err)
		}
	})
	t.Run("missing index", func(t *testing.T) {
		c, _ := OpenCache(t.TempDir())
		idx := filepath.Join(g.Dir, "images", "indexes/sha256", res.Digest.Hex+".json")
		b, err := os.ReadFile(idx)
		if err != nil {
			t.Fatal(err)
		}
		os.Remove(idx)
		defer os.WriteFile(idx, b, 0o644)
		// By digest: the tag object, which carries the index, is not read.
		pinned, _ := ParseReference("s3://images/tool@" + res.Digest.String())
		_, err = c.Pull(ctx, pinned, PullOptions{S3: client})
		t.Logf("the error: %v", err)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "indexes/sha256/"+res.Digest.Hex) {
			t.Errorf("pull without its index: %v; want ErrNotFound naming the index", err)
		}
		assertEmpty(t, c)
	})
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

package cli

import (
	"encoding/json"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/image"
)

// TestImageLsRmLazy lists and removes an s3:// image a run read lazily
// (opened here as pe run opens it, without a VM): pe image ls shows how
// much of it is cached, pe image rm removes its record, index and chunks.
func TestImageLsRmLazy(t *testing.T) {
	s3Env(t)
	ctx := t.Context()
	src := makeTree(t)
	data := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	if err := os.WriteFile(filepath.Join(src, "big"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "tree.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", src, "-o", img, "--mtime", "@1700000000"); err != nil {
		t.Fatalf("build-erofs: %v", err)
	}
	const ref = "s3://images/ce/tree:v1"
	out, stderr, err := run(t, "", "image", "push", img, ref)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	digest := strings.TrimSpace(out)

	cacheDir := t.TempDir()
	c, err := image.OpenCache(cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	client, err := s3.NewFromEnv(s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	store, err := c.ChunkStore(0)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := image.ParseReference(ref)
	lazy, err := c.OpenS3(ctx, r, image.PullOptions{S3: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	if lazy.Lazy == nil {
		t.Fatal("not opened lazily")
	}
	if _, err := lazy.Lazy.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	lazy.Close()
	c.FlushChunkStore()

	out, _, err = run(t, "", "image", "ls", "--cache-dir", cacheDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pe image ls:\n%s", out)
	line := regexp.MustCompile(`(?m)^s3://images/ce/tree:v1 +linux/\S+ +` + digest[len("sha256:"):][:12] + ` +[0-9.]+ \S+ of [0-9.]+ \S+ \(lazy\) +less than a minute ago$`)
	if !line.MatchString(out) {
		t.Errorf("pe image ls does not list the lazy image as %s", line)
	}
	out, _, err = run(t, "", "image", "ls", "--cache-dir", cacheDir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Reference   string `json:"reference"`
		Digest      string `json:"digest"`
		Size        int64  `json:"size"`
		CachedBytes int64  `json:"cached_bytes"`
		Lazy        bool   `json:"lazy"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("pe image ls --json: %v\n%s", err, out)
	}
	if got.Reference != ref || got.Digest != digest || !got.Lazy || got.CachedBytes <= 0 || got.CachedBytes >= got.Size {
		t.Errorf("pe image ls --json = %+v; want %s, %s, lazy, part of it cached", got, ref, digest)
	}

	out, _, err = run(t, "", "image", "rm", "--cache-dir", cacheDir, ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pe image rm:\n%s", out)
	for _, want := range []string{"Untagged: " + ref + "\n", "Deleted: " + digest + "\n", "Reclaimed space: "} {
		if !strings.Contains(out, want) {
			t.Errorf("pe image rm printed %q; want %q", out, want)
		}
	}
	var left []string
	filepath.WalkDir(filepath.Join(cacheDir, "s3"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, p)
		}
		return nil
	})
	if len(left) != 0 {
		t.Errorf("after pe image rm, the cache still holds %q", left)
	}
	if out, _, _ := run(t, "", "image", "ls", "--cache-dir", cacheDir); strings.Contains(out, "s3://") {
		t.Errorf("pe image ls after rm:\n%s", out)
	}
	_, _, err = run(t, "", "image", "rm", "--cache-dir", cacheDir, ref)
	if !errors.Is(err, image.ErrNotFound) || err.Error() != "no such image in the cache: "+ref {
		t.Errorf("pe image rm again: %v; want no such image", err)
	}
}

package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
)

// s3Env starts a versitygw with the bucket "images" and points pe's S3
// configuration at it through the environment alone (no shared files from
// the home directory).
func s3Env(t *testing.T) {
	t.Helper()
	g := s3test.Start(t)
	client, err := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, PathStyle: true}, s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.CreateBucket(t.Context(), "images"); err != nil {
		t.Fatal(err)
	}
	none := filepath.Join(t.TempDir(), "none")
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL": g.Endpoint, "AWS_ACCESS_KEY_ID": s3test.AccessKey, "AWS_SECRET_ACCESS_KEY": s3test.SecretKey,
		"AWS_REGION": "us-east-1", "AWS_PROFILE": "", "AWS_CONFIG_FILE": none, "AWS_SHARED_CREDENTIALS_FILE": none,
		"AWS_SESSION_TOKEN": "", "AWS_ENDPOINT_URL_S3": "",
	} {
		t.Setenv(k, v)
	}
}

func TestImagePushPull(t *testing.T) {
	s3Env(t)
	img := filepath.Join(t.TempDir(), "tree.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", makeTree(t), "-o", img, "--mtime", "@1700000000"); err != nil {
		t.Fatalf("build-erofs: %v", err)
	}
	pushed, stderr, err := run(t, "", "image", "push", img, "s3://images/ce/tree:v1")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	digest := strings.TrimSpace(pushed)
	if !strings.HasPrefix(digest, "sha256:") || len(digest) != 71 {
		t.Fatalf("push printed %q, want a digest", pushed)
	}
	cache := t.TempDir()
	pulled, stderr, err := run(t, "", "image", "pull", "--cache-dir", cache, "s3://images/ce/tree:v1")
	if err != nil {
		t.Fatalf("pull: %v\n%s", err, stderr)
	}
	if strings.TrimSpace(pulled) != digest {
		t.Errorf("pull printed %q, want the pushed digest %s", pulled, digest)
	}
	want, _ := os.ReadFile(img)
	got, err := os.ReadFile(filepath.Join(cache, "images/sha256", strings.TrimPrefix(digest, "sha256:"), "rootfs.erofs"))
	if err != nil || string(got) != string(want) {
		t.Errorf("the pulled image differs from the pushed file (%d bytes, want %d): %v", len(got), len(want), err)
	}
	// The pulled image is in the cache under its reference.
	ls, _, err := run(t, "", "image", "ls", "--cache-dir", cache)
	if err != nil || !strings.Contains(ls, "s3://images/ce/tree:v1") {
		t.Errorf("image ls: %v\n%s", err, ls)
	}
	// Pushing the cached s3:// image to another tag goes through the
	// cache and gives the same digest.
	copied, stderr, err := run(t, "", "image", "push", "--cache-dir", cache, "s3://images/ce/tree:v1", "s3://images/ce/copy")
	if err != nil || strings.TrimSpace(copied) != digest {
		t.Errorf("push of the s3:// image to another tag: %q, %v; want %s\n%s", copied, err, digest, stderr)
	}
	if _, _, err := run(t, "", "image", "rm", "--cache-dir", cache, "s3://images/ce/tree:v1"); err != nil {
		t.Errorf("image rm: %v", err)
	}
	if ls, _, _ := run(t, "", "image", "ls", "--cache-dir", cache); strings.Contains(ls, "s3://images/ce/tree:v1") {
		t.Errorf("image ls after rm still lists it:\n%s", ls)
	}
	// A tag that is not there: a clear not-found naming the key.
	_, _, err = run(t, "", "image", "pull", "--cache-dir", cache, "s3://images/ce/tree:v2")
	if err == nil || !strings.Contains(err.Error(), "ce/tree/tags/v2") || !strings.Contains(err.Error(), "not found") {
		t.Errorf("pull of a missing tag: %v; want not found naming ce/tree/tags/v2", err)
	}
	// The destination must be s3://.
	if _, _, err := run(t, "", "image", "push", img, "busybox"); err == nil || !strings.Contains(err.Error(), "s3://") {
		t.Errorf("push to a registry reference: %v; want a usage error", err)
	}
	// Without packed chunks: another index, so another digest, and the
	// same image pulled.
	plain, stderr, err := run(t, "", "image", "push", "--chunk-compression", "none", img, "s3://images/ce/tree:plain")
	if err != nil || strings.TrimSpace(plain) == digest || !strings.HasPrefix(plain, "sha256:") {
		t.Errorf("push --chunk-compression none: %q, %v; want a digest other than %s\n%s", plain, err, digest, stderr)
	}
	cache2 := t.TempDir()
	if pulled, _, err := run(t, "", "image", "pull", "--cache-dir", cache2, "s3://images/ce/tree:plain"); err != nil || pulled != plain {
		t.Errorf("pull of the plain push: %q, %v; want %q", pulled, err, plain)
	}
	if _, _, err := run(t, "", "image", "push", "--chunk-compression", "zstd", img, "s3://images/ce/tree:z"); err == nil || !strings.Contains(err.Error(), `--chunk-compression "zstd"`) {
		t.Errorf("push --chunk-compression zstd: %v; want a usage error naming it", err)
	}
}

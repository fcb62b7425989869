package cli

import (
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore/s3"
)

// TestServeWorkerS3 serves an s3:// preset from a real S3 server
// (versitygw) as a worker behind a balancer would: /healthz turns ready
// once the preset's bucket answers, its metadata chunks are in the chunk
// cache before any run (pe_chunk_gets_total moved: warmed), and when the
// image's index goes from the bucket the worker answers not ready, naming
// the preset and the object, at the next check. No VM runs (--cold: ready
// once the VMM is chosen).
func TestServeWorkerS3(t *testing.T) {
	vmSetup(t) // the guest init the engine wants, though no VM boots
	t.Setenv("PE_CACHE_DIR", t.TempDir())
	s3Env(t)
	img := filepath.Join(t.TempDir(), "tree.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", makeTree(t), "-o", img); err != nil {
		t.Fatalf("build-erofs: %v", err)
	}
	if _, stderr, err := run(t, "", "image", "push", "--cache-dir", t.TempDir(), img, "s3://images/ce/tree:v1"); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	url := startServe(t, "--listen", "127.0.0.1:0", "--accel", "tcg", "--cold", "--check-interval", "100ms",
		"--preset", "tree=s3://images/ce/tree:v1")
	health := func() (int, string) {
		resp, err := http.Get(url + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				st, b := health()
				t.Fatalf("%s: not in a minute (healthz %d %q)", what, st, b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitUntil("ready", func() bool { st, b := health(); return st == 200 && b == "ready\n" })
	gets := regexp.MustCompile(`(?m)^pe_chunk_gets_total ([1-9][0-9]*)`)
	waitUntil("warmed", func() bool {
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return gets.Match(b)
	})

	// The store loses the image: the worker leaves the pool.
	client, err := s3.NewFromEnv(s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var indexKey string
	for o, err := range client.ListObjects(t.Context(), "images", "ce/indexes/") {
		if err != nil {
			t.Fatal(err)
		}
		indexKey = o.Key
	}
	if indexKey == "" {
		t.Fatal("no index in the bucket")
	}
	if err := client.DeleteObject(t.Context(), "images", indexKey); err != nil {
		t.Fatal(err)
	}
	var body string
	waitUntil("not ready", func() bool { st, b := health(); body = b; return st == 503 })
	if want := "not ready: preset tree: reading s3://images/" + indexKey; !strings.HasPrefix(body, want) {
		t.Errorf("healthz body %q, want it to start %q", body, want)
	}
}

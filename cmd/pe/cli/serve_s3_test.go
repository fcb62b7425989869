package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/server"
)

// TestServeS3VM pushes a busybox image to a real S3 server (versitygw)
// twice, serves one copy as a --preset NAME=s3://... and opens the other's
// prefix with --allow-image s3://images/ce/, and runs both in real VMs
// through the HTTP API, read lazily (pe_chunk_gets_total on /metrics);
// an s3:// image outside the prefix is refused without being read.
func TestServeS3VM(t *testing.T) {
	dir := vmSetup(t)
	t.Setenv("PE_CACHE_DIR", t.TempDir()) // the s3 images are pulled here, not into the shared fixture
	s3Env(t)
	img := filepath.Join(dir, "busybox.erofs")
	for _, dest := range []string{"s3://images/private/bb:v1", "s3://images/ce/bb:v1"} {
		if _, stderr, err := run(t, "", "image", "push", "--cache-dir", t.TempDir(), img, dest); err != nil {
			t.Fatalf("push %s: %v\n%s", dest, err, stderr)
		}
	}

	url := startServe(t, "--listen", "127.0.0.1:0", "--accel", "tcg", "--cold", "--slots", "1", "--run-timeout", "2m",
		"--preset", "demo=s3://images/private/bb:v1", "--allow-image", "s3://images/ce/")
	type result struct {
		Status int
		Stdout string
		Image  string
	}
	for _, c := range []struct {
		ref  string
		want result
	}{
		{"demo", result{200, "from s3\n", "demo"}},
		{"s3:%2F%2Fimages%2Fce%2Fbb:v1", result{200, "from s3\n", "s3://images/ce/bb:v1"}},
		{"s3:%2F%2Fimages%2Fprivate%2Fother:v1", result{403, "", ""}},
		{"s3:%2F%2Fimages%2Fcex%2Fbb:v1", result{403, "", ""}},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), "POST", url+"/api/v2/runi/amd64/linux/"+c.ref,
			strings.NewReader(`{"cmd":["sh","-c","echo from s3"]}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var r server.RunResponse
		json.Unmarshal(b, &r)
		got := result{Status: resp.StatusCode, Image: r.Image}
		if r.Stdout != nil {
			got.Stdout = *r.Stdout
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("run of %s (-want +got):\n%s\n%s", c.ref, diff, b)
		}
	}
	// The s3:// images were read lazily, through the chunk store.
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`(?m)^pe_chunk_gets_total [1-9]`).Match(b) {
		t.Errorf("/metrics shows no chunk fetched:\n%s", regexp.MustCompile(`(?m)^pe_chunk.*$`).FindAll(b, -1))
	}
}

// startServe runs pe serve with args in this process until the test ends
// and returns its base URL.
func startServe(t *testing.T, args ...string) string {
	t.Helper()
	pr, pw := io.Pipe()
	ctx, stop := context.WithCancel(context.Background())
	cmd := New()
	cmd.SetArgs(append([]string{"serve"}, args...))
	cmd.SetOut(io.Discard)
	cmd.SetErr(pw)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx); pw.Close() }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("pe serve: %v", err)
		}
	})
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`pe serve: (http://[^/]+)/`)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case url := <-addr:
		return url
	case <-time.After(time.Minute):
		t.Fatal("pe serve printed no address in a minute")
	}
	return ""
}

// Package s3test starts a real S3 server for tests: versitygw, which checks
// SigV4 signatures and serves the objects of bucket B as the files of
// Dir/B; and Proxy and Delay put a slow link in front of one (a delay per
// request, a bandwidth shared by all responses), for tests and benchmarks
// of reads from distant storage (scripts/s3delay). It imports nothing of
// pe's, so the tests of package s3 itself can use it.
package s3test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// The credentials the servers Start starts accept.
const (
	AccessKey = "AKIDPETEST"
	SecretKey = "pe-test-secret-key"
)

// Gateway is a running versitygw.
type Gateway struct {
	// Endpoint is its URL, http://127.0.0.1:PORT.
	Endpoint string
	// Dir is its posix root: Dir/<bucket>/<key>.
	Dir string
}

// Start starts `versitygw --access AccessKey --secret SecretKey --port
// 127.0.0.1:PORT posix DIR` on a free port and waits until it answers. It
// skips the test when versitygw is not installed (make deps-s3 installs
// it) and kills the server at cleanup; DIR is a t.TempDir, removed then
// too.
func Start(t testing.TB) Gateway {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		t.Skip("versitygw is not installed (make deps-s3 installs it): needed for tests against a real S3 server")
	}
	dir := t.TempDir()
	for try := 0; ; try++ {
		addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
		var log bytes.Buffer
		cmd := exec.Command(bin, "--access", AccessKey, "--secret", SecretKey, "--port", addr, "posix", dir)
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting versitygw: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			cmd.Process.Kill()
			<-exited
		}
		g := Gateway{Endpoint: "http://" + addr, Dir: dir}
		if err := waitAnswers(g.Endpoint, exited, 30*time.Second); err != nil {
			stop()
			// Another process may have taken the port between our probe and
			// versitygw's bind: try a few more.
			if try < 3 {
				continue
			}
			t.Fatalf("versitygw did not answer on %s: %v\n%s", addr, err, log.String())
		}
		t.Cleanup(stop)
		return g
	}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitAnswers polls endpoint until it answers HTTP (any status: an
// anonymous request gets 403), the process exits, or the wait runs out.
func waitAnswers(endpoint string, exited <-chan error, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/", nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case werr := <-exited:
			return errExited{werr}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return err
		}
	}
}

type errExited struct{ err error }

func (e errExited) Error() string {
	if e.err == nil {
		return "versitygw exited: status 0"
	}
	return "versitygw exited: " + e.err.Error()
}

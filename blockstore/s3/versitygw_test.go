package s3

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

// Test credentials for the versitygw the tests start.
const (
	testAccess = "AKIDPETEST"
	testSecret = "pe-test-secret-key"
)

// gateway is a running versitygw.
type gateway struct {
	endpoint string // http://127.0.0.1:PORT
	dir      string // its posix root: DIR/<bucket>/<key>
}

// startVersitygw starts `versitygw --access AK --secret SK --port
// 127.0.0.1:PORT posix DIR` on a free port and waits until it answers. It
// skips the test when versitygw is not installed (make deps-s3 installs it)
// and kills the server at cleanup; DIR is a t.TempDir, removed then too.
func startVersitygw(t testing.TB) gateway {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		t.Skip("versitygw is not installed (make deps-s3 installs it): needed for tests against a real S3 server")
	}
	dir := t.TempDir()
	for try := 0; ; try++ {
		port := freePort(t)
		addr := "127.0.0.1:" + strconv.Itoa(port)
		var log bytes.Buffer
		cmd := exec.Command(bin, "--access", testAccess, "--secret", testSecret, "--port", addr, "posix", dir)
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
		g := gateway{endpoint: "http://" + addr, dir: dir}
		if err := waitAnswers(g.endpoint, exited, 30*time.Second); err != nil {
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

func (e errExited) Error() string { return "versitygw exited: " + errString(e.err) }

func errString(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

// client returns a client of g with the given secret, and creates bucket
// (when not empty) with the right credentials.
func (g gateway) client(t testing.TB, secret string) *Client {
	t.Helper()
	c, err := New(Config{Endpoint: g.endpoint, Region: DefaultRegion, AccessKeyID: testAccess,
		SecretAccessKey: secret, PathStyle: true}, Options{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// bucket creates a bucket through the API and returns its name.
func (g gateway) bucket(t testing.TB, name string) string {
	t.Helper()
	if err := g.client(t, testSecret).CreateBucket(t.Context(), name); err != nil {
		t.Fatalf("CreateBucket: %v", err)
	}
	return name
}

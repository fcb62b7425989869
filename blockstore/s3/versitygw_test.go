package s3

import (
	"testing"

	"github.com/pe-project/pe/blockstore/s3/s3test"
)

// Test credentials for the versitygw the tests start.
const (
	testAccess = s3test.AccessKey
	testSecret = s3test.SecretKey
)

// gateway is a running versitygw.
type gateway struct {
	endpoint string // http://127.0.0.1:PORT
	dir      string // its posix root: DIR/<bucket>/<key>
}

// startVersitygw starts a versitygw (s3test.Start): it skips the test
// when versitygw is not installed.
func startVersitygw(t testing.TB) gateway {
	t.Helper()
	g := s3test.Start(t)
	return gateway{endpoint: g.Endpoint, dir: g.Dir}
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

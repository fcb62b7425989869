package s3

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// emptySHA256 is the hex SHA-256 of no bytes, the payload hash of every
// request without a body.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// Options tunes a Client; the zero value is ready to use.
type Options struct {
	// HTTPClient sends the requests; nil means one over NewTransport().
	HTTPClient *http.Client
	// MaxAttempts bounds how often a request failing with a retriable error
	// (throttling, 5xx, a broken connection) is sent; 0 means 3, 1 means no
	// retry. Retries back off exponentially with jitter from 100 ms.
	MaxAttempts int
}

// Client talks to one S3 endpoint with one set of credentials. It is safe
// for concurrent use.
type Client struct {
	cfg      Config
	base     *url.URL
	http     *http.Client
	signer   *v4.Signer
	attempts int
	// now is the clock signatures use; tests may skew it.
	now func() time.Time
	// listPageSize, when set, asks for listing pages this small (max-keys),
	// so tests can cross page boundaries with a few keys.
	listPageSize int
}

// NewTransport returns an http.Transport for S3: proxies from the
// environment, bounded connect and response-header waits, and enough idle
// connections per host that parallel ranged reads reuse their connections
// instead of opening new ones.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}

// New returns a client for cfg.
func New(cfg Config, opts Options) (*Client, error) {
	if cfg.Region == "" {
		cfg.Region = DefaultRegion
	}
	var base *url.URL
	if cfg.Endpoint == "" {
		base = &url.URL{Scheme: "https", Host: "s3." + cfg.Region + ".amazonaws.com"}
	} else {
		if err := checkEndpoint(cfg.Endpoint); err != nil {
			return nil, err
		}
		u, _ := url.Parse(cfg.Endpoint)
		u.Path = strings.TrimSuffix(u.Path, "/")
		u.RawPath = ""
		base = u
	}
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Transport: NewTransport()}
	}
	attempts := opts.MaxAttempts
	if attempts <= 0 {
		attempts = 3
	}
	return &Client{
		cfg:  cfg,
		base: base,
		http: hc,
		// S3 signs the path as sent, escaped once, not escaped again.
		signer:   v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true }),
		attempts: attempts,
		now:      time.Now,
	}, nil
}

// NewFromEnv returns a client configured by LoadConfig.
func NewFromEnv(opts Options) (*Client, error) {
	cfg, err := LoadConfig()
	if err != nil {
		return nil, err
	}
	return New(cfg, opts)
}

// Config returns the configuration the client uses.
func (c *Client) Config() Config { return c.cfg }

// Endpoint returns the base URL requests go to, for messages.
func (c *Client) Endpoint() string { return c.base.String() }

// request is one S3 call before it is signed.
type request struct {
	op      string
	method  string
	bucket  string
	key     string
	query   url.Values
	header  http.Header
	body    []byte // nil for none; held whole so a retry can resend it
	bodySHA string // hex SHA-256 of body; computed when empty
}

// objectURL builds the URL of bucket/key: path-style or virtual-hosted.
// Keys are escaped the way S3 canonicalises them (every byte but unreserved
// ones and '/'), so the signature covers exactly the path sent.
func (c *Client) objectURL(bucket, key string, query url.Values) *url.URL {
	u := *c.base
	path := u.Path
	virtual := !c.cfg.PathStyle && bucket != "" && !strings.Contains(bucket, ".")
	if bucket != "" {
		if virtual {
			u.Host = bucket + "." + u.Host
		} else {
			path += "/" + bucket
		}
	}
	path += "/" + key
	u.Path = path
	u.RawPath = escapePath(path)
	if len(query) > 0 {
		// S3 takes "uploads" and similar as bare keys; Encode gives "uploads=",
		// which S3 accepts and which signs the same.
		u.RawQuery = strings.ReplaceAll(query.Encode(), "+", "%20")
	}
	return &u
}

// escapePath percent-encodes every byte of p except unreserved characters
// and '/', as SigV4 canonical URIs for S3 require.
func escapePath(p string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		ch := p[i]
		if ch >= 'A' && ch <= 'Z' || ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' ||
			ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == '/' {
			b.WriteByte(ch)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[ch>>4])
		b.WriteByte(hexDigits[ch&15])
	}
	return b.String()
}

// checkNames rejects bucket names and keys S3 would refuse or that would
// change which resource a URL names, before anything is sent.
func checkNames(op, bucket, key string, needKey bool) error {
	if len(bucket) < 3 || len(bucket) > 63 {
		return fmt.Errorf("s3: %s: bucket name %q must be 3 to 63 characters", op, bucket)
	}
	for i := 0; i < len(bucket); i++ {
		ch := bucket[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '-') {
			return fmt.Errorf("s3: %s: bucket name %q may hold only lower-case letters, digits, '.' and '-'", op, bucket)
		}
	}
	if needKey && key == "" {
		return fmt.Errorf("s3: %s: empty key in bucket %q", op, bucket)
	}
	if len(key) > 1024 {
		return fmt.Errorf("s3: %s: key of %d bytes, more than S3's 1024", op, len(key))
	}
	return nil
}

// do sends r, retrying retriable failures, and returns a response with a
// 2xx status (or 304) whose body the caller must close. Failures come back
// as *Error (or a transport error wrapped with the operation's name).
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	if r.body != nil && r.bodySHA == "" {
		sum := sha256.Sum256(r.body)
		r.bodySHA = hex.EncodeToString(sum[:])
	}
	var err error
	for attempt := 1; ; attempt++ {
		var resp *http.Response
		resp, err = c.send(ctx, r)
		if err == nil {
			return resp, nil
		}
		if attempt >= c.attempts || ctx.Err() != nil || !retriable(err) {
			return nil, err
		}
		backoff := time.Duration(100<<(attempt-1)) * time.Millisecond
		backoff += rand.N(backoff / 2)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(backoff):
		}
	}
}

// retriable: S3 errors that say so, and transport failures (a reset or
// refused connection) that were not our own context ending.
func retriable(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Retriable()
	}
	return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// send makes one attempt.
func (c *Client) send(ctx context.Context, r request) (*http.Response, error) {
	u := c.objectURL(r.bucket, r.key, r.query)
	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("s3: %s s3://%s/%s: %w", r.op, r.bucket, r.key, err)
	}
	// NewRequest re-parses the URL; keep our escaping of the path.
	req.URL.Path, req.URL.RawPath = u.Path, u.RawPath
	for k, vs := range r.header {
		req.Header[k] = vs
	}
	payload := r.bodySHA
	if payload == "" {
		payload = emptySHA256
	}
	// Every request carries its payload hash: S3 needs it in the signature,
	// and versitygw refuses requests without it.
	req.Header.Set("X-Amz-Content-Sha256", payload)
	if c.cfg.AccessKeyID != "" {
		creds := aws.Credentials{
			AccessKeyID:     c.cfg.AccessKeyID,
			SecretAccessKey: c.cfg.SecretAccessKey,
			SessionToken:    c.cfg.SessionToken,
		}
		if err := c.signer.SignHTTP(ctx, creds, req, payload, "s3", c.cfg.Region, c.now()); err != nil {
			return nil, fmt.Errorf("s3: signing %s s3://%s/%s: %w", r.op, r.bucket, r.key, err)
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("s3: %s s3://%s/%s at %s: %w", r.op, r.bucket, r.key, c.Endpoint(), err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	return nil, c.responseError(r, resp)
}

// responseError turns a failed response into an *Error, reading and closing
// its (bounded) body.
func (c *Client) responseError(r request, resp *http.Response) error {
	defer resp.Body.Close()
	e := &Error{
		Op: r.op, Bucket: r.bucket, Key: r.key, Endpoint: c.Endpoint(),
		StatusCode: resp.StatusCode, Anonymous: c.cfg.AccessKeyID == "",
	}
	if r.method != http.MethodHead {
		e.Code, e.Message, e.RequestID = parseErrorBody(resp.Body)
	}
	if e.RequestID == "" {
		e.RequestID = clean(resp.Header.Get("X-Amz-Request-Id"))
	}
	// Drain a little more so the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return e
}

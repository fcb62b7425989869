package image

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors of OpenURL's reader that callers can tell apart with errors.Is.
var (
	// ErrRemoteChanged: the file behind a URL changed on the server while
	// it was being read, so the bytes read so far and the rest do not
	// belong together.
	ErrRemoteChanged = errors.New("changed on the server while importing; start again")
	// ErrCannotResume: the connection dropped and the server cannot send
	// the rest of the file from where it stopped.
	ErrCannotResume = errors.New("the server cannot resume a transfer")
)

// HTTPStatusError is an HTTP answer OpenURL does not retry (404, 403…) or
// still got after its retries (5xx, 429). URL has its credentials
// redacted.
type HTTPStatusError struct {
	URL        string
	StatusCode int
	Status     string
}

func (e *HTTPStatusError) Error() string {
	return fmt.Sprintf("GET %s: %s", e.URL, e.Status)
}

// Is makes 404 match ErrNotFound and 401 and 403 ErrUnauthorized.
func (e *HTTPStatusError) Is(target error) bool {
	switch e.StatusCode {
	case http.StatusNotFound, http.StatusGone:
		return target == ErrNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		return target == ErrUnauthorized
	}
	return false
}

// URLOptions configures OpenURL. The zero value is usable.
type URLOptions struct {
	// Transport carries the requests; nil means a copy of
	// http.DefaultTransport, which honours HTTPS_PROXY, HTTP_PROXY and
	// NO_PROXY.
	Transport http.RoundTripper
	// UserAgent is sent with every request; "" sends "pe".
	UserAgent string
	// MaxSize, when positive, refuses a file longer than this many bytes
	// with ErrTooLarge: at once when the server says its length, else as
	// soon as more arrives.
	MaxSize int64
	// Retries is how many times in a row a request may fail (a network
	// error, a 5xx or 429 answer, a connection dropped or stalled before
	// any byte arrived) before the reader gives up; 0 means 6, negative
	// none. The count starts again whenever bytes arrive, up to 100
	// resumes in all.
	Retries int
	// StallTimeout is how long a request may wait for its answer, and a
	// read of the body for a byte, before the connection counts as
	// dropped; 0 means 60 s.
	StallTimeout time.Duration
	// Backoff is the wait before the first retry, doubled for each retry
	// in a row up to 30 s; 0 means 1 s.
	Backoff time.Duration
	// Log is told of retries and resumes; nil discards them.
	Log *slog.Logger
}

// maxResumes bounds the resumes of one transfer however much each one
// brings: a connection that drops every few bytes is not worth keeping.
const maxResumes = 100

// URLReader reads the body of an HTTP(S) GET, resuming the transfer with a
// Range request where a dropped or stalled connection stopped it. It
// checks, with If-Range and the answer's Content-Range and validators,
// that the rest belongs to the same file. Read and Close may be called
// from different goroutines.
type URLReader struct {
	url    string // as given, with credentials: only for requests
	name   string // redacted, for messages
	client *http.Client
	opts   URLOptions
	log    *slog.Logger

	ctx    context.Context // cancelled by Close, with errReaderClosed
	cancel context.CancelCauseFunc

	mu   sync.Mutex // held by Read and Close
	body io.ReadCloser
	stop context.CancelFunc // of the current request
	// stalled is set by the stall timer when it cancels the request.
	stalled atomic.Bool

	off      int64  // bytes delivered
	size     int64  // length of the file, -1 if unknown
	etag     string // strong ETag of the first answer, or ""
	lastMod  string // its Last-Modified, or ""
	ranges   string // its Accept-Ranges ("bytes", "none" or "")
	failures int    // requests failed in a row
	resumes  int
	requests int
	lastDrop error // why the connection was last lost
	err      error // sticky: io.EOF or why reading failed
}

// OpenURL starts a GET of rawURL (http:// or https://) and returns a reader
// of its body, which resumes the transfer when the connection drops or
// stalls (see URLOptions). An HTTP error answer is an *HTTPStatusError.
// Errors never show the URL's user information or query values.
func OpenURL(ctx context.Context, rawURL string, opts URLOptions) (*URLReader, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%s: not an http:// or https:// URL", RedactURL(rawURL))
	}
	if opts.Retries == 0 {
		opts.Retries = 6
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = 60 * time.Second
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.UserAgent == "" {
		opts.UserAgent = "pe"
	}
	tr := opts.Transport
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	r := &URLReader{
		url:    rawURL,
		name:   RedactURL(rawURL),
		client: &http.Client{Transport: tr},
		opts:   opts,
		log:    opts.Log,
		size:   -1,
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.ctx, r.cancel = context.WithCancelCause(ctx)
	if err := r.open(); err != nil {
		r.cancel(nil)
		return nil, err
	}
	return r, nil
}

// Name is the URL with its credentials redacted.
func (r *URLReader) Name() string { return r.name }

// Size is the length of the file as the server gave it, or -1.
func (r *URLReader) Size() int64 { return r.size }

// Resumes is how many times the transfer was resumed with a Range request.
func (r *URLReader) Resumes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.resumes
}

// Read reads the body, resuming the transfer when the connection is lost.
func (r *URLReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.body == nil {
			if err := r.resume(); err != nil {
				r.err = err
				r.closeBody()
				return 0, err
			}
		}
		n, err := r.readBody(p)
		r.off += int64(n)
		if n > 0 {
			r.failures = 0
		}
		if r.opts.MaxSize > 0 && r.off > r.opts.MaxSize {
			r.err = r.tooLarge()
			r.closeBody()
			return 0, r.err
		}
		switch {
		case err == nil:
			return n, nil
		case err == io.EOF && (r.size < 0 || r.off == r.size):
			r.err = io.EOF
			r.closeBody()
			return n, io.EOF
		case err == io.EOF && r.off > r.size:
			r.err = fmt.Errorf("GET %s: more than the %d bytes the server announced", r.name, r.size)
			r.closeBody()
			return n, r.err
		case err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
		if ctxErr := r.ctx.Err(); ctxErr != nil && !r.stalled.Load() {
			r.err = ctxErr
			if errors.Is(context.Cause(r.ctx), errReaderClosed) {
				r.err = errReaderClosed
			}
			r.closeBody()
			return n, r.err
		}
		if r.stalled.Load() {
			err = fmt.Errorf("no data for %s", r.opts.StallTimeout)
		}
		r.lastDrop = err
		r.closeBody()
		r.log.Warn("download interrupted", "url", r.name, "at", r.off, "size", r.size, "error", err)
		if n > 0 {
			return n, nil
		}
	}
}

var errReaderClosed = errors.New("read of a closed URLReader")

// failure is why the transfer failed, or nil if it has not (yet).
func (r *URLReader) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == io.EOF || r.err == errReaderClosed {
		return nil
	}
	return r.err
}

// Close ends the transfer. A Read in progress returns.
func (r *URLReader) Close() error {
	r.cancel(errReaderClosed)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeBody()
	if r.err == nil {
		r.err = errReaderClosed
	}
	return nil
}

// readBody reads from the current body with the stall timer running.
func (r *URLReader) readBody(p []byte) (int, error) {
	t := time.AfterFunc(r.opts.StallTimeout, r.onStall(r.stop))
	n, err := r.body.Read(p)
	t.Stop()
	return n, err
}

func (r *URLReader) onStall(stop context.CancelFunc) func() {
	return func() {
		r.stalled.Store(true)
		stop()
	}
}

func (r *URLReader) closeBody() {
	if r.body != nil {
		r.body.Close()
		r.body = nil
	}
	if r.stop != nil {
		r.stop()
		r.stop = nil
	}
}

func (r *URLReader) tooLarge() error {
	return kindErrorf(ErrTooLarge, "%s is too large: over the limit of %d bytes (--max-image-size)", r.name, r.opts.MaxSize)
}

// canResume says why the transfer cannot be resumed, or nil.
func (r *URLReader) canResume() error {
	switch {
	case r.ranges == "none":
		return errors.New("it answers Accept-Ranges: none")
	case r.etag == "" && r.lastMod == "":
		// Without a validator nothing would tell a changed file from the
		// same one, and the image would silently mix the two.
		return errors.New("it gives neither an ETag nor a Last-Modified to check the rest against")
	}
	return nil
}

// open sends the first GET, retrying as resume does, and keeps its body
// and validators.
func (r *URLReader) open() error {
	for {
		resp, err := r.do(nil)
		if err != nil {
			if retry := r.retryable(err); retry != nil {
				if err := r.backoff(retry); err != nil {
					return err
				}
				continue
			}
			return err
		}
		if resp.StatusCode != http.StatusOK {
			r.closeBody()
			return fmt.Errorf("GET %s: unexpected %s to a plain GET", r.name, resp.Status)
		}
		r.size = resp.ContentLength
		if r.opts.MaxSize > 0 && r.size > r.opts.MaxSize {
			r.closeBody()
			return kindErrorf(ErrTooLarge, "%s is too large: %d bytes, over the limit of %d bytes (--max-image-size)", r.name, r.size, r.opts.MaxSize)
		}
		if etag := resp.Header.Get("ETag"); etag != "" && !strings.HasPrefix(etag, "W/") {
			r.etag = etag // a weak ETag cannot go in If-Range
		}
		r.lastMod = resp.Header.Get("Last-Modified")
		r.ranges = strings.ToLower(strings.TrimSpace(resp.Header.Get("Accept-Ranges")))
		r.failures = 0
		return nil
	}
}

// resume asks for the rest of the file from r.off, trying again with
// backoff while requests fail.
func (r *URLReader) resume() error {
	if why := r.canResume(); why != nil {
		return fmt.Errorf("GET %s: connection lost at byte %d%s (%v), and %w: %v", r.name, r.off, r.ofSize(), r.lastDrop, ErrCannotResume, why)
	}
	if r.resumes >= maxResumes {
		return fmt.Errorf("GET %s: connection lost at byte %d%s (%v) after %d resumes; giving up", r.name, r.off, r.ofSize(), r.lastDrop, r.resumes)
	}
	lost := fmt.Errorf("GET %s: connection lost at byte %d%s: %w", r.name, r.off, r.ofSize(), r.lastDrop)
	if err := r.backoff(lost); err != nil {
		return err
	}
	for {
		r.resumes++
		r.log.Info("resuming download", "url", r.name, "at", r.off, "size", r.size, "attempt", r.failures)
		resp, err := r.do(http.Header{
			"Range":    {fmt.Sprintf("bytes=%d-", r.off)},
			"If-Range": {cmpOr(r.etag, r.lastMod)},
		})
		if err == nil {
			err = r.checkResumed(resp)
			if err == nil {
				return nil
			}
			r.closeBody()
		}
		retry := r.retryable(err)
		if retry == nil {
			return err
		}
		if err := r.backoff(retry); err != nil {
			return err
		}
	}
}

func (r *URLReader) ofSize() string {
	if r.size < 0 {
		return ""
	}
	return fmt.Sprintf(" of %d", r.size)
}

// checkResumed checks that the answer to a Range request is the rest of
// the same file, from r.off.
func (r *URLReader) checkResumed(resp *http.Response) error {
	changed := func(why string) error {
		return fmt.Errorf("%s %w (%s)", r.name, ErrRemoteChanged, why)
	}
	etag, lastMod := resp.Header.Get("ETag"), resp.Header.Get("Last-Modified")
	switch resp.StatusCode {
	case http.StatusPartialContent:
	case http.StatusOK:
		// If-Range sent the whole file: it changed, or the server ignores
		// Range (and then its validators are those of the first answer).
		if (r.etag != "" && etag != r.etag) || (r.etag == "" && lastMod != r.lastMod) {
			return changed(fmt.Sprintf("the server sent the whole file again, now %s", validatorDesc(etag, lastMod)))
		}
		return fmt.Errorf("GET %s: connection lost at byte %d%s (%v), and %w: it answered the Range request with the whole file",
			r.name, r.off, r.ofSize(), r.lastDrop, ErrCannotResume)
	case http.StatusRequestedRangeNotSatisfiable:
		return changed(fmt.Sprintf("it has no byte %d any more", r.off))
	case http.StatusPreconditionFailed:
		return changed("412 Precondition Failed")
	default:
		return &HTTPStatusError{URL: r.name, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	if r.etag != "" && etag != "" && etag != r.etag {
		return changed(fmt.Sprintf("ETag %s, was %s", etag, r.etag))
	}
	if r.etag == "" && lastMod != "" && lastMod != r.lastMod {
		return changed(fmt.Sprintf("Last-Modified %s, was %s", lastMod, r.lastMod))
	}
	cr := resp.Header.Get("Content-Range")
	start, end, total, err := parseContentRange(cr)
	switch {
	case err != nil:
		return fmt.Errorf("GET %s: resuming at byte %d: %w", r.name, r.off, err)
	case start != r.off:
		return fmt.Errorf("GET %s: asked for the bytes from %d, the server sent Content-Range %q", r.name, r.off, cr)
	case total >= 0 && r.size >= 0 && total != r.size:
		return changed(fmt.Sprintf("now %d bytes long, was %d", total, r.size))
	case resp.ContentLength >= 0 && resp.ContentLength != end-start+1:
		return fmt.Errorf("GET %s: Content-Range %q does not match Content-Length %d", r.name, cr, resp.ContentLength)
	}
	if r.size < 0 && total >= 0 {
		r.size = total
		if r.opts.MaxSize > 0 && r.size > r.opts.MaxSize {
			return r.tooLarge()
		}
	}
	return nil
}

func validatorDesc(etag, lastMod string) string {
	switch {
	case etag != "":
		return "ETag " + etag
	case lastMod != "":
		return "Last-Modified " + lastMod
	}
	return "without ETag or Last-Modified"
}

// do sends a GET with header added and, on success, makes its body the
// current one. An error answer is an *HTTPStatusError.
func (r *URLReader) do(header http.Header) (*http.Response, error) {
	reqCtx, stop := context.WithCancel(r.ctx)
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, r.url, nil)
	if err != nil {
		stop()
		return nil, fmt.Errorf("GET %s: %w", r.name, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", r.opts.UserAgent)
	// Ranges and lengths are of the file as stored: no transparent gzip.
	req.Header.Set("Accept-Encoding", "identity")
	r.requests++
	r.stalled.Store(false)
	t := time.AfterFunc(r.opts.StallTimeout, r.onStall(stop))
	resp, err := r.client.Do(req)
	t.Stop()
	if err != nil {
		stop()
		if r.stalled.Load() {
			err = fmt.Errorf("no answer for %s", r.opts.StallTimeout)
		} else if ctxErr := r.ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		} else {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err // its message holds the URL unredacted
			}
		}
		err = fmt.Errorf("GET %s: %w", r.name, err)
		if permanent(err) {
			return nil, err
		}
		return nil, &netError{err}
	}
	r.body, r.stop = resp.Body, stop
	if resp.StatusCode >= 300 && resp.StatusCode != http.StatusRequestedRangeNotSatisfiable && resp.StatusCode != http.StatusPreconditionFailed {
		r.closeBody()
		return nil, &HTTPStatusError{URL: r.name, StatusCode: resp.StatusCode, Status: resp.Status}
	}
	return resp, nil
}

// netError is a request that failed without an answer, which may answer
// if tried again.
type netError struct{ err error }

func (e *netError) Error() string { return e.err.Error() }
func (e *netError) Unwrap() error { return e.err }

// permanent reports whether a request that got no answer would get none
// however often it is tried: an unknown host, a certificate that does not
// verify. Waiting through the retries would only delay the message.
func permanent(err error) bool {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	return (errors.As(err, &dnsErr) && dnsErr.IsNotFound) || errors.As(err, &certErr) ||
		errors.As(err, &hostErr) || errors.As(err, &authErr) ||
		strings.Contains(err.Error(), plainHTTPMessage)
}

// retryable returns the error to report if retries run out when err is
// worth retrying (no answer, 5xx, 429, 408), else nil.
func (r *URLReader) retryable(err error) error {
	var ne *netError
	if errors.As(err, &ne) {
		return err
	}
	var se *HTTPStatusError
	if errors.As(err, &se) && (se.StatusCode >= 500 || se.StatusCode == http.StatusTooManyRequests || se.StatusCode == http.StatusRequestTimeout) {
		return err
	}
	return nil
}

// backoff counts a failure and waits before the next try, or returns the
// error once the failures in a row exceed the retries.
func (r *URLReader) backoff(cause error) error {
	r.failures++
	if r.failures > max(r.opts.Retries, 0) {
		if r.failures == 1 {
			return cause
		}
		return fmt.Errorf("%w (after %d tries)", cause, r.failures)
	}
	d := r.opts.Backoff << min(r.failures-1, 20)
	d = min(d, 30*time.Second)
	r.log.Info("retrying download", "url", r.name, "in", d, "error", cause)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-r.ctx.Done():
		if errors.Is(context.Cause(r.ctx), errReaderClosed) {
			return errReaderClosed
		}
		return r.ctx.Err()
	}
}

// parseContentRange parses the Content-Range of a 206 answer, "bytes
// START-END/TOTAL" with TOTAL "*" (returned as -1) when unknown.
func parseContentRange(s string) (start, end, total int64, err error) {
	bad := func() (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("malformed Content-Range %q", s)
	}
	unit, rest, ok := strings.Cut(s, " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return bad()
	}
	rng, tot, ok := strings.Cut(strings.TrimLeft(rest, " "), "/")
	if !ok {
		return bad()
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	if start, ok = parseDigits(a); !ok {
		return bad()
	}
	if end, ok = parseDigits(b); !ok || end < start {
		return bad()
	}
	total = -1
	if tot != "*" {
		if total, ok = parseDigits(tot); !ok || end >= total {
			return bad()
		}
	}
	return start, end, total, nil
}

// parseDigits parses a non-empty run of ASCII digits that fits an int64.
func parseDigits(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n >= 0 && n < math.MaxInt64
}

// IsURL reports whether s is an http:// or https:// URL, which pe reads
// over the network rather than as a file.
func IsURL(s string) bool {
	scheme, _, ok := strings.Cut(s, "://")
	return ok && (strings.EqualFold(scheme, "http") || strings.EqualFold(scheme, "https"))
}

// RedactURL returns s with the password of its user information and the
// values of its query replaced by "xxxxx", to show in messages and logs:
// both may hold credentials (a pre-signed URL's signature). A string that
// does not parse as a URL is returned with everything after its host cut.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		scheme, rest, ok := strings.Cut(s, "://")
		if !ok {
			return "(malformed URL)"
		}
		host, _, _ := strings.Cut(rest, "/")
		if _, h, ok := strings.Cut(host, "@"); ok {
			host = h
		}
		return scheme + "://" + host + "/…"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q[k] = []string{"xxxxx"}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// urlFileName is the last element of the path of a URL ("clang.tar.xz"),
// without its query.
func urlFileName(s string) string {
	if u, err := url.Parse(s); err == nil {
		if b := path.Base(u.Path); b != "/" && b != "." {
			return b
		}
		return u.Host
	}
	return "tarball"
}

package s3

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// S3's multipart limits.
const (
	// MinPartSize is the smallest part but the last.
	MinPartSize = 5 << 20
	// MaxPartSize is the largest part.
	MaxPartSize = 5 << 30
	// MaxParts is the most parts one upload may have.
	MaxParts = 10000
)

// maxMultipartBody bounds the XML answers of Create and Complete.
const maxMultipartBody = 64 << 10

// CompletedPart names one uploaded part for CompleteMultipartUpload.
type CompletedPart struct {
	PartNumber int    `xml:"PartNumber"`
	ETag       string `xml:"ETag"`
}

// readXML reads a bounded XML answer into v. S3 may answer 200 and still
// send an <Error> (CompleteMultipartUpload does, after its keep-alive
// whitespace), so an Error root is reported as an *Error.
func (c *Client) readXML(r request, body io.Reader, v any) error {
	data, err := io.ReadAll(io.LimitReader(body, maxMultipartBody+1))
	if err != nil {
		return fmt.Errorf("s3: %s s3://%s/%s at %s: reading the answer: %w", r.op, r.bucket, r.key, c.Endpoint(), err)
	}
	if len(data) > maxMultipartBody {
		return fmt.Errorf("s3: %s s3://%s/%s at %s: answer larger than %d bytes", r.op, r.bucket, r.key, c.Endpoint(), maxMultipartBody)
	}
	if code, msg, id := parseErrorBody(strings.NewReader(string(data))); code != "" {
		return &Error{Op: r.op, Bucket: r.bucket, Key: r.key, Endpoint: c.Endpoint(), StatusCode: http.StatusOK,
			Code: code, Message: msg, RequestID: id, Anonymous: c.cfg.AccessKeyID == ""}
	}
	if err := xml.Unmarshal(data, v); err != nil {
		return fmt.Errorf("s3: %s s3://%s/%s at %s: bad answer: %w", r.op, r.bucket, r.key, c.Endpoint(), err)
	}
	return nil
}

// CreateMultipartUpload starts a multipart upload of bucket/key and returns
// its upload id.
func (c *Client) CreateMultipartUpload(ctx context.Context, bucket, key string) (uploadID string, err error) {
	if err := checkNames("CreateMultipartUpload", bucket, key, true); err != nil {
		return "", err
	}
	r := request{op: "CreateMultipartUpload", method: http.MethodPost, bucket: bucket, key: key, query: url.Values{"uploads": {""}}}
	resp, err := c.do(ctx, r)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		UploadID string `xml:"UploadId"`
	}
	if err := c.readXML(r, resp.Body, &out); err != nil {
		return "", err
	}
	if out.UploadID == "" || len(out.UploadID) > 1024 {
		return "", fmt.Errorf("s3: CreateMultipartUpload s3://%s/%s at %s: answer holds no usable UploadId", bucket, key, c.Endpoint())
	}
	return out.UploadID, nil
}

// UploadPart sends part number n (1…MaxParts) of an upload and returns its
// ETag. The body is signed with its SHA-256.
func (c *Client) UploadPart(ctx context.Context, bucket, key, uploadID string, n int, body []byte) (etag string, err error) {
	if err := checkNames("UploadPart", bucket, key, true); err != nil {
		return "", err
	}
	if n < 1 || n > MaxParts {
		return "", fmt.Errorf("s3: UploadPart s3://%s/%s: part number %d outside 1…%d", bucket, key, n, MaxParts)
	}
	if body == nil {
		body = []byte{}
	}
	q := url.Values{"partNumber": {strconv.Itoa(n)}, "uploadId": {uploadID}}
	resp, err := c.do(ctx, request{op: "UploadPart", method: http.MethodPut, bucket: bucket, key: key, query: q, body: body})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	etag = clean(resp.Header.Get("ETag"))
	if etag == "" {
		return "", fmt.Errorf("s3: UploadPart %d of s3://%s/%s at %s: no ETag in the answer", n, bucket, key, c.Endpoint())
	}
	return etag, nil
}

// CompleteMultipartUpload joins the parts, in PartNumber order, into the
// object.
func (c *Client) CompleteMultipartUpload(ctx context.Context, bucket, key, uploadID string, parts []CompletedPart) (etag string, err error) {
	if err := checkNames("CompleteMultipartUpload", bucket, key, true); err != nil {
		return "", err
	}
	body, err := xml.Marshal(struct {
		XMLName xml.Name        `xml:"CompleteMultipartUpload"`
		Parts   []CompletedPart `xml:"Part"`
	}{Parts: parts})
	if err != nil {
		return "", fmt.Errorf("s3: CompleteMultipartUpload s3://%s/%s: %w", bucket, key, err)
	}
	r := request{op: "CompleteMultipartUpload", method: http.MethodPost, bucket: bucket, key: key,
		query: url.Values{"uploadId": {uploadID}}, body: body}
	// S3 may answer 200 and then an InternalError body; its documentation
	// says to retry those, which do's retries cannot see.
	for attempt := 1; ; attempt++ {
		etag, err := c.completeOnce(ctx, r)
		if err == nil || attempt >= c.attempts || ctx.Err() != nil || !IsRetriable(err) {
			return etag, err
		}
		select {
		case <-ctx.Done():
			return "", err
		case <-time.After(time.Duration(100<<(attempt-1)) * time.Millisecond):
		}
	}
}

func (c *Client) completeOnce(ctx context.Context, r request) (string, error) {
	resp, err := c.do(ctx, r)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		ETag string `xml:"ETag"`
	}
	if err := c.readXML(r, resp.Body, &out); err != nil {
		return "", err
	}
	return clean(out.ETag), nil
}

// AbortMultipartUpload drops an upload and the parts sent so far.
func (c *Client) AbortMultipartUpload(ctx context.Context, bucket, key, uploadID string) error {
	if err := checkNames("AbortMultipartUpload", bucket, key, true); err != nil {
		return err
	}
	resp, err := c.do(ctx, request{op: "AbortMultipartUpload", method: http.MethodDelete, bucket: bucket, key: key,
		query: url.Values{"uploadId": {uploadID}}})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// UploadOptions tune Upload.
type UploadOptions struct {
	// PartSize is the size of each part but the last; 0 means 16 MiB.
	// Memory use is about PartSize × (Concurrency + 1).
	PartSize int64
	// Concurrency bounds the parts in flight; 0 means 4.
	Concurrency int
	// ContentType of the object.
	ContentType string
	// Progress, if set, is called with the bytes of each part once the
	// server has it (from several goroutines, never at once).
	Progress func(n int64)
}

// Upload stores everything r yields as bucket/key: one PutObject when it
// fits in one part, else a multipart upload with parts sent in parallel
// (bounded by Concurrency). On any failure the multipart upload is aborted,
// so no parts linger in the bucket.
func (c *Client) Upload(ctx context.Context, bucket, key string, r io.Reader, opts UploadOptions) (etag string, err error) {
	if opts.PartSize == 0 {
		opts.PartSize = 16 << 20
	}
	if opts.PartSize < MinPartSize || opts.PartSize > MaxPartSize {
		return "", fmt.Errorf("s3: Upload s3://%s/%s: part size %d outside %d…%d", bucket, key, opts.PartSize, MinPartSize, MaxPartSize)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	first := make([]byte, opts.PartSize)
	n, err := readFull(r, first)
	if err != nil {
		return "", fmt.Errorf("s3: Upload s3://%s/%s: reading part 1: %w", bucket, key, err)
	}
	if int64(n) < opts.PartSize {
		etag, err := c.PutObject(ctx, bucket, key, first[:n], PutOptions{ContentType: opts.ContentType})
		if err == nil && opts.Progress != nil {
			opts.Progress(int64(n))
		}
		return etag, err
	}

	id, err := c.CreateMultipartUpload(ctx, bucket, key)
	if err != nil {
		return "", err
	}
	etag, err = c.uploadPartsWith(ctx, bucket, key, id, first, r, opts, nil, nil)
	if err != nil {
		// Abort with a fresh context: ours may be what ended.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if aerr := c.AbortMultipartUpload(actx, bucket, key, id); aerr != nil && !errors.Is(aerr, ErrNotFound) {
			err = fmt.Errorf("%w (and aborting the upload failed: %v)", err, aerr)
		}
		return "", err
	}
	return etag, nil
}

// uploadPartsWith reads parts from r (the first already read) and sends
// them with at most opts.Concurrency in flight, then completes the upload.
// A part for which reuse (if not nil) returns an ETag is not sent: the
// server has it already. counted (if not nil) hears of each part done,
// reused or sent; it and opts.Progress are never called at once.
func (c *Client) uploadPartsWith(ctx context.Context, bucket, key, id string, first []byte, r io.Reader, opts UploadOptions,
	reuse func(n int, data []byte) (string, bool), counted func(n int, data []byte, reused bool)) (string, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		parts []CompletedPart
		slots = make(chan struct{}, opts.Concurrency)
	)
	done := func(n int, data []byte, etag string, reused bool) {
		mu.Lock()
		defer mu.Unlock()
		parts = append(parts, CompletedPart{PartNumber: n, ETag: etag})
		if counted != nil {
			counted(n, data, reused)
		}
		if opts.Progress != nil {
			opts.Progress(int64(len(data)))
		}
	}
	send := func(n int, data []byte) {
		defer wg.Done()
		defer func() { <-slots }()
		if reuse != nil {
			if etag, ok := reuse(n, data); ok {
				done(n, data, etag, true)
				return
			}
		}
		etag, err := c.UploadPart(ctx, bucket, key, id, n, data)
		if err != nil {
			cancel(err)
			return
		}
		done(n, data, etag, false)
	}
	buf := first
	var readErr error
	for n := 1; ; n++ {
		if n > MaxParts {
			readErr = fmt.Errorf("s3: Upload s3://%s/%s: more than %d parts of %d bytes", bucket, key, MaxParts, opts.PartSize)
			break
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go send(n, buf)
		if int64(len(buf)) < opts.PartSize {
			break // that was the last part
		}
		next := make([]byte, opts.PartSize)
		m, err := readFull(r, next)
		if err != nil {
			readErr = fmt.Errorf("s3: Upload s3://%s/%s: reading part %d: %w", bucket, key, n+1, err)
			break
		}
		if m == 0 {
			break
		}
		buf = next[:m]
	}
	if readErr != nil {
		cancel(readErr)
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return "", err
	}
	slices.SortFunc(parts, func(a, b CompletedPart) int { return a.PartNumber - b.PartNumber })
	return c.CompleteMultipartUpload(ctx, bucket, key, id, parts)
}

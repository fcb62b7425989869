package s3

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ObjectInfo is what HEAD (or a listing) tells about an object.
type ObjectInfo struct {
	Key          string
	Size         int64
	ETag         string
	LastModified time.Time
	ContentType  string
}

// infoFromHeader reads an object's metadata from response headers.
func infoFromHeader(key string, h http.Header, size int64) ObjectInfo {
	info := ObjectInfo{Key: key, Size: size, ETag: clean(h.Get("ETag")), ContentType: clean(h.Get("Content-Type"))}
	if t, err := http.ParseTime(h.Get("Last-Modified")); err == nil {
		info.LastModified = t
	}
	return info
}

// HeadObject returns the size and metadata of bucket/key; ErrNotFound when
// it does not exist.
func (c *Client) HeadObject(ctx context.Context, bucket, key string) (ObjectInfo, error) {
	if err := checkNames("HeadObject", bucket, key, true); err != nil {
		return ObjectInfo{}, err
	}
	resp, err := c.do(ctx, request{op: "HeadObject", method: http.MethodHead, bucket: bucket, key: key})
	if err != nil {
		return ObjectInfo{}, err
	}
	resp.Body.Close()
	if resp.ContentLength < 0 {
		return ObjectInfo{}, fmt.Errorf("s3: HeadObject s3://%s/%s at %s: no Content-Length in the answer", bucket, key, c.Endpoint())
	}
	return infoFromHeader(key, resp.Header, resp.ContentLength), nil
}

// GetObject returns a reader over the whole of bucket/key and its metadata.
// The caller closes the reader; ctx bounds the whole read, body included.
func (c *Client) GetObject(ctx context.Context, bucket, key string) (io.ReadCloser, ObjectInfo, error) {
	if err := checkNames("GetObject", bucket, key, true); err != nil {
		return nil, ObjectInfo{}, err
	}
	resp, err := c.do(ctx, request{op: "GetObject", method: http.MethodGet, bucket: bucket, key: key})
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	return resp.Body, infoFromHeader(key, resp.Header, resp.ContentLength), nil
}

// ReadAll returns the whole of bucket/key, refusing objects bigger than
// limit bytes (indexes and tags are small; a huge one is a mistake or an
// attack, not something to hold in memory).
func (c *Client) ReadAll(ctx context.Context, bucket, key string, limit int64) ([]byte, error) {
	body, info, err := c.GetObject(ctx, bucket, key)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	if info.Size > limit {
		return nil, fmt.Errorf("s3: s3://%s/%s is %d bytes, more than the %d expected", bucket, key, info.Size, limit)
	}
	data, err := io.ReadAll(io.LimitReader(body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("s3: reading s3://%s/%s from %s: %w", bucket, key, c.Endpoint(), err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("s3: s3://%s/%s is more than the %d bytes expected", bucket, key, limit)
	}
	return data, nil
}

// ReadRange returns a reader over length bytes of bucket/key from offset
// off, with a ranged GET. Near the object's end the reader holds fewer
// bytes (as many as exist); a range starting at or past the end fails with
// ErrInvalidRange. ctx bounds the whole read: a per-request timeout is a
// context.WithTimeout around this call and the reading. The caller closes
// the reader.
func (c *Client) ReadRange(ctx context.Context, bucket, key string, off, length int64) (io.ReadCloser, error) {
	if err := checkNames("ReadRange", bucket, key, true); err != nil {
		return nil, err
	}
	if off < 0 || length <= 0 || off > (1<<62)-length {
		return nil, fmt.Errorf("s3: ReadRange s3://%s/%s: bad range offset %d length %d", bucket, key, off, length)
	}
	last := off + length - 1
	resp, err := c.do(ctx, request{
		op: "ReadRange", method: http.MethodGet, bucket: bucket, key: key,
		header: http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", off, last)}},
	})
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		start, end, _, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil || start != off || end > last {
			resp.Body.Close()
			return nil, fmt.Errorf("s3: ReadRange s3://%s/%s at %s: asked for bytes %d-%d, got Content-Range %q",
				bucket, key, c.Endpoint(), off, last, clean(resp.Header.Get("Content-Range")))
		}
		// Never more than the range announced, whatever Content-Length said.
		return struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, end-start+1), resp.Body}, nil
	case http.StatusOK:
		// The server ignored Range and sends the whole object. From offset 0
		// that still holds our bytes; elsewhere, skipping up to them could
		// mean downloading gigabytes for one chunk, so refuse.
		if off == 0 {
			return struct {
				io.Reader
				io.Closer
			}{io.LimitReader(resp.Body, length), resp.Body}, nil
		}
		resp.Body.Close()
		return nil, fmt.Errorf("s3: ReadRange s3://%s/%s at %s: the server ignored the Range header (HTTP 200 for bytes %d-%d)",
			bucket, key, c.Endpoint(), off, last)
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("s3: ReadRange s3://%s/%s at %s: unexpected HTTP %d", bucket, key, c.Endpoint(), resp.StatusCode)
	}
}

// parseContentRange parses "bytes START-END/SIZE" (SIZE may be *).
func parseContentRange(v string) (start, end, size int64, err error) {
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("content-range %q: no bytes unit", v)
	}
	rng, total, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, fmt.Errorf("content-range %q: no size", v)
	}
	s, e, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, fmt.Errorf("content-range %q: no range", v)
	}
	if start, err = strconv.ParseInt(s, 10, 64); err != nil || start < 0 {
		return 0, 0, 0, fmt.Errorf("content-range %q: bad start", v)
	}
	if end, err = strconv.ParseInt(e, 10, 64); err != nil || end < start {
		return 0, 0, 0, fmt.Errorf("content-range %q: bad end", v)
	}
	size = -1
	if total != "*" {
		if size, err = strconv.ParseInt(total, 10, 64); err != nil || size <= end {
			return 0, 0, 0, fmt.Errorf("content-range %q: bad size", v)
		}
	}
	return start, end, size, nil
}

// PutOptions are optional settings of PutObject.
type PutOptions struct {
	ContentType string
	// IfNoneMatch, when true, makes the write conditional: it fails with
	// ErrExists (HTTP 412) if the key already exists, so two writers cannot
	// both think they created it. Servers without conditional writes ignore
	// it.
	IfNoneMatch bool
}

// PutObject stores body as bucket/key, signed with the body's SHA-256 so
// the server rejects a corrupted upload. For small objects (indexes, tags);
// big ones go through Upload.
func (c *Client) PutObject(ctx context.Context, bucket, key string, body []byte, opts PutOptions) (etag string, err error) {
	if err := checkNames("PutObject", bucket, key, true); err != nil {
		return "", err
	}
	h := http.Header{}
	if opts.ContentType != "" {
		h.Set("Content-Type", opts.ContentType)
	}
	if opts.IfNoneMatch {
		h.Set("If-None-Match", "*")
	}
	if body == nil {
		body = []byte{}
	}
	resp, err := c.do(ctx, request{op: "PutObject", method: http.MethodPut, bucket: bucket, key: key, header: h, body: body})
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	return clean(resp.Header.Get("ETag")), nil
}

// DeleteObject removes bucket/key; deleting a missing key succeeds, as in S3.
func (c *Client) DeleteObject(ctx context.Context, bucket, key string) error {
	if err := checkNames("DeleteObject", bucket, key, true); err != nil {
		return err
	}
	resp, err := c.do(ctx, request{op: "DeleteObject", method: http.MethodDelete, bucket: bucket, key: key})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// CreateBucket creates bucket in the client's region. An existing bucket of
// ours is not an error.
func (c *Client) CreateBucket(ctx context.Context, bucket string) error {
	if err := checkNames("CreateBucket", bucket, "", false); err != nil {
		return err
	}
	var body []byte
	if c.cfg.Region != DefaultRegion {
		body = fmt.Appendf(nil, `<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><LocationConstraint>%s</LocationConstraint></CreateBucketConfiguration>`, xmlEscape(c.cfg.Region))
	}
	resp, err := c.do(ctx, request{op: "CreateBucket", method: http.MethodPut, bucket: bucket, body: body})
	if e := (*Error)(nil); errors.As(err, &e) && e.Code == "BucketAlreadyOwnedByYou" {
		return nil
	}
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

// maxListBody bounds one ListObjectsV2 page (1,000 keys of up to 1 KiB each
// plus their metadata fit well within it).
const maxListBody = 8 << 20

// listResult is one ListObjectsV2 page.
type listResult struct {
	IsTruncated           bool   `xml:"IsTruncated"`
	NextContinuationToken string `xml:"NextContinuationToken"`
	Contents              []struct {
		Key          string `xml:"Key"`
		Size         int64  `xml:"Size"`
		ETag         string `xml:"ETag"`
		LastModified string `xml:"LastModified"`
	} `xml:"Contents"`
}

// parseListPage decodes one ListObjectsV2 answer, read with a size bound.
func parseListPage(r io.Reader) (listResult, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxListBody+1))
	if err != nil {
		return listResult{}, err
	}
	if len(data) > maxListBody {
		return listResult{}, fmt.Errorf("listing page larger than %d bytes", maxListBody)
	}
	var page listResult
	if err := xml.Unmarshal(data, &page); err != nil {
		return listResult{}, fmt.Errorf("listing: %w", err)
	}
	if page.IsTruncated && page.NextContinuationToken == "" {
		return listResult{}, fmt.Errorf("listing: truncated page without a continuation token")
	}
	for _, o := range page.Contents {
		if o.Key == "" || o.Size < 0 {
			return listResult{}, fmt.Errorf("listing: entry with key %q and size %d", clean(o.Key), o.Size)
		}
	}
	return page, nil
}

// ListObjects yields every object of bucket whose key starts with prefix,
// in key order, page by page (ListObjectsV2). Stop ranging to stop early.
func (c *Client) ListObjects(ctx context.Context, bucket, prefix string) iter.Seq2[ObjectInfo, error] {
	return func(yield func(ObjectInfo, error) bool) {
		if err := checkNames("ListObjects", bucket, "", false); err != nil {
			yield(ObjectInfo{}, err)
			return
		}
		token := ""
		for {
			q := url.Values{"list-type": {"2"}, "prefix": {prefix}}
			if c.listPageSize > 0 {
				q.Set("max-keys", strconv.Itoa(c.listPageSize))
			}
			if token != "" {
				q.Set("continuation-token", token)
			}
			resp, err := c.do(ctx, request{op: "ListObjects", method: http.MethodGet, bucket: bucket, query: q})
			if err != nil {
				yield(ObjectInfo{}, err)
				return
			}
			page, err := parseListPage(resp.Body)
			resp.Body.Close()
			if err != nil {
				yield(ObjectInfo{}, fmt.Errorf("s3: ListObjects s3://%s/%s at %s: %w", bucket, prefix, c.Endpoint(), err))
				return
			}
			for _, o := range page.Contents {
				info := ObjectInfo{Key: o.Key, Size: o.Size, ETag: clean(o.ETag)}
				info.LastModified, _ = time.Parse(time.RFC3339, o.LastModified)
				if !yield(info, nil) {
					return
				}
			}
			if !page.IsTruncated {
				return
			}
			if page.NextContinuationToken == token {
				yield(ObjectInfo{}, fmt.Errorf("s3: ListObjects s3://%s/%s at %s: the server repeated continuation token %q", bucket, prefix, c.Endpoint(), clean(token)))
				return
			}
			token = page.NextContinuationToken
		}
	}
}

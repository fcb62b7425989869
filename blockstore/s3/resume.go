package s3

import (
	"context"
	"crypto/md5"
	"encoding/hex"
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

// maxListPartsBody bounds one ListParts or ListMultipartUploads page: 1,000
// entries of a few hundred bytes each fit well within it.
const maxListPartsBody = 4 << 20

// MultipartUpload is an unfinished multipart upload, as
// ListMultipartUploads reports it.
type MultipartUpload struct {
	Key       string
	UploadID  string
	Initiated time.Time
}

// Part is an uploaded part of an unfinished multipart upload, as ListParts
// reports it.
type Part struct {
	PartNumber int
	// ETag is the part's entity tag without quotes: the hex MD5 of its
	// bytes on AWS S3 and most compatible servers (not under SSE-KMS or
	// SSE-C).
	ETag string
	Size int64
}

// uploadsPage is one ListMultipartUploads answer.
type uploadsPage struct {
	IsTruncated        bool   `xml:"IsTruncated"`
	NextKeyMarker      string `xml:"NextKeyMarker"`
	NextUploadIDMarker string `xml:"NextUploadIdMarker"`
	Uploads            []struct {
		Key       string `xml:"Key"`
		UploadID  string `xml:"UploadId"`
		Initiated string `xml:"Initiated"`
	} `xml:"Upload"`
}

// readBounded reads all of r, refusing more than limit bytes.
func readBounded(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("answer larger than %d bytes", limit)
	}
	return data, nil
}

// parseUploadsPage decodes one ListMultipartUploads answer, read with a
// size bound, and checks what the caller relies on.
func parseUploadsPage(r io.Reader) (uploadsPage, error) {
	data, err := readBounded(r, maxListPartsBody)
	if err != nil {
		return uploadsPage{}, err
	}
	var page uploadsPage
	if err := xml.Unmarshal(data, &page); err != nil {
		return uploadsPage{}, fmt.Errorf("uploads listing: %w", err)
	}
	if page.IsTruncated && page.NextKeyMarker == "" {
		return uploadsPage{}, errors.New("uploads listing: truncated page without a next key marker")
	}
	for _, u := range page.Uploads {
		if u.Key == "" || u.UploadID == "" || len(u.UploadID) > 1024 {
			return uploadsPage{}, fmt.Errorf("uploads listing: entry with key %q and upload id %q", clean(u.Key), clean(u.UploadID))
		}
	}
	return page, nil
}

// partsPage is one ListParts answer.
type partsPage struct {
	IsTruncated          bool `xml:"IsTruncated"`
	NextPartNumberMarker int  `xml:"NextPartNumberMarker"`
	Parts                []struct {
		PartNumber int    `xml:"PartNumber"`
		ETag       string `xml:"ETag"`
		Size       int64  `xml:"Size"`
	} `xml:"Part"`
}

// parsePartsPage decodes one ListParts answer, read with a size bound; a
// page continuing after marker must move past it, so a listing always ends.
func parsePartsPage(r io.Reader, marker int) (partsPage, error) {
	data, err := readBounded(r, maxListPartsBody)
	if err != nil {
		return partsPage{}, err
	}
	var page partsPage
	if err := xml.Unmarshal(data, &page); err != nil {
		return partsPage{}, fmt.Errorf("parts listing: %w", err)
	}
	if page.IsTruncated && (page.NextPartNumberMarker <= marker || page.NextPartNumberMarker >= MaxParts) {
		return partsPage{}, fmt.Errorf("parts listing: truncated page after part %d with next marker %d", marker, page.NextPartNumberMarker)
	}
	for _, p := range page.Parts {
		if p.PartNumber < 1 || p.PartNumber > MaxParts || p.Size < 0 || p.Size > MaxPartSize {
			return partsPage{}, fmt.Errorf("parts listing: part %d of %d bytes", p.PartNumber, p.Size)
		}
	}
	return page, nil
}

// ListMultipartUploads yields the unfinished multipart uploads of bucket
// whose key starts with prefix, page by page. Stop ranging to stop early.
func (c *Client) ListMultipartUploads(ctx context.Context, bucket, prefix string) iter.Seq2[MultipartUpload, error] {
	return func(yield func(MultipartUpload, error) bool) {
		if err := checkNames("ListMultipartUploads", bucket, "", false); err != nil {
			yield(MultipartUpload{}, err)
			return
		}
		keyMarker, idMarker := "", ""
		for {
			q := url.Values{"uploads": {""}, "prefix": {prefix}}
			if c.listPageSize > 0 {
				q.Set("max-uploads", strconv.Itoa(c.listPageSize))
			}
			if keyMarker != "" {
				q.Set("key-marker", keyMarker)
				if idMarker != "" {
					q.Set("upload-id-marker", idMarker)
				}
			}
			resp, err := c.do(ctx, request{op: "ListMultipartUploads", method: http.MethodGet, bucket: bucket, query: q})
			if err != nil {
				yield(MultipartUpload{}, err)
				return
			}
			page, err := parseUploadsPage(resp.Body)
			resp.Body.Close()
			if err != nil {
				yield(MultipartUpload{}, fmt.Errorf("s3: ListMultipartUploads s3://%s/%s at %s: %w", bucket, prefix, c.Endpoint(), err))
				return
			}
			for _, u := range page.Uploads {
				m := MultipartUpload{Key: u.Key, UploadID: u.UploadID}
				m.Initiated, _ = time.Parse(time.RFC3339, u.Initiated)
				if !yield(m, nil) {
					return
				}
			}
			if !page.IsTruncated {
				return
			}
			if page.NextKeyMarker == keyMarker && page.NextUploadIDMarker == idMarker {
				yield(MultipartUpload{}, fmt.Errorf("s3: ListMultipartUploads s3://%s/%s at %s: the server repeated the markers %q, %q",
					bucket, prefix, c.Endpoint(), clean(keyMarker), clean(idMarker)))
				return
			}
			keyMarker, idMarker = page.NextKeyMarker, page.NextUploadIDMarker
		}
	}
}

// ListParts yields the parts uploaded so far of an unfinished multipart
// upload, in part number order, page by page. ErrNotFound (NoSuchUpload)
// means the upload was completed or aborted.
func (c *Client) ListParts(ctx context.Context, bucket, key, uploadID string) iter.Seq2[Part, error] {
	return func(yield func(Part, error) bool) {
		if err := checkNames("ListParts", bucket, key, true); err != nil {
			yield(Part{}, err)
			return
		}
		marker := 0
		for {
			q := url.Values{"uploadId": {uploadID}}
			if c.listPageSize > 0 {
				q.Set("max-parts", strconv.Itoa(c.listPageSize))
			}
			if marker > 0 {
				q.Set("part-number-marker", strconv.Itoa(marker))
			}
			r := request{op: "ListParts", method: http.MethodGet, bucket: bucket, key: key, query: q}
			resp, err := c.do(ctx, r)
			if err != nil {
				yield(Part{}, err)
				return
			}
			page, err := parsePartsPage(resp.Body, marker)
			resp.Body.Close()
			if err != nil {
				yield(Part{}, fmt.Errorf("s3: ListParts s3://%s/%s at %s: %w", bucket, key, c.Endpoint(), err))
				return
			}
			for _, p := range page.Parts {
				if !yield(Part{PartNumber: p.PartNumber, ETag: strings.Trim(clean(p.ETag), `"`), Size: p.Size}, nil) {
					return
				}
			}
			if !page.IsTruncated {
				return
			}
			marker = page.NextPartNumberMarker
		}
	}
}

// UploadResult tells what UploadResumable did.
type UploadResult struct {
	// ETag is the stored object's entity tag.
	ETag string
	// UploadID is the multipart upload used; empty when the object went
	// in one PutObject.
	UploadID string
	// Resumed is true when an upload left unfinished earlier was
	// continued.
	Resumed bool
	// PartsReused and BytesReused count the parts of that earlier upload
	// that matched the local bytes and were not sent again.
	PartsReused int
	BytesReused int64
	// PartsSent and BytesSent count what this call sent.
	PartsSent int
	BytesSent int64
	// ResumeError, when not nil, is why no unfinished upload could be
	// looked for (the server lacks ListMultipartUploads, the credentials
	// may not list uploads, …): the upload started afresh.
	ResumeError error
	// Aborted counts the other unfinished uploads of the key aborted
	// after this one completed (see AbortUploads).
	Aborted int
}

// maxResumeCandidates bounds how many unfinished uploads of one key are
// examined with ListParts.
const maxResumeCandidates = 8

// resumeCandidate is an unfinished upload of the key and its parts.
type resumeCandidate struct {
	MultipartUpload
	parts map[int]Part
	bytes int64
}

// findUpload returns the unfinished upload of bucket/key with the most
// bytes uploaded, nil if there is none.
func (c *Client) findUpload(ctx context.Context, bucket, key string) (*resumeCandidate, error) {
	var all []MultipartUpload
	for u, err := range c.ListMultipartUploads(ctx, bucket, key) {
		if err != nil {
			return nil, err
		}
		if u.Key == key {
			all = append(all, u)
		}
	}
	var best *resumeCandidate
	for i, u := range all {
		if i >= maxResumeCandidates {
			break
		}
		cand := &resumeCandidate{MultipartUpload: u, parts: map[int]Part{}}
		var listErr error
		for p, err := range c.ListParts(ctx, bucket, key, u.UploadID) {
			if err != nil {
				listErr = err
				break
			}
			cand.parts[p.PartNumber] = p
			cand.bytes += p.Size
		}
		if errors.Is(listErr, ErrNotFound) && ctx.Err() == nil {
			continue // completed or aborted since the listing
		}
		if listErr != nil {
			return nil, listErr
		}
		if best == nil || cand.bytes > best.bytes || (cand.bytes == best.bytes && cand.Initiated.After(best.Initiated)) {
			best = cand
		}
	}
	return best, nil
}

// resumePartSize is the part size an earlier upload used: its largest
// part, when that is a size S3 allows for a part but the last. Zero when
// the parts do not tell.
func resumePartSize(parts map[int]Part) int64 {
	var size int64
	for _, p := range parts {
		size = max(size, p.Size)
	}
	if size < MinPartSize || size > MaxPartSize {
		return 0
	}
	return size
}

// UploadResumable stores everything r yields as bucket/key, as Upload does,
// but continues an upload of the same key left unfinished earlier (by an
// interrupted call, or by another process now) instead of starting over:
// it lists the key's unfinished multipart uploads, takes the one with the
// most bytes, and sends only the parts that upload lacks or whose ETag is
// not the MD5 of the local bytes. A failure leaves the upload in place for
// the next call to continue (a bucket lifecycle rule
// AbortIncompleteMultipartUpload removes uploads nobody finishes).
//
// It is meant for content-addressed keys, whose bytes the key determines:
// once the object is complete it aborts the key's other unfinished
// uploads (AbortUploads), which could only ever have produced the same
// object. A server without ListMultipartUploads or ListParts gets a fresh
// upload (see UploadResult.ResumeError). On a failure after the multipart
// upload began, the result is returned too: its UploadID names the upload
// left in place.
func (c *Client) UploadResumable(ctx context.Context, bucket, key string, r io.Reader, opts UploadOptions) (*UploadResult, error) {
	if err := checkNames("Upload", bucket, key, true); err != nil {
		return nil, err
	}
	if opts.PartSize == 0 {
		opts.PartSize = 16 << 20
	}
	if opts.PartSize < MinPartSize || opts.PartSize > MaxPartSize {
		return nil, fmt.Errorf("s3: Upload s3://%s/%s: part size %d outside %d…%d", bucket, key, opts.PartSize, MinPartSize, MaxPartSize)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	res := &UploadResult{}
	cand, err := c.findUpload(ctx, bucket, key)
	if err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		res.ResumeError = err
	}
	if cand != nil {
		if size := resumePartSize(cand.parts); size != 0 {
			opts.PartSize = size
		}
	}

	first := make([]byte, opts.PartSize)
	n, err := readFull(r, first)
	if err != nil {
		return nil, fmt.Errorf("s3: Upload s3://%s/%s: reading part 1: %w", bucket, key, err)
	}
	if int64(n) < opts.PartSize {
		etag, err := c.PutObject(ctx, bucket, key, first[:n], PutOptions{ContentType: opts.ContentType})
		if err != nil {
			return nil, err
		}
		if opts.Progress != nil {
			opts.Progress(int64(n))
		}
		res.ETag, res.PartsSent, res.BytesSent = etag, 1, int64(n)
		res.Aborted, _ = c.AbortUploads(ctx, bucket, key)
		return res, nil
	}

	var have map[int]Part
	if cand != nil {
		res.UploadID, res.Resumed, have = cand.UploadID, true, cand.parts
	} else {
		if res.UploadID, err = c.CreateMultipartUpload(ctx, bucket, key); err != nil {
			return nil, err
		}
	}
	res.ETag, err = c.sendParts(ctx, bucket, key, res.UploadID, first, r, opts, have, res)
	if err != nil {
		return res, err
	}
	res.Aborted, _ = c.AbortUploads(ctx, bucket, key)
	return res, nil
}

// AbortUploads aborts every unfinished multipart upload of bucket/key and
// returns how many it aborted. For content-addressed keys once the object
// is complete: another writer still sending parts to one of them then
// fails with ErrNotFound and finds the object there.
func (c *Client) AbortUploads(ctx context.Context, bucket, key string) (int, error) {
	var ids []string
	for u, err := range c.ListMultipartUploads(ctx, bucket, key) {
		if err != nil {
			return 0, err
		}
		if u.Key == key {
			ids = append(ids, u.UploadID)
		}
	}
	n := 0
	var errs []error
	for _, id := range ids {
		err := c.AbortMultipartUpload(ctx, bucket, key, id)
		switch {
		case err == nil:
			n++
		case !errors.Is(err, ErrNotFound):
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// sendParts is uploadParts for UploadResumable: a part that have holds with
// the same size and the MD5 of the local bytes as its ETag is not sent
// again, and a failure does not abort the upload.
func (c *Client) sendParts(ctx context.Context, bucket, key, id string, first []byte, r io.Reader, opts UploadOptions, have map[int]Part, res *UploadResult) (string, error) {
	reuse := func(n int, data []byte) (string, bool) {
		p, ok := have[n]
		if !ok || p.Size != int64(len(data)) {
			return "", false
		}
		sum := md5.Sum(data)
		if !strings.EqualFold(p.ETag, hex.EncodeToString(sum[:])) {
			return "", false
		}
		return p.ETag, true
	}
	counted := func(n int, data []byte, reused bool) {
		if reused {
			res.PartsReused++
			res.BytesReused += int64(len(data))
		} else {
			res.PartsSent++
			res.BytesSent += int64(len(data))
		}
	}
	return c.uploadPartsWith(ctx, bucket, key, id, first, r, opts, reuse, counted)
}

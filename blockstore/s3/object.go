package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
)

// Object is one object of a bucket, read by ranges: what the chunk store
// fetches an image's chunks from. Its Fetch method has the shape of
// blockstore.Fetcher, so an *Object is one.
type Object struct {
	c      *Client
	Bucket string
	Key    string
}

// Object returns a handle on bucket/key; nothing is sent until it is read.
func (c *Client) Object(bucket, key string) *Object {
	return &Object{c: c, Bucket: bucket, Key: key}
}

// Fetch returns exactly length bytes of the object from offset off, with one
// ranged GET (plus the client's retries: a caller that retries on its own
// wants Options.MaxAttempts = 1). Fewer bytes than asked (the object is
// shorter than the caller thinks) is an error wrapping io.ErrUnexpectedEOF;
// ctx bounds the whole request. IsPermanent tells which errors retrying
// cannot fix.
func (o *Object) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	r, err := o.FetchStream(ctx, off, length)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	buf := make([]byte, length)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// FetchStream is Fetch that returns the range as it arrives: the reader
// yields its bytes, and an error wrapping io.ErrUnexpectedEOF (naming the
// object) if the response ends before length bytes. ctx bounds the whole
// read; the caller closes the reader.
func (o *Object) FetchStream(ctx context.Context, off, length int64) (io.ReadCloser, error) {
	r, err := o.c.ReadRange(ctx, o.Bucket, o.Key, off, length)
	if err != nil {
		return nil, err
	}
	return &exactReader{r: r, o: o, off: off, length: length}, nil
}

// exactReader is a ranged GET's body that must be exactly length bytes.
type exactReader struct {
	r           io.ReadCloser
	o           *Object
	off, length int64
	n           int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n += int64(n)
	if err == io.EOF && e.n < e.length {
		err = io.ErrUnexpectedEOF
	}
	if err != nil && err != io.EOF {
		err = fmt.Errorf("s3: reading bytes %d-%d of s3://%s/%s from %s: got %d: %w",
			e.off, e.off+e.length-1, e.o.Bucket, e.o.Key, e.o.c.Endpoint(), e.n, err)
	}
	return n, err
}

func (e *exactReader) Close() error { return e.r.Close() }

// IsPermanent reports whether err is an S3 answer that retrying the same
// request cannot change: the object or bucket is missing, access is
// denied, the range is past the end, or any other 4xx but a timeout or
// throttling. Transport errors and 5xx are not permanent.
func IsPermanent(err error) bool {
	var e *Error
	if !errors.As(err, &e) || e.Retriable() {
		return false
	}
	return e.StatusCode >= 400 && e.StatusCode < 500 && e.StatusCode != http.StatusRequestTimeout
}

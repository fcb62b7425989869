package blockstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// Fetcher reads byte ranges of one image's object in remote storage (an S3
// ranged GET, for blockstore/s3). Fetch returns exactly length bytes
// starting at off, or an error; the store calls it concurrently, with a
// context carrying the per-request timeout, and retries failed calls unless
// the error is wrapped by Permanent.
type Fetcher interface {
	Fetch(ctx context.Context, off, length int64) ([]byte, error)
}

// StreamFetcher is a Fetcher that can also hand over a range as its bytes
// arrive. The store reads a prefetch of several neighbouring chunks that
// way, so that each is served as soon as its own bytes are in rather than
// with the last: on a slow link a chunk read early in a long range would
// otherwise wait for all the others. FetchStream's reader yields at most
// length bytes from off; fewer is an error the reader reports. ctx bounds
// the whole read; the caller closes the reader.
type StreamFetcher interface {
	Fetcher
	FetchStream(ctx context.Context, off, length int64) (io.ReadCloser, error)
}

// PermanentError marks a fetch error that retrying cannot fix (access
// denied, object missing): the store gives up at once instead of retrying.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so the store does not retry it. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

func isPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// FileFetcher is a Fetcher over a local file: tests, benchmarks, and a
// store in front of an image on a slow or network file system.
type FileFetcher struct {
	// R is the file (or any io.ReaderAt) holding the image.
	R io.ReaderAt
}

// Fetch reads length bytes at off.
func (f FileFetcher) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	buf := make([]byte, length)
	n, err := f.R.ReadAt(buf, off)
	if n == len(buf) {
		return buf, nil
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if errors.Is(err, os.ErrNotExist) {
		err = Permanent(err)
	}
	return nil, fmt.Errorf("reading %d bytes at %d: %w", length, off, err)
}

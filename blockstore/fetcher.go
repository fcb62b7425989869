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

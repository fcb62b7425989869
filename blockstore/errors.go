package blockstore

import (
	"errors"
	"fmt"
)

// DigestError reports a chunk whose fetched bytes did not match the sha256
// the index gives for it, again after one refetch. Its bytes were not
// served.
type DigestError struct {
	Image  string // the image's digest
	Chunk  int    // the chunk's number in the index
	Offset int64  // the chunk's first byte in the image
	Length int64
	Want   string // the index's sha256 of the chunk
	Got    string // the sha256 of the bytes last fetched, or "does not decode (...)" (packed chunks)
}

func (e *DigestError) Error() string {
	got := "has sha256 " + e.Got
	if !isHexDigest(e.Got) {
		got = e.Got // why a packed chunk did not decode
	}
	return fmt.Sprintf("image %s chunk %d (bytes %d-%d): fetched data %s, the index says sha256 %s (fetched twice; storage holds a different or corrupt object)",
		e.Image, e.Chunk, e.Offset, e.Offset+e.Length-1, got, e.Want)
}

// FetchError reports a chunk that could not be fetched: every attempt
// failed, timed out, or the error was permanent. Err is the last attempt's
// error (context.DeadlineExceeded for a request that timed out).
type FetchError struct {
	Image    string
	Chunk    int
	Offset   int64
	Length   int64
	Attempts int
	Err      error
}

func (e *FetchError) Error() string {
	return fmt.Sprintf("image %s chunk %d (bytes %d-%d): fetch failed after %d attempt(s): %v",
		e.Image, e.Chunk, e.Offset, e.Offset+e.Length-1, e.Attempts, e.Err)
}

func (e *FetchError) Unwrap() error { return e.Err }

// ErrClosed is returned by reads of an Image after Close.
var ErrClosed = errors.New("blockstore: image closed")

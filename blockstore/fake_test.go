package blockstore

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// fakeFetcher serves an in-memory image and counts its calls. The hooks,
// given the call's number (from 1), inject faults.
type fakeFetcher struct {
	data    []byte
	latency time.Duration
	calls   atomic.Int64
	bytes   atomic.Int64 // returned
	// cancelled counts calls that ended because their context did.
	cancelled atomic.Int64
	// hang makes a call wait until its context ends.
	hang func(n int64) bool
	// deaf makes a call block for d ignoring its context.
	deaf func(n int64) time.Duration
	// fail makes a call return an error.
	fail func(n int64) error
	// corrupt makes a call return wrong bytes.
	corrupt func(n int64) bool
}

func (f *fakeFetcher) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	n := f.calls.Add(1)
	if f.deaf != nil {
		if d := f.deaf(n); d > 0 {
			time.Sleep(d)
		}
	}
	wait := f.latency
	if f.hang != nil && f.hang(n) {
		wait = time.Hour
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			f.cancelled.Add(1)
			return nil, ctx.Err()
		}
	}
	if f.fail != nil {
		if err := f.fail(n); err != nil {
			return nil, err
		}
	}
	b := bytes.Clone(f.data[off : off+length])
	if f.corrupt != nil && f.corrupt(n) {
		b[0] ^= 0xff
	}
	f.bytes.Add(length)
	return b, nil
}

// testImage returns random bytes of the given size and their index.
func testImage(t testing.TB, size, chunkSize int64) ([]byte, *Index) {
	t.Helper()
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(size), byte(chunkSize >> 12)})
	r.Read(data)
	ix, err := BuildIndex(context.Background(), bytes.NewReader(data), chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	return data, ix
}

func newStore(t testing.TB, o Options) *Store {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	s, err := NewStore(o)
	if err != nil {
		t.Fatal(err)
	}
	// Before the directory's removal (cleanups run last first): the
	// writes of chunks fetched late go on after the test's reads return.
	t.Cleanup(func() { s.Close() })
	return s
}

func openImage(t testing.TB, s *Store, ix *Index, f Fetcher) *Image {
	t.Helper()
	im, err := s.Open(ix, f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// chunkFiles lists the chunk files in a cache directory.
func chunkFiles(t testing.TB, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "chunks", "*"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(files)
	return files
}

func errorsAs[T error](err error) (T, bool) {
	var target T
	ok := errors.As(err, &target)
	return target, ok
}

// flightsNow returns the digests of the fetches in progress.
func (s *Store) flightsNow() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ds []string
	for d := range s.flights {
		ds = append(ds, d)
	}
	return ds
}

package blockstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const cs = 8192 // chunk size of the tests' images

func TestReadAt(t *testing.T) {
	data, ix := testImage(t, 10*cs+123, cs)
	s := newStore(t, Options{})
	f := &fakeFetcher{data: data}
	im := openImage(t, s, ix, f)
	size := int64(len(data))
	for _, tt := range []struct {
		name    string
		off     int64
		n       int
		wantN   int
		wantErr error
	}{
		{"first byte", 0, 1, 1, nil},
		{"inside a chunk", 100, 1000, 1000, nil},
		{"whole chunk", cs, cs, cs, nil},
		{"across two chunks", cs - 10, 20, 20, nil},
		{"across four chunks", cs/2 + 1, 3 * cs, 3 * cs, nil},
		{"short last chunk", 10 * cs, 123, 123, nil},
		{"past the end", size - 5, 10, 5, io.EOF},
		{"at the end", size, 10, 0, io.EOF},
		{"beyond the end", size + 100, 10, 0, io.EOF},
		{"empty", 50, 0, 0, nil},
		{"whole image", 0, int(size), int(size), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, pass := range []string{"cold", "warm"} {
				p := make([]byte, tt.n)
				n, err := im.ReadAtContext(t.Context(), p, tt.off)
				if n != tt.wantN || err != tt.wantErr {
					t.Fatalf("%s: ReadAt(%d bytes at %d) = %d, %v; want %d, %v", pass, tt.n, tt.off, n, err, tt.wantN, tt.wantErr)
				}
				if !bytes.Equal(p[:n], data[min(tt.off, size):min(tt.off, size)+int64(n)]) {
					t.Fatalf("%s: ReadAt(%d bytes at %d) returned the wrong bytes", pass, tt.n, tt.off)
				}
			}
		})
	}
	if _, err := im.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("read at -1 succeeded")
	}
	// Every chunk was fetched once, and every warm read hit.
	s.Close()
	st := im.Stats()
	if st.Gets != 11 || st.Misses != 11 || st.BytesFetched != size || st.DigestMismatches != 0 {
		t.Errorf("stats %+v: want 11 GETs and misses, %d bytes fetched", st, size)
	}
	if got := len(chunkFiles(t, s.o.Dir)); got != 11 {
		t.Errorf("%d chunk files cached, want 11", got)
	}
	if d := cmp.Diff(im.Stats(), s.Stats()); d != "" {
		t.Errorf("store stats differ from its one image's (-image +store):\n%s", d)
	}
}

// TestSingleFlight starts many reads of the same chunks at once, against
// a slow fetcher: each chunk must be fetched once.
func TestSingleFlight(t *testing.T) {
	for _, tt := range []struct {
		name    string
		readers int
		chunks  int // each reader reads chunks 0..chunks-1, in its own order
	}{
		{"64 readers, one chunk", 64, 1},
		{"16 readers, 8 chunks", 16, 8},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data, ix := testImage(t, int64(tt.chunks)*cs, cs)
			s := newStore(t, Options{HedgeAfter: -1}) // hedges would be more fetches under load
			f := &fakeFetcher{data: data, latency: 50 * time.Millisecond}
			im := openImage(t, s, ix, f)
			var wg sync.WaitGroup
			errs := make(chan error, tt.readers)
			for r := range tt.readers {
				wg.Go(func() {
					for k := range tt.chunks {
						c := int64((k + r) % tt.chunks)
						p := make([]byte, 100)
						if _, err := im.ReadAtContext(t.Context(), p, c*cs+int64(r)); err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(p, data[c*cs+int64(r):][:100]) {
							errs <- fmt.Errorf("reader %d chunk %d: wrong bytes", r, c)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			st := im.Stats()
			reads := int64(tt.readers * tt.chunks)
			if f.calls.Load() != int64(tt.chunks) || st.Gets != int64(tt.chunks) || st.Misses != int64(tt.chunks) {
				t.Errorf("%d fetches, stats %+v; want one fetch per chunk (%d)", f.calls.Load(), st, tt.chunks)
			}
			if st.Misses+st.Joins+st.Hits != reads || st.Joins == 0 {
				t.Errorf("stats %+v: misses+joins+hits should be %d reads, with joins", st, reads)
			}
			if st.Stalled <= 0 {
				t.Errorf("stats %+v: no stall time recorded", st)
			}
		})
	}
}

func TestDigestMismatch(t *testing.T) {
	for _, tt := range []struct {
		name       string
		corrupt    func(n int64) bool
		wantErr    bool
		wantGets   int64
		wantCached int
	}{
		{"corrupt once, refetched", func(n int64) bool { return n == 1 }, false, 2, 1},
		{"corrupt twice, fails", func(int64) bool { return true }, true, 2, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data, ix := testImage(t, 4*cs, cs)
			s := newStore(t, Options{})
			f := &fakeFetcher{data: data, corrupt: tt.corrupt}
			im := openImage(t, s, ix, f)
			p := make([]byte, 10)
			n, err := im.ReadAtContext(t.Context(), p, 2*cs+5)
			s.Close()
			st := im.Stats()
			if st.Gets != tt.wantGets || st.DigestMismatches != tt.wantGets-1+boolInt(tt.wantErr) {
				t.Errorf("stats %+v, want %d GETs", st, tt.wantGets)
			}
			if got := len(chunkFiles(t, s.o.Dir)); got != tt.wantCached {
				t.Errorf("%d chunk files cached, want %d", got, tt.wantCached)
			}
			if !tt.wantErr {
				if err != nil || !bytes.Equal(p, data[2*cs+5:][:10]) {
					t.Fatalf("read = %d, %v, bytes equal %v", n, err, bytes.Equal(p, data[2*cs+5:][:10]))
				}
				return
			}
			de, ok := errorsAs[*DigestError](err)
			if !ok || n != 0 {
				t.Fatalf("read = %d, %v; want 0 and a *DigestError", n, err)
			}
			want := &DigestError{Image: ix.Digest, Chunk: 2, Offset: 2 * cs, Length: cs, Want: ix.Chunks[2], Got: de.Got}
			if d := cmp.Diff(want, de); d != "" || de.Got == de.Want {
				t.Errorf("DigestError (-want +got):\n%s", d)
			}
			if !strings.Contains(err.Error(), "chunk 2 ") {
				t.Errorf("error %q does not name chunk 2", err)
			}
			if bytes.ContainsAny(p, "\x00") == false {
				// p must not have been filled with the corrupt bytes.
				t.Errorf("a failed read wrote into the buffer")
			}
		})
	}
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// TestFetchFailures checks that a fetcher that fails or hangs ends the
// read with a clear error, in a bounded time.
func TestFetchFailures(t *testing.T) {
	boom := errors.New("503 SlowDown")
	for _, tt := range []struct {
		name         string
		f            *fakeFetcher
		wantAttempts int
		wantIs       error
		wantInError  string
	}{
		{"always fails", &fakeFetcher{fail: func(int64) error { return boom }}, 3, boom, "after 3 attempt(s): 503 SlowDown"},
		{"permanent", &fakeFetcher{fail: func(int64) error { return Permanent(boom) }}, 1, boom, "after 1 attempt(s)"},
		{"hangs", &fakeFetcher{hang: func(int64) bool { return true }}, 3, context.DeadlineExceeded, "timed out after 50ms"},
		{"ignores its context", &fakeFetcher{deaf: func(int64) time.Duration { return 2 * time.Second }}, 3, context.DeadlineExceeded, "did not return within 50ms"},
		{"fails twice then works", &fakeFetcher{fail: func(n int64) error {
			if n <= 2 {
				return boom
			}
			return nil
		}}, 0, nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data, ix := testImage(t, 2*cs, cs)
			s := newStore(t, Options{RequestTimeout: 50 * time.Millisecond, Attempts: 3, Backoff: 10 * time.Millisecond, HedgeAfter: -1})
			f := tt.f
			f.data = data
			im := openImage(t, s, ix, f)
			start := time.Now()
			_, err := im.ReadAtContext(t.Context(), make([]byte, 10), cs)
			if elapsed := time.Since(start); elapsed > 2*time.Second {
				t.Errorf("read took %v", elapsed)
			}
			if tt.wantIs == nil {
				if err != nil {
					t.Fatalf("read failed: %v", err)
				}
				return
			}
			fe, ok := errorsAs[*FetchError](err)
			if !ok {
				t.Fatalf("err = %v, want a *FetchError", err)
			}
			if fe.Chunk != 1 || fe.Attempts != tt.wantAttempts || !errors.Is(err, tt.wantIs) {
				t.Errorf("FetchError %+v: want chunk 1, %d attempts, wrapping %v", fe, tt.wantAttempts, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantInError) || !strings.Contains(err.Error(), "chunk 1 ") {
				t.Errorf("error %q does not say %q and name chunk 1", err, tt.wantInError)
			}
			if st := im.Stats(); st.Retries != int64(tt.wantAttempts-1) {
				t.Errorf("stats %+v: want %d retries", st, tt.wantAttempts-1)
			}
		})
	}
}

// TestHedge has a first request that hangs: the hedged second one must
// answer the read long before the first's timeout.
func TestHedge(t *testing.T) {
	data, ix := testImage(t, 2*cs, cs)
	s := newStore(t, Options{RequestTimeout: 10 * time.Second, HedgeAfter: 30 * time.Millisecond})
	f := &fakeFetcher{data: data, hang: func(n int64) bool { return n == 1 }}
	im := openImage(t, s, ix, f)
	start := time.Now()
	p := make([]byte, 10)
	if _, err := im.ReadAtContext(t.Context(), p, 0); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second || !bytes.Equal(p, data[:10]) {
		t.Errorf("read took %v (bytes equal %v)", elapsed, bytes.Equal(p, data[:10]))
	}
	// The loser is cancelled.
	deadline := time.Now().Add(2 * time.Second)
	for f.cancelled.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	st := im.Stats()
	if d := cmp.Diff(Stats{Gets: 2, Hedges: 1, BytesFetched: cs, Misses: 1}, Stats{Gets: st.Gets, Hedges: st.Hedges, BytesFetched: st.BytesFetched, Misses: st.Misses}); d != "" || f.cancelled.Load() != 1 {
		t.Errorf("stats (-want +got):\n%s\nlosing request cancelled: %d", d, f.cancelled.Load())
	}
}

// TestCancel: a read whose context ends, or whose image is closed, returns
// at once, and the fetch nobody waits for any more is cancelled.
func TestCancel(t *testing.T) {
	data, ix := testImage(t, 2*cs, cs)
	s := newStore(t, Options{HedgeAfter: -1})
	f := &fakeFetcher{data: data, hang: func(int64) bool { return true }}
	im := openImage(t, s, ix, f)

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := im.ReadAtContext(ctx, make([]byte, 10), 0)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "chunk 0") || time.Since(start) > time.Second {
		t.Errorf("read with a 50 ms deadline = %v after %v; want DeadlineExceeded naming chunk 0", err, time.Since(start))
	}
	waitFor(t, func() bool { return f.cancelled.Load() == 1 }, "the abandoned fetch to be cancelled")

	done := make(chan error)
	go func() {
		_, err := im.ReadAt(make([]byte, 10), cs)
		done <- err
	}()
	waitFor(t, func() bool { return f.calls.Load() == 2 }, "the second fetch to start")
	im.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("read during Close = %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("read did not end after Close")
	}
	if _, err := im.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read after Close = %v, want ErrClosed", err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestEviction reads more than the cache holds: it stays under its limit
// and evicts the least recently used chunks.
func TestEviction(t *testing.T) {
	data, ix := testImage(t, 16*cs, cs)
	s := newStore(t, Options{MaxBytes: 4 * cs})
	f := &fakeFetcher{data: data}
	im := openImage(t, s, ix, f)
	read := func(c int64) {
		t.Helper()
		p := make([]byte, cs)
		if _, err := im.ReadAtContext(t.Context(), p, c*cs); err != nil || !bytes.Equal(p, data[c*cs:][:cs]) {
			t.Fatalf("reading chunk %d: %v", c, err)
		}
		s.Close() // the chunk is written
	}
	for c := range int64(4) {
		read(c)
	}
	if got := s.Usage(); got != 4*cs {
		t.Fatalf("usage %d after 4 chunks, want %d", got, 4*cs)
	}
	// Make the ages distinct and chunk 0 the most recently used.
	now := time.Now()
	for c := range 4 {
		age := time.Duration(4-c) * time.Hour
		if c == 0 {
			age = 0
		}
		path := s.chunkPath(ix.Chunks[c])
		if err := os.Chtimes(path, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
	}
	read(4) // 5 chunks > 4: down to 3.6, so the two oldest (1, 2) go
	want := []string{s.chunkPath(ix.Chunks[0]), s.chunkPath(ix.Chunks[3]), s.chunkPath(ix.Chunks[4])}
	slices.Sort(want)
	if d := cmp.Diff(want, chunkFiles(t, s.o.Dir)); d != "" {
		t.Errorf("cached chunks after eviction (-want +got):\n%s", d)
	}
	for c := range int64(16) {
		read(c)
		if u := s.Usage(); u > 4*cs {
			t.Fatalf("usage %d over the limit %d", u, 4*cs)
		}
	}
	st := s.Stats()
	if st.Evictions < 12 || st.EvictedBytes != st.Evictions*cs {
		t.Errorf("stats %+v: want at least 12 evictions of %d bytes", st, cs)
	}
	// Chunk 1 was evicted: reading it again fetches it again.
	gets := f.calls.Load()
	read(1)
	if f.calls.Load() != gets+1 {
		t.Errorf("reading evicted chunk 1 made %d fetches, want 1", f.calls.Load()-gets)
	}
	// A new store over the same directory with a smaller limit evicts at
	// once.
	s2 := newStore(t, Options{Dir: s.o.Dir, MaxBytes: 2 * cs})
	if u := s2.Usage(); u > 2*cs || len(chunkFiles(t, s.o.Dir)) > 2 {
		t.Errorf("new store with a 2-chunk limit: usage %d, %d files", u, len(chunkFiles(t, s.o.Dir)))
	}
}

// TestPersistence opens a second store on the first's directory, as the
// next run does: everything is served from disk.
func TestPersistence(t *testing.T) {
	data, ix := testImage(t, 6*cs+1, cs)
	dir := t.TempDir()
	s1 := newStore(t, Options{Dir: dir})
	im1 := openImage(t, s1, ix, &fakeFetcher{data: data})
	got := make([]byte, len(data))
	if _, err := im1.ReadAtContext(t.Context(), got, 0); err != nil {
		t.Fatal(err)
	}
	s1.Close()
	s2 := newStore(t, Options{Dir: dir})
	f2 := &fakeFetcher{data: data}
	im2 := openImage(t, s2, ix, f2)
	clear(got)
	if _, err := im2.ReadAtContext(t.Context(), got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("second store: %v, bytes equal %v", err, bytes.Equal(got, data))
	}
	if d := cmp.Diff(Stats{Hits: 7}, im2.Stats()); d != "" || f2.calls.Load() != 0 {
		t.Errorf("second store's stats (-want +got):\n%s", d)
	}
	if s2.Usage() != int64(len(data)) {
		t.Errorf("usage %d, want %d", s2.Usage(), len(data))
	}
}

// TestCrashLeftovers puts what a crash or a damaged disk can leave in the
// cache directory: a stale temporary file, a chunk file shorter than its
// chunk with wrong bytes, and (VerifyCached only) one of the right length with wrong bytes.
// A new store must never serve them, fetch those chunks again and clean up.
func TestCrashLeftovers(t *testing.T) {
	for _, tt := range []struct {
		name         string
		verifyCached bool
		garbage      bool // chunk 2's file holds wrong bytes of the right length
	}{
		{"short file", false, false},
		{"short file and wrong bytes, VerifyCached", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data, ix := testImage(t, 4*cs, cs)
			dir := t.TempDir()
			s1 := newStore(t, Options{Dir: dir})
			if _, err := openImage(t, s1, ix, &fakeFetcher{data: data}).ReadAtContext(t.Context(), make([]byte, 4*cs), 0); err != nil {
				t.Fatal(err)
			}
			s1.Close()
			// Half a chunk, and not its first half.
			if err := os.WriteFile(s1.chunkPath(ix.Chunks[1]), make([]byte, cs/2), 0o644); err != nil {
				t.Fatal(err)
			}
			bad := []int64{1}
			if tt.garbage {
				if err := os.WriteFile(s1.chunkPath(ix.Chunks[2]), make([]byte, cs), 0o644); err != nil {
					t.Fatal(err)
				}
				bad = append(bad, 2)
			}
			stale := filepath.Join(dir, "tmp", "chunk-123")
			fresh := filepath.Join(dir, "tmp", "chunk-456") // a live writer's
			os.WriteFile(stale, data[:cs], 0o644)
			os.WriteFile(fresh, data[:cs], 0o644)
			old := time.Now().Add(-2 * staleTmpAge)
			os.Chtimes(stale, old, old)

			// With storage unreachable, the bad chunks are not served.
			s2 := newStore(t, Options{Dir: dir, Attempts: 1, VerifyCached: tt.verifyCached})
			down := &fakeFetcher{data: data, fail: func(int64) error { return Permanent(errors.New("connection refused")) }}
			imDown := openImage(t, s2, ix, down)
			for _, c := range bad {
				// 100 bytes, inside what the short file holds.
				p := make([]byte, 100)
				if _, err := imDown.ReadAtContext(t.Context(), p, c*cs); err == nil {
					t.Fatalf("bad cached chunk %d served (bytes equal %v)", c, bytes.Equal(p, data[c*cs:][:100]))
				}
			}
			if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stale temporary file left: %v", err)
			}
			if _, err := os.Stat(fresh); err != nil {
				t.Errorf("a live writer's temporary file was removed: %v", err)
			}

			s3 := newStore(t, Options{Dir: dir, VerifyCached: tt.verifyCached})
			f := &fakeFetcher{data: data}
			im := openImage(t, s3, ix, f)
			got := make([]byte, len(data))
			if _, err := im.ReadAtContext(t.Context(), got, 0); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read after crash: %v, bytes equal %v", err, bytes.Equal(got, data))
			}
			// s2 removed the bad files; s3 fetches them again.
			if d := cmp.Diff(Stats{Gets: int64(len(bad)), Misses: int64(len(bad)), Hits: 4 - int64(len(bad)), BytesFetched: int64(len(bad)) * cs}, im.Stats(), cmpIgnoreStall); d != "" {
				t.Errorf("stats (-want +got):\n%s", d)
			}
			if st := imDown.Stats(); st.CorruptCached != int64(len(bad)) {
				t.Errorf("stats %+v: want %d corrupt cached chunks", st, len(bad))
			}
		})
	}
}

var cmpIgnoreStall = cmp.Transformer("nostall", func(s Stats) Stats { s.Stalled = 0; return s })

// TestSharedDirectory runs two stores (two processes) over one directory
// at once.
func TestSharedDirectory(t *testing.T) {
	data, ix := testImage(t, 32*cs, cs)
	dir := t.TempDir()
	var wg sync.WaitGroup
	var errs sync.Map
	for k := range 2 {
		s := newStore(t, Options{Dir: dir, MaxBytes: 24 * cs})
		im := openImage(t, s, ix, &fakeFetcher{data: data, latency: time.Millisecond})
		for r := range 4 {
			wg.Go(func() {
				got := make([]byte, 3*cs)
				for i := range 40 {
					off := int64((i*7+r*5+k)%30) * cs
					if _, err := im.ReadAtContext(t.Context(), got, off); err != nil || !bytes.Equal(got, data[off:][:3*cs]) {
						errs.Store(fmt.Sprint(k, r, i), fmt.Sprintf("store %d reader %d at %d: %v", k, r, off, err))
						return
					}
				}
			})
		}
	}
	wg.Wait()
	errs.Range(func(_, v any) bool { t.Error(v); return true })
}

// TestCacheWriteFailure: when a chunk cannot be written to the cache (a
// full disk), the read still gets its verified bytes from memory.
func TestCacheWriteFailure(t *testing.T) {
	data, ix := testImage(t, 2*cs, cs)
	s := newStore(t, Options{})
	// A file where the temporary directory should be makes every write
	// fail, as ENOSPC would.
	s.tmpDir = filepath.Join(s.o.Dir, "not-a-dir")
	if err := os.WriteFile(s.tmpDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f := &fakeFetcher{data: data}
	im := openImage(t, s, ix, f)
	p := make([]byte, 2*cs)
	for range 2 {
		if _, err := im.ReadAtContext(t.Context(), p, 0); err != nil || !bytes.Equal(p, data) {
			t.Fatalf("read with a failing cache: %v, bytes equal %v", err, bytes.Equal(p, data))
		}
		s.Close()
	}
	st := im.Stats()
	// The second read's chunks may join the first's finished flights.
	if st.CacheWriteErrors != st.Gets || st.Gets < 2 || st.Hits != 0 || st.Misses+st.Joins != 4 || len(chunkFiles(t, s.o.Dir)) != 0 {
		t.Errorf("stats %+v: want a cache write error per GET, no hits, nothing cached", st)
	}
}

func TestPrefetch(t *testing.T) {
	data, ix := testImage(t, 4*cs, cs)
	s := newStore(t, Options{})
	f := &fakeFetcher{data: data}
	im := openImage(t, s, ix, f)
	for _, c := range []int{3, 3, 0} {
		if err := im.Prefetch(t.Context(), c); err != nil {
			t.Fatalf("Prefetch(%d): %v", c, err)
		}
		s.Close() // the chunk is on disk, the second Prefetch(3) hits
	}
	p := make([]byte, cs+10)
	if _, err := im.ReadAtContext(t.Context(), p, 3*cs-10); err != nil || !bytes.Equal(p, data[3*cs-10:]) {
		t.Fatalf("read after prefetch: %v", err)
	}
	// Fetched: 3 and 0 by Prefetch, 2 by the read, which hits 3.
	if d := cmp.Diff(Stats{Gets: 3, Misses: 3, Hits: 2, BytesFetched: 3 * cs}, im.Stats(), cmpIgnoreStall); d != "" {
		t.Errorf("stats (-want +got):\n%s", d)
	}
	for _, c := range []int{-1, 4} {
		if err := im.Prefetch(t.Context(), c); err == nil {
			t.Errorf("Prefetch(%d) of a 4-chunk image succeeded", c)
		}
	}
	im.Close()
	if err := im.Prefetch(t.Context(), 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Prefetch after Close = %v, want ErrClosed", err)
	}
}

// TestStatsJSON pins the counters' names in --json and /metrics.
func TestStatsJSON(t *testing.T) {
	b, err := json.Marshal(Stats{Gets: 1, Stalled: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"gets":1,"hedges":0,"retries":0,"bytes_fetched":0,"hits":0,"misses":0,"joins":0,"digest_mismatches":0,"corrupt_cached":0,"cache_write_errors":0,"evictions":0,"evicted_bytes":0,"stalled_ns":2000000}`
	if d := cmp.Diff(want, string(b)); d != "" {
		t.Errorf("JSON (-want +got):\n%s", d)
	}
}

// TestKeptFiles: an Image keeps up to maxOpenFiles chunk files open, keeps
// serving a kept chunk the cache evicted (its bytes are still right), and
// closes them all on Close.
func TestKeptFiles(t *testing.T) {
	const n = maxOpenFiles + 6
	data, ix := testImage(t, n*cs, cs)
	dir := t.TempDir()
	s1 := newStore(t, Options{Dir: dir})
	if _, err := openImage(t, s1, ix, &fakeFetcher{data: data}).ReadAtContext(t.Context(), make([]byte, n*cs), 0); err != nil {
		t.Fatal(err)
	}
	s1.Close()
	s2 := newStore(t, Options{Dir: dir})
	f := &fakeFetcher{data: data}
	im := openImage(t, s2, ix, f)
	p := make([]byte, 100)
	for range 2 {
		for c := range int64(n) {
			if _, err := im.ReadAtContext(t.Context(), p, c*cs+7); err != nil || !bytes.Equal(p, data[c*cs+7:][:100]) {
				t.Fatalf("chunk %d: %v", c, err)
			}
		}
	}
	im.filesMu.RLock()
	kept := len(im.files)
	var one *os.File
	keptChunk := int64(-1)
	for c := range int64(n) {
		if k := im.files[int(c)]; k != nil {
			one, keptChunk = k.f, c
			break
		}
	}
	im.filesMu.RUnlock()
	if kept != maxOpenFiles || f.calls.Load() != 0 {
		t.Errorf("%d files kept, %d fetches; want %d and none", kept, f.calls.Load(), maxOpenFiles)
	}
	// Evict the kept chunk behind the image's back: it is still served,
	// right, without a fetch.
	os.Remove(s2.chunkPath(ix.Chunks[keptChunk]))
	if _, err := im.ReadAtContext(t.Context(), p, keptChunk*cs+7); err != nil || !bytes.Equal(p, data[keptChunk*cs+7:][:100]) || f.calls.Load() != 0 {
		t.Errorf("kept chunk %d after its eviction: %v, %d fetches", keptChunk, err, f.calls.Load())
	}
	im.Close()
	if _, err := one.ReadAt(p, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("a kept file after Close: read error %v, want os.ErrClosed", err)
	}
}

// TestPendingChunks: a fetched chunk serves reads from memory, nothing is
// written while fetches go on, and the batch is written once the fetches
// pause for CommitDelay, or at once on Close.
func TestPendingChunks(t *testing.T) {
	data, ix := testImage(t, 4*cs, cs)
	read := func(t *testing.T, im *Image, c int64) {
		t.Helper()
		p := make([]byte, cs)
		if _, err := im.ReadAtContext(t.Context(), p, c*cs); err != nil || !bytes.Equal(p, data[c*cs:][:cs]) {
			t.Fatalf("reading chunk %d: %v", c, err)
		}
	}
	t.Run("close", func(t *testing.T) {
		s := newStore(t, Options{CommitDelay: time.Hour})
		f := &fakeFetcher{data: data}
		im := openImage(t, s, ix, f)
		read(t, im, 0)
		read(t, im, 1)
		waitFor(t, func() bool { return len(s.flightsNow()) == 0 }, "the flights to end")
		read(t, im, 0) // from memory
		if err := im.Prefetch(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		if n := len(chunkFiles(t, s.o.Dir)); n != 0 {
			t.Errorf("%d chunk files before the commit, want none", n)
		}
		if d := cmp.Diff(Stats{Gets: 2, Misses: 2, Hits: 2, BytesFetched: 2 * cs}, im.Stats(), cmpIgnoreStall); d != "" {
			t.Errorf("stats (-want +got):\n%s", d)
		}
		s.Close()
		want := []string{s.chunkPath(ix.Chunks[0]), s.chunkPath(ix.Chunks[1])}
		slices.Sort(want)
		if d := cmp.Diff(want, chunkFiles(t, s.o.Dir)); d != "" {
			t.Errorf("chunk files after Close (-want +got):\n%s", d)
		}
		if tmp, _ := os.ReadDir(filepath.Join(s.o.Dir, "tmp")); len(tmp) != 0 {
			t.Errorf("%d temporary files left after the commit", len(tmp))
		}
		if u := s.Usage(); u != 2*cs {
			t.Errorf("usage %d after the commit, want %d", u, 2*cs)
		}
		read(t, im, 1) // from the file now
		if f.calls.Load() != 2 {
			t.Errorf("%d fetches, want 2", f.calls.Load())
		}
	})
	t.Run("idle", func(t *testing.T) {
		s := newStore(t, Options{CommitDelay: 20 * time.Millisecond})
		im := openImage(t, s, ix, &fakeFetcher{data: data})
		read(t, im, 2)
		waitFor(t, func() bool { return len(chunkFiles(t, s.o.Dir)) == 1 }, "the idle commit")
	})
	t.Run("full", func(t *testing.T) {
		s := newStore(t, Options{CommitDelay: time.Hour, MaxPendingBytes: 2 * cs})
		im := openImage(t, s, ix, &fakeFetcher{data: data})
		read(t, im, 0)
		waitFor(t, func() bool { return len(s.flightsNow()) == 0 }, "the flight to end")
		if n := len(chunkFiles(t, s.o.Dir)); n != 0 {
			t.Fatalf("%d chunk files with one chunk pending of two allowed, want none", n)
		}
		read(t, im, 3)
		waitFor(t, func() bool { return len(chunkFiles(t, s.o.Dir)) == 2 }, "the commit of a full batch")
	})
}

// TestFlattenChunkDir: chunks an earlier version kept in fan-out
// directories are moved where reads find them.
func TestFlattenChunkDir(t *testing.T) {
	data, ix := testImage(t, 2*cs, cs)
	dir := t.TempDir()
	for c := range 2 {
		d := ix.Chunks[c]
		old := filepath.Join(dir, "chunks", d[:2], d)
		if err := os.MkdirAll(filepath.Dir(old), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(old, data[c*cs:][:cs], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := newStore(t, Options{Dir: dir})
	want := []string{s.chunkPath(ix.Chunks[0]), s.chunkPath(ix.Chunks[1])}
	slices.Sort(want)
	if d := cmp.Diff(want, chunkFiles(t, dir)); d != "" {
		t.Errorf("chunk files after NewStore (-want +got):\n%s", d)
	}
	f := &fakeFetcher{data: data}
	im := openImage(t, s, ix, f)
	p := make([]byte, len(data))
	if _, err := im.ReadAtContext(t.Context(), p, 0); err != nil || !bytes.Equal(p, data) || f.calls.Load() != 0 {
		t.Errorf("read of the moved chunks: %v, %d fetches", err, f.calls.Load())
	}
}

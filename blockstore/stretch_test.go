package blockstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestPrefetchOrderFetchesNeighboursTogether: chunks next to each other
// that come close together in a prefetch's order are fetched with one
// request, up to maxStretch of them, and only from within stretchWindow
// places; a cached chunk ends a stretch.
func TestPrefetchOrderFetchesNeighboursTogether(t *testing.T) {
	// far lists n chunks from 100 on, none next to another.
	far := func(n int) []int {
		var out []int
		for k := range n {
			out = append(out, 100+2*k)
		}
		return out
	}
	farStarts := func(n int) []string {
		var out []string
		for _, i := range far(n) {
			out = append(out, strconv.Itoa(i))
		}
		return out
	}
	cat := func(parts ...[]int) []int {
		var out []int
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	for _, tt := range []struct {
		name    string
		order   []int
		cached  []int
		want    []string
		wantRes PrefetchResult
	}{
		{
			name:    "neighbours listed apart",
			order:   []int{10, 3, 11, 4, 12, 30, 5},
			want:    []string{"10-12", "3-5", "30"},
			wantRes: PrefetchResult{Fetched: 7},
		},
		{
			name:    "below the first listed too",
			order:   []int{5, 4, 6, 3},
			want:    []string{"3-6"},
			wantRes: PrefetchResult{Fetched: 4},
		},
		{
			name:    "at most maxStretch",
			order:   cat([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}),
			want:    []string{"0-3", "4-7", "8-11", "12-15", "16-19"},
			wantRes: PrefetchResult{Fetched: 20},
		},
		{
			name:    "a neighbour at the window's end",
			order:   cat([]int{0}, far(stretchWindow-1), []int{1}),
			want:    append([]string{"0-1"}, farStarts(stretchWindow-1)...),
			wantRes: PrefetchResult{Fetched: stretchWindow + 1},
		},
		{
			name:    "a neighbour past the window",
			order:   cat([]int{0}, far(stretchWindow), []int{1}),
			want:    append(append([]string{"0"}, farStarts(stretchWindow)...), "1"),
			wantRes: PrefetchResult{Fetched: stretchWindow + 2},
		},
		{
			name:    "a cached neighbour ends the stretch",
			order:   []int{10, 11, 12},
			cached:  []int{11},
			want:    []string{"10", "12"},
			wantRes: PrefetchResult{Fetched: 2, Cached: 1},
		},
		{
			name:    "listed twice",
			order:   []int{10, 11, 10},
			want:    []string{"10-11"},
			wantRes: PrefetchResult{Fetched: 2, Cached: 1},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data, ix := testImage(t, 300*4096, 4096)
			f := &logFetcher{fakeFetcher: &fakeFetcher{data: data}, chunkSize: 4096}
			s := newStore(t, Options{HedgeAfter: -1})
			im := openImage(t, s, ix, f)
			for _, i := range tt.cached {
				if _, err := im.ReadAt(make([]byte, 1), int64(i)*4096); err != nil {
					t.Fatal(err)
				}
			}
			s.Close() // the cached chunks' files written
			before := len(f.starts())
			res := im.PrefetchOrder(t.Context(), tt.order, 1).Wait()
			if d := cmp.Diff(tt.wantRes, res, cmpErrors); d != "" {
				t.Errorf("result (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.want, f.starts()[before:]); d != "" {
				t.Errorf("fetches (-want +got):\n%s", d)
			}
			// Every chunk listed is cached, with its own bytes.
			for _, i := range tt.order {
				got := make([]byte, 4096)
				if _, err := im.ReadAt(got, int64(i)*4096); err != nil || !bytes.Equal(got, data[i*4096:(i+1)*4096]) {
					t.Fatalf("chunk %d: %v, right bytes %v", i, err, bytes.Equal(got, data[i*4096:(i+1)*4096]))
				}
			}
			if got, want := len(f.starts()), before+len(tt.want); got != want {
				t.Errorf("%d fetches after reading the prefetched chunks, want %d", got, want)
			}
		})
	}
}

// firstFetchHeld returns a logFetcher of 4 KiB chunks whose first fetch
// waits until release is closed.
func firstFetchHeld(data []byte) (f *logFetcher, release chan struct{}) {
	release = make(chan struct{})
	return &logFetcher{fakeFetcher: &fakeFetcher{data: data, deaf: func(n int64) time.Duration {
		if n == 1 {
			<-release
		}
		return 0
	}}, chunkSize: 4096}, release
}

// readInBackground reads a byte of chunk i (of 4 KiB chunks) of im in a
// goroutine, and sends the read's error.
func readInBackground(im *Image, i int) <-chan error {
	read := make(chan error, 1)
	go func() {
		_, err := im.ReadAt(make([]byte, 1), int64(i)*4096)
		read <- err
	}()
	return read
}

// TestPrefetchStretchAroundAFlight: a chunk already being fetched splits
// a stretch: it is joined, and the chunks on each side are fetched apart.
func TestPrefetchStretchAroundAFlight(t *testing.T) {
	data, ix := testImage(t, 8*4096, 4096)
	f, release := firstFetchHeld(data)
	im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
	read := readInBackground(im, 5)
	waitFor(t, func() bool { return len(f.starts()) == 1 }, "the demand read's fetch")
	prefetched := make(chan error, 1)
	go func() {
		_, err := im.prefetchStretch(t.Context(), 3, 7)
		prefetched <- err
	}()
	waitFor(t, func() bool { return len(f.starts()) == 3 }, "the prefetch's two fetches")
	close(release)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if err := <-prefetched; err != nil {
		t.Fatal(err)
	}
	got := f.starts()
	if d := cmp.Diff([]string{"5", "3-4", "6-7"}, []string{got[0], min(got[1], got[2]), max(got[1], got[2])}); d != "" {
		t.Errorf("fetches (-want +got):\n%s", d)
	}
	if st := im.Stats(); st.Joins != 1 || st.Misses != 5 {
		t.Errorf("joins %d, misses %d; want 1 and 5", st.Joins, st.Misses)
	}
}

// TestPrefetchStretchFaults: what goes wrong with one request for several
// chunks costs no more than it would for each alone. A corrupt chunk is
// fetched again alone, once, then refused; the others are served. A
// failed request is retried chunk by chunk; one refused for good is not.
// A packed image's stretch is one range of its packed object.
func TestPrefetchStretchFaults(t *testing.T) {
	data, ix := testImage(t, 8*4096, 4096)
	for _, tt := range []struct {
		name       string
		f          *fakeFetcher
		wantFailed int
		wantErr    func(error) bool
		wantCalls  int64
		wantMis    int64
	}{
		{
			name:      "corrupt once",
			f:         &fakeFetcher{data: data, corrupt: func(n int64) bool { return n == 1 }},
			wantCalls: 2, wantMis: 1,
		},
		{
			name:       "corrupt twice",
			f:          &fakeFetcher{data: data, corrupt: func(n int64) bool { return n <= 2 }},
			wantFailed: 1,
			wantErr: func(err error) bool {
				de, ok := errorsAs[*DigestError](err)
				return ok && de.Chunk == 2
			},
			wantCalls: 2, wantMis: 2,
		},
		{
			name:      "request fails",
			f:         &fakeFetcher{data: data, fail: func(n int64) error { return map[bool]error{true: errors.New("connection reset")}[n == 1] }},
			wantCalls: 1 + 4,
		},
		{
			name:       "refused for good",
			f:          &fakeFetcher{data: data, fail: func(int64) error { return Permanent(os.ErrPermission) }},
			wantFailed: 4,
			wantErr: func(err error) bool {
				fe, ok := errorsAs[*FetchError](err)
				return ok && errors.Is(err, os.ErrPermission) && fe.Chunk >= 2 && fe.Chunk <= 5
			},
			wantCalls: 1,
		},
	} {
		for _, streaming := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/streaming=%v", tt.name, streaming), func(t *testing.T) {
				f := &fakeFetcher{data: data, fail: tt.f.fail, corrupt: tt.f.corrupt}
				var fetcher Fetcher = f
				if streaming {
					fetcher = &streamingFetcher{fakeFetcher: f}
				}
				tt := tt
				tt.f = f
				im := openImage(t, newStore(t, Options{HedgeAfter: -1, Backoff: time.Millisecond}), ix, fetcher)
				failed, err := im.prefetchStretch(t.Context(), 2, 5)
				if failed != tt.wantFailed || (tt.wantErr == nil) != (err == nil) || err != nil && !tt.wantErr(err) {
					t.Errorf("prefetchStretch = %d failed, %v; want %d failed", failed, err, tt.wantFailed)
				}
				if got := tt.f.calls.Load(); got != tt.wantCalls {
					t.Errorf("%d fetches, want %d", got, tt.wantCalls)
				}
				if got := im.Stats().DigestMismatches; got != tt.wantMis {
					t.Errorf("%d digest mismatches counted, want %d", got, tt.wantMis)
				}
				// What was served is right; what failed is fetched anew.
				tt.f.fail, tt.f.corrupt = nil, nil
				got := make([]byte, 4*4096)
				if _, err := im.ReadAt(got, 2*4096); err != nil || !bytes.Equal(got, data[2*4096:6*4096]) {
					t.Errorf("reading the chunks after: %v, right bytes %v", err, bytes.Equal(got, data[2*4096:6*4096]))
				}
			})
		}
	}

	t.Run("packed", func(t *testing.T) {
		data, ix := packableImage(t, cs)
		obj := packedBytes(t, data, ix)
		f := &fakeFetcher{data: obj}
		im := openImage(t, newStore(t, Options{}), ix, &streamingFetcher{fakeFetcher: f})
		if _, err := im.prefetchStretch(t.Context(), 0, len(ix.Chunks)-1); err != nil {
			t.Fatal(err)
		}
		if got := f.calls.Load(); got != 1 || f.bytes.Load() != int64(len(obj)) {
			t.Errorf("%d fetches of %d bytes, want 1 of the packed object's %d", got, f.bytes.Load(), len(obj))
		}
		got := make([]byte, len(data))
		if _, err := im.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read: %v, right bytes %v", err, bytes.Equal(got, data))
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("%d fetches after reading the image, want the 1 prefetch", got)
		}
	})
}

// streamingFetcher serves a fakeFetcher's answers as streams
// (StreamFetcher). With stallAfter set, a stream stops after that many
// bytes until its context ends.
type streamingFetcher struct {
	*fakeFetcher
	stallAfter int64
}

func (f *streamingFetcher) FetchStream(ctx context.Context, off, length int64) (io.ReadCloser, error) {
	b, err := f.Fetch(ctx, off, length)
	if err != nil {
		return nil, err
	}
	var r io.Reader = bytes.NewReader(b)
	if f.stallAfter > 0 {
		r = io.MultiReader(bytes.NewReader(b[:f.stallAfter]), ctxReader{ctx})
	}
	return io.NopCloser(r), nil
}

// ctxReader reads nothing until its context ends, then fails with its
// error.
type ctxReader struct{ ctx context.Context }

func (r ctxReader) Read([]byte) (int, error) {
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}

// TestPrefetchStretchStreams: a stretch read as a stream serves each chunk
// as soon as its bytes are in, not when the last is; a stream that stops
// is given up after HedgeAfter, as a slow fetch is hedged, and the chunks
// it did not bring are fetched alone.
func TestPrefetchStretchStreams(t *testing.T) {
	data, ix := testImage(t, 8*4096, 4096)
	t.Run("first chunk served while the rest is on its way", func(t *testing.T) {
		f := &streamingFetcher{fakeFetcher: &fakeFetcher{data: data}, stallAfter: 4096 + 100}
		im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := im.prefetchStretch(ctx, 2, 5)
			done <- err
		}()
		waitFor(t, func() bool { return f.calls.Load() == 1 }, "the stretch's request")
		got := make([]byte, 4096)
		if _, err := im.ReadAt(got, 2*4096); err != nil || !bytes.Equal(got, data[2*4096:3*4096]) {
			t.Fatalf("chunk 2: %v, right bytes %v", err, bytes.Equal(got, data[2*4096:3*4096]))
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("%d fetches, want the stretch's 1: chunk 2 came from it", got)
		}
		select {
		case err := <-done:
			t.Fatalf("the prefetch ended (%v) while its stream was stalled", err)
		default:
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("prefetch after cancel: %v, want context.Canceled", err)
		}
	})
	t.Run("a stalled stream is hedged", func(t *testing.T) {
		f := &streamingFetcher{fakeFetcher: &fakeFetcher{data: data}, stallAfter: 4096 + 100}
		im := openImage(t, newStore(t, Options{HedgeAfter: 20 * time.Millisecond}), ix, f)
		if _, err := im.prefetchStretch(t.Context(), 2, 5); err != nil {
			t.Fatal(err)
		}
		// The stream, then chunks 3, 4 and 5 alone (their streams stall
		// after their whole chunk, so they end).
		if got := f.calls.Load(); got != 4 {
			t.Errorf("%d fetches, want 4", got)
		}
		if st := im.Stats(); st.Hedges != 1 || st.Gets != 4 {
			t.Errorf("hedges %d, GETs %d; want 1 and 4", st.Hedges, st.Gets)
		}
		got := make([]byte, 4*4096)
		if _, err := im.ReadAt(got, 2*4096); err != nil || !bytes.Equal(got, data[2*4096:6*4096]) {
			t.Fatalf("read: %v, right bytes %v", err, bytes.Equal(got, data[2*4096:6*4096]))
		}
		if got := f.calls.Load(); got != 4 {
			t.Errorf("%d fetches after reading, want the prefetch's 4", got)
		}
	})
}

// TestPrefetchOrderBoundsChunksInFlight: neighbours are taken along only
// while the chunks in flight are fewer than stretchFactor × workers, so
// stretches never put more of a slow link's bytes ahead of the chunks
// listed first than that.
func TestPrefetchOrderBoundsChunksInFlight(t *testing.T) {
	const workers = 4
	data, ix := testImage(t, 64*4096, 4096)
	f := &logFetcher{fakeFetcher: &fakeFetcher{data: data, hang: func(int64) bool { return true }}, chunkSize: 4096}
	im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
	order := make([]int, 64)
	for i := range order {
		order[i] = i
	}
	p := im.PrefetchOrder(t.Context(), order, workers)
	defer p.Stop()
	waitFor(t, func() bool { return len(f.starts()) == workers }, "a request per worker")
	time.Sleep(20 * time.Millisecond) // no more start
	chunks, longest := 0, 0
	for _, st := range f.starts() {
		n := 1
		if lo, hi, ok := strings.Cut(st, "-"); ok {
			a, _ := strconv.Atoi(lo)
			b, _ := strconv.Atoi(hi)
			n = b - a + 1
		}
		chunks += n
		longest = max(longest, n)
	}
	// Each worker's first chunk is always claimed; neighbours only below
	// the bound.
	if limit := stretchFactor*workers + workers - 1; chunks > limit || longest < 2 {
		t.Errorf("requests %q: %d chunks in flight (want at most %d), the longest %d (want neighbours taken along)", f.starts(), chunks, limit, longest)
	}
	if got := len(f.starts()); got != workers {
		t.Errorf("%d requests in flight, want %d", got, workers)
	}
}

// TestPrefetchOrderSingleWhileReadsWait: while a read waits for a fetch
// (or waited lately), the prefetch takes no neighbours along: the link is
// short of what the guest needs now, and a stretch's extra chunks would
// only take it from the chunks listed first.
func TestPrefetchOrderSingleWhileReadsWait(t *testing.T) {
	data, ix := testImage(t, 64*4096, 4096)
	f, release := firstFetchHeld(data) // the demand read's fetch of chunk 60
	im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
	read := readInBackground(im, 60)
	waitFor(t, func() bool { return len(f.starts()) == 1 }, "the read's fetch")
	// Two workers: the read's fetch leaves the prefetch one slot, so
	// its chunks still start one at a time, in order.
	waiting := im.PrefetchOrder(t.Context(), []int{0, 1, 2, 3}, 2).Wait()
	close(release)
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if waiting.Err != nil || waiting.Fetched != 4 {
		t.Fatalf("prefetch while a read waited: %+v", waiting)
	}
	// Lately: still singles.
	im.PrefetchOrder(t.Context(), []int{10, 11}, 1).Wait()
	// Once reads have not waited for stretchQuiet: stretches.
	im.lastWait.Store(time.Now().Add(-stretchQuiet).UnixNano())
	im.PrefetchOrder(t.Context(), []int{20, 21, 22}, 1).Wait()
	if d := cmp.Diff([]string{"60", "0", "1", "2", "3", "10", "11", "20-22"}, f.starts()); d != "" {
		t.Errorf("fetches (-want +got):\n%s", d)
	}
}

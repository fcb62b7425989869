package blockstore

import (
	"bytes"
	"errors"
	"os"
	"strconv"
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
			want:    []string{"0-7", "8-15", "16-19"},
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

// TestPrefetchStretchAroundAFlight: a chunk already being fetched splits
// a stretch: it is joined, and the chunks on each side are fetched apart.
func TestPrefetchStretchAroundAFlight(t *testing.T) {
	data, ix := testImage(t, 8*4096, 4096)
	release := make(chan struct{})
	f := &logFetcher{fakeFetcher: &fakeFetcher{data: data, deaf: func(n int64) time.Duration {
		if n == 1 {
			<-release
		}
		return 0
	}}, chunkSize: 4096}
	im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
	read := make(chan error, 1)
	go func() {
		_, err := im.ReadAt(make([]byte, 1), 5*4096)
		read <- err
	}()
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
		t.Run(tt.name, func(t *testing.T) {
			im := openImage(t, newStore(t, Options{HedgeAfter: -1, Backoff: time.Millisecond}), ix, tt.f)
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

	t.Run("packed", func(t *testing.T) {
		data, ix := packableImage(t, cs)
		obj := packedBytes(t, data, ix)
		f := &fakeFetcher{data: obj}
		im := openImage(t, newStore(t, Options{}), ix, f)
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

package blockstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTraceRecordsFirstDemandReads(t *testing.T) {
	data, ix := testImage(t, 16*4096, 4096)
	s := newStore(t, Options{})
	im := openImage(t, s, ix, &fakeFetcher{data: data})
	if tr := im.Trace(); tr != nil {
		t.Fatalf("Trace before StartTrace = %+v, want nil", tr)
	}
	read := func(off, n int64) {
		t.Helper()
		if _, err := im.ReadAt(make([]byte, n), off); err != nil {
			t.Fatal(err)
		}
	}
	read(0, 1) // before StartTrace: not recorded
	im.StartTrace(0)
	read(5*4096+10, 100)
	read(2*4096, 4096)
	read(5*4096, 1)        // again: not twice
	read(3*4096+4000, 200) // spans chunks 3 and 4
	if err := im.Prefetch(t.Context(), 9); err != nil {
		t.Fatal(err)
	}
	read(9*4096, 1) // cached by the prefetch, but a first demand read
	// Concurrent first reads of one chunk record it once.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { im.ReadAt(make([]byte, 1), 12*4096) })
	}
	wg.Wait()
	want := &Trace{Version: 1, Image: ix.Digest, ChunkSize: 4096, Chunks: []int{5, 2, 3, 4, 9, 12}}
	if d := cmp.Diff(want, im.Trace()); d != "" {
		t.Errorf("trace (-want +got):\n%s", d)
	}

	// A capped trace keeps the first chunks.
	im.StartTrace(2)
	read(7*4096, 1)
	read(1*4096, 1)
	read(8*4096, 1)
	if d := cmp.Diff([]int{7, 1}, im.Trace().Chunks); d != "" {
		t.Errorf("capped trace (-want +got):\n%s", d)
	}
}

// traceIndex is the index FuzzDecodeTrace and TestDecodeTrace check
// traces against: 10 chunks of 4 KiB.
func traceIndex() *Index {
	d := strings.Repeat("ab", 32)
	ix := &Index{Version: 1, Digest: "sha256:" + d, Size: 10 * 4096, ChunkSize: 4096}
	for range 10 {
		ix.Chunks = append(ix.Chunks, d)
	}
	return ix
}

func TestDecodeTrace(t *testing.T) {
	ix := traceIndex()
	head := `{"version":1,"image":"` + ix.Digest + `","chunkSize":4096,`
	for _, tt := range []struct {
		name, in string
		want     *Trace
		err      string // in the error; "" means no error
	}{
		{"valid", head + `"chunks":[3,0,9]}`, &Trace{Version: 1, Image: ix.Digest, ChunkSize: 4096, Chunks: []int{3, 0, 9}}, ""},
		{"empty list", head + `"chunks":[]}`, &Trace{Version: 1, Image: ix.Digest, ChunkSize: 4096, Chunks: []int{}}, ""},
		{"no list", head[:len(head)-1] + `}`, nil, "no chunk list"},
		{"null list", head + `"chunks":null}`, nil, "no chunk list"},
		{"version 2", strings.Replace(head, `"version":1`, `"version":2`, 1) + `"chunks":[1]}`, nil, "version 2"},
		{"other image", strings.Replace(head, "sha256:ab", "sha256:cd", 1) + `"chunks":[1]}`, nil, "recorded for image"},
		{"other chunk size", strings.Replace(head, "4096", "8192", 1) + `"chunks":[1]}`, nil, "chunk size 8192"},
		{"chunk out of range", head + `"chunks":[1,10]}`, nil, "entry 1 is chunk 10, the image has 10"},
		{"negative chunk", head + `"chunks":[-1]}`, nil, "chunk -1"},
		{"duplicate", head + `"chunks":[4,2,4]}`, nil, "chunk 4 is listed twice"},
		{"huge number", head + `"chunks":[1e30]}`, nil, "cannot unmarshal"},
		{"unknown field", head + `"chunks":[1],"extra":1}`, nil, "unknown field"},
		{"trailing data", head + `"chunks":[1]} {}`, nil, "data after"},
		{"not JSON", `trace`, nil, "invalid character"},
		{"too big", head + `"chunks":[` + strings.Repeat(" ", MaxTraceBytes) + `1]}`, nil, "more than the"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeTrace([]byte(tt.in), ix)
			if tt.err != "" {
				if !errors.Is(err, ErrInvalidTrace) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want ErrInvalidTrace saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("trace (-want +got):\n%s", d)
			}
			enc, err := got.Encode(ix)
			if err != nil {
				t.Fatal(err)
			}
			back, err := DecodeTrace(enc, ix)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(got, back); d != "" {
				t.Errorf("re-decoded (-first +second):\n%s", d)
			}
		})
	}
	long := &Trace{Version: 1, Image: ix.Digest, ChunkSize: 4096, Chunks: make([]int, MaxTraceChunks+1)}
	if _, err := long.Encode(ix); !errors.Is(err, ErrInvalidTrace) {
		t.Errorf("encoding %d chunks: err = %v, want ErrInvalidTrace", len(long.Chunks), err)
	}
}

// FuzzDecodeTrace: whatever the bytes, DecodeTrace returns a trace that
// is valid for the index, encodes and decodes to itself, or an
// ErrInvalidTrace; never a panic.
func FuzzDecodeTrace(f *testing.F) {
	ix := traceIndex()
	f.Add([]byte(`{"version":1,"image":"` + ix.Digest + `","chunkSize":4096,"chunks":[3,0,9]}`))
	f.Add([]byte(`{"version":1,"image":"` + ix.Digest + `","chunkSize":4096,"chunks":[3,3]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := DecodeTrace(data, ix)
		if err != nil {
			if !errors.Is(err, ErrInvalidTrace) {
				t.Fatalf("error does not wrap ErrInvalidTrace: %v", err)
			}
			return
		}
		seen := map[int]bool{}
		for _, i := range tr.Chunks {
			if i < 0 || i >= len(ix.Chunks) || seen[i] {
				t.Fatalf("accepted chunk %d in %v", i, tr.Chunks)
			}
			seen[i] = true
		}
		enc, err := tr.Encode(ix)
		if err != nil {
			t.Fatalf("decoded trace does not encode: %v", err)
		}
		back, err := DecodeTrace(enc, ix)
		if err != nil {
			t.Fatalf("encoded trace does not decode: %v", err)
		}
		if d := cmp.Diff(tr, back); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}

// logFetcher wraps a fakeFetcher and logs the chunks whose fetches start
// and end, in order ("3", or "3-5" for one fetch of chunks 3 to 5), with
// how many fetches were in flight at most.
type logFetcher struct {
	*fakeFetcher
	chunkSize int64

	mu          sync.Mutex
	events      []string // "start 3", "end 3"
	inflight    int
	maxInflight int
}

func (f *logFetcher) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	i := fmt.Sprint(off / f.chunkSize)
	if last := (off + length - 1) / f.chunkSize; last != off/f.chunkSize {
		i += fmt.Sprint("-", last) // a stretch of neighbours
	}
	f.mu.Lock()
	f.events = append(f.events, fmt.Sprint("start ", i))
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	f.mu.Unlock()
	b, err := f.fakeFetcher.Fetch(ctx, off, length)
	f.mu.Lock()
	f.events = append(f.events, fmt.Sprint("end ", i))
	f.inflight--
	f.mu.Unlock()
	return b, err
}

func (f *logFetcher) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{}, f.events...)
}

func (f *logFetcher) starts() []string {
	var out []string
	for _, e := range f.log() {
		if s, ok := strings.CutPrefix(e, "start "); ok {
			out = append(out, s)
		}
	}
	return out
}

func TestPrefetchOrderFetchesInOrderSkippingCached(t *testing.T) {
	data, ix := testImage(t, 12*4096, 4096)
	f := &logFetcher{fakeFetcher: &fakeFetcher{data: data}, chunkSize: 4096}
	s := newStore(t, Options{HedgeAfter: -1})
	im := openImage(t, s, ix, f)
	if _, err := im.ReadAt(make([]byte, 1), 3*4096); err != nil { // chunk 3 cached
		t.Fatal(err)
	}
	s.Close() // its cache file written
	res := im.PrefetchOrder(t.Context(), []int{7, 3, 11, 0, 7, 99, -1, 5}, 1).Wait()
	if d := cmp.Diff(PrefetchResult{Fetched: 4, Cached: 2}, res, cmpErrors); d != "" {
		t.Errorf("result (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"3", "7", "11", "0", "5"}, f.starts()); d != "" {
		t.Errorf("fetches (-want +got):\n%s", d)
	}
	// Prefetched chunks are in the cache: reading them fetches nothing.
	if _, err := im.ReadAt(make([]byte, 12*4096), 0); err != nil {
		t.Fatal(err)
	}
	if got := f.calls.Load(); got != 12 {
		t.Errorf("%d GETs for 12 chunks, want 12", got)
	}
}

var cmpErrors = cmp.Comparer(func(a, b error) bool { return errors.Is(a, b) || errors.Is(b, a) })

// TestPrefetchBelowDemand: a demand read issued while two prefetch workers
// are busy starts its fetch at once, and no prefetch queued after it takes
// its place: until it is served only one prefetch runs beside it (the
// budget is 2), so it ends before the prefetches that started after it.
func TestPrefetchBelowDemand(t *testing.T) {
	const latency = 250 * time.Millisecond
	// Every other chunk, so that no two are fetched together.
	data, ix := testImage(t, 40*4096, 4096)
	f := &logFetcher{fakeFetcher: &fakeFetcher{data: data, latency: latency}, chunkSize: 4096}
	s := newStore(t, Options{HedgeAfter: -1})
	im := openImage(t, s, ix, f)
	order := make([]int, 20)
	for i := range order {
		order[i] = 2 * i
	}
	p := im.PrefetchOrder(t.Context(), order, 2)
	for len(f.starts()) < 2 {
		time.Sleep(time.Millisecond)
	}
	// Well into the prefetches' fetches, so that chunk 4's prefetch (when
	// they end) and chunk 6's (when the demand read's ends) start apart.
	time.Sleep(latency / 5)
	start := time.Now()
	if _, err := im.ReadAt(make([]byte, 10), 30*4096); err != nil {
		t.Fatal(err)
	}
	served := time.Since(start)
	res := p.Wait()
	if d := cmp.Diff(PrefetchResult{Fetched: 19, Cached: 1}, res, cmpErrors); d != "" {
		t.Errorf("result (-want +got):\n%s", d)
	}
	log := f.log()
	at := func(e string) int {
		for k, x := range log {
			if x == e {
				return k
			}
		}
		t.Fatalf("no %q in %q", e, log)
		return 0
	}
	// The two workers' first fetches start together, in either order.
	first := f.starts()[:5]
	slices.Sort(first[:2])
	if d := cmp.Diff([]string{"0", "2", "30", "4", "6"}, first); d != "" {
		t.Errorf("first fetches (-want +got):\n%s", d)
	}
	// The demand read did not wait for the prefetches in flight...
	if at("start 30") > at("end 0") || at("start 30") > at("end 2") {
		t.Errorf("the demand fetch started after a prefetch ended: %q", log)
	}
	// ...and while it was in flight only one prefetch (budget 2) ran.
	if at("start 6") < at("end 30") {
		t.Errorf("chunk 6's prefetch started before the demand read of 30 was served: %q", log)
	}
	if served > latency+latency/2 {
		t.Errorf("the demand read took %v, want about one fetch (%v)", served, latency)
	}
	if f.maxInflight > 3 {
		t.Errorf("%d fetches in flight at once, want at most 3 (2 prefetches + the demand read)", f.maxInflight)
	}
	if got := f.calls.Load(); got != 20 {
		t.Errorf("%d GETs for 20 chunks, want 20", got)
	}
}

func TestPrefetchOrderWithDemandReadsFetchesEachChunkOnce(t *testing.T) {
	data, ix := testImage(t, 64*4096, 4096)
	f := &fakeFetcher{data: data, latency: 2 * time.Millisecond}
	s := newStore(t, Options{HedgeAfter: -1})
	im := openImage(t, s, ix, f)
	order := make([]int, 64)
	for i := range order {
		order[i] = (i * 7) % 64
	}
	p := im.PrefetchOrder(t.Context(), order, 4)
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			got := make([]byte, 4096)
			for i := range 64 {
				c := (i + w*21) % 64
				if _, err := im.ReadAt(got, int64(c)*4096); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, data[c*4096:(c+1)*4096]) {
					t.Errorf("chunk %d: wrong bytes", c)
				}
			}
		})
	}
	wg.Wait()
	res := p.Wait()
	if res.Err != nil || res.Fetched+res.Cached != 64 {
		t.Errorf("prefetch result %+v, want 64 chunks fetched or cached, no error", res)
	}
	// Neighbours may come in one GET: count bytes.
	if got := f.bytes.Load(); got != int64(len(data)) {
		t.Errorf("%d bytes fetched for the %d-byte image, want each chunk once", got, len(data))
	}
}

func TestPrefetchOrderStops(t *testing.T) {
	data, ix := testImage(t, 16*4096, 4096)
	order := []int{0, 2, 4, 6, 8, 10, 12, 14} // no neighbours: a fetch each
	hang := func(int64) bool { return true }

	t.Run("Stop", func(t *testing.T) {
		f := &fakeFetcher{data: data, hang: hang}
		im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
		p := im.PrefetchOrder(t.Context(), order, 2)
		for f.calls.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		res := stopWithin(t, p.Stop)
		if !errors.Is(res.Err, context.Canceled) || res.Fetched != 0 {
			t.Errorf("result %+v, want context.Canceled and nothing fetched", res)
		}
		waitFor(t, func() bool { return f.cancelled.Load() == 2 }, "the 2 fetches to be cancelled")
		if got := f.calls.Load(); got != 2 {
			t.Errorf("%d fetches, want the 2 in flight when it stopped", got)
		}
	})
	t.Run("context", func(t *testing.T) {
		f := &fakeFetcher{data: data, hang: hang}
		im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
		ctx, cancel := context.WithCancel(t.Context())
		p := im.PrefetchOrder(ctx, order, 2)
		for f.calls.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		cancel()
		if res := stopWithin(t, p.Wait); !errors.Is(res.Err, context.Canceled) {
			t.Errorf("result %+v, want context.Canceled", res)
		}
	})
	t.Run("Close", func(t *testing.T) {
		f := &fakeFetcher{data: data, hang: hang}
		im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
		p := im.PrefetchOrder(t.Context(), order, 2)
		for f.calls.Load() < 2 {
			time.Sleep(time.Millisecond)
		}
		im.Close()
		if res := stopWithin(t, p.Wait); !errors.Is(res.Err, ErrClosed) {
			t.Errorf("result %+v, want ErrClosed", res)
		}
		// After Close, a prefetch ends at once.
		if res := stopWithin(t, im.PrefetchOrder(t.Context(), order, 2).Wait); !errors.Is(res.Err, ErrClosed) || res.Fetched != 0 {
			t.Errorf("prefetch after Close: %+v, want ErrClosed", res)
		}
	})
	t.Run("failures do not stop it", func(t *testing.T) {
		f := &fakeFetcher{data: data, fail: func(n int64) error {
			if n == 1 {
				return Permanent(os.ErrNotExist)
			}
			return nil
		}}
		im := openImage(t, newStore(t, Options{HedgeAfter: -1}), ix, f)
		res := stopWithin(t, im.PrefetchOrder(t.Context(), order, 1).Wait)
		if res.Failed != 1 || res.Fetched != 7 || !errors.Is(res.Err, os.ErrNotExist) {
			t.Errorf("result %+v, want 1 failed (ErrNotExist), 7 fetched", res)
		}
	})
}

func stopWithin(t *testing.T, f func() PrefetchResult) PrefetchResult {
	t.Helper()
	done := make(chan PrefetchResult, 1)
	go func() { done <- f() }()
	select {
	case r := <-done:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("the prefetch did not stop within 5 s")
		return PrefetchResult{}
	}
}

func TestPrefetchPlan(t *testing.T) {
	ix := &Index{MetadataChunks: []int{0, 1, 2}}
	for _, tt := range []struct {
		name  string
		trace *Trace
		want  []int
	}{
		{"no trace", nil, []int{0, 1, 2}},
		{"trace first, then the rest of the metadata", &Trace{Chunks: []int{7, 1, 5}}, []int{7, 1, 5, 0, 2}},
		{"empty trace", &Trace{Chunks: []int{}}, []int{0, 1, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, PrefetchPlan(ix, tt.trace)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
	if got := PrefetchPlan(&Index{}, nil); len(got) != 0 {
		t.Errorf("nothing to prefetch: %v", got)
	}
}

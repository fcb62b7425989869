package engine

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/image"
)

// recordingFetcher reads a file and records the chunks fetched (each of
// a range of neighbours fetched at once).
type recordingFetcher struct {
	f         *os.File
	chunkSize int64
	mu        sync.Mutex
	chunks    []int
}

func (r *recordingFetcher) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	r.mu.Lock()
	for c := off / r.chunkSize; c*r.chunkSize < off+length; c++ {
		r.chunks = append(r.chunks, int(c))
	}
	r.mu.Unlock()
	b := make([]byte, length)
	_, err := r.f.ReadAt(b, off)
	return b, err
}

// fakeTraces lists the traces a run would have left.
type fakeTraces struct{ traces []*blockstore.Trace }

func (f fakeTraces) LoadTraces(ctx context.Context, max int) ([]*blockstore.Trace, error) {
	return f.traces[:min(max, len(f.traces))], nil
}
func (f fakeTraces) LoadTrace(ctx context.Context, key string) (*blockstore.Trace, error) {
	return nil, nil
}
func (f fakeTraces) SaveTrace(ctx context.Context, key string, t *blockstore.Trace) (bool, error) {
	return false, nil
}

// TestWarmImage checks a lazy image is warmed with its metadata chunks,
// and with the chunks of the traces stored beside it; an image read whole
// needs nothing.
func TestWarmImage(t *testing.T) {
	// Files of data between directories: metadata chunks and data
	// chunks both.
	tree, img := t.TempDir(), filepath.Join(t.TempDir(), "warm.erofs")
	for i := range 64 {
		d := filepath.Join(tree, fmt.Sprintf("d%02d", i))
		os.Mkdir(d, 0o755)
		for j := range 4 {
			// Random: no two chunks alike (the store keeps one of each).
			os.WriteFile(filepath.Join(d, fmt.Sprintf("f%d", j)), []byte(rand.Text()+strings.Repeat(rand.Text(), 600)), 0o644)
		}
	}
	if err := image.BuildEROFS(t.Context(), tree, img, image.BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	const chunkSize = blockstore.MinChunkSize
	ix, err := blockstore.BuildIndexFile(t.Context(), img, chunkSize)
	if err != nil {
		t.Fatal(err)
	}
	// As image.Push would list them: the first chunks (the superblock,
	// the inodes and directories pe writes first).
	ix.MetadataChunks = []int{0, 1, 2}
	n := len(ix.Chunks)
	var notMeta []int
	for i := n - 1; i >= 0 && len(notMeta) < 2; i-- {
		if !slices.Contains(ix.MetadataChunks, i) {
			notMeta = append(notMeta, i)
		}
	}
	if len(notMeta) < 2 || len(ix.MetadataChunks) == 0 {
		t.Fatalf("the fixture's image has %d chunks, %d of metadata: want both kinds", n, len(ix.MetadataChunks))
	}
	trace := &blockstore.Trace{Version: blockstore.TraceVersion, Image: ix.Digest, ChunkSize: chunkSize, Chunks: append([]int{ix.MetadataChunks[0]}, notMeta...)}
	for _, c := range []struct {
		desc   string
		traces TraceStore
		want   []int
	}{
		{"metadata", nil, ix.MetadataChunks},
		{"metadata and traces", fakeTraces{[]*blockstore.Trace{trace}}, append(slices.Clone(ix.MetadataChunks), notMeta...)},
	} {
		t.Run(c.desc, func(t *testing.T) {
			store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			rf := &recordingFetcher{f: f, chunkSize: chunkSize}
			im, err := store.Open(ix, rf)
			if err != nil {
				t.Fatal(err)
			}
			defer im.Close()
			res := WarmImage(t.Context(), &ResolvedImage{Reference: "s3://b/x:1", Lazy: im, Traces: c.traces})
			got := slices.Sorted(slices.Values(rf.chunks))
			want := slices.Sorted(slices.Values(c.want))
			if diff := cmp.Diff(want, got); diff != "" || res.Fetched != len(want) || res.Failed != 0 {
				t.Errorf("chunks fetched (-want +got):\n%s\nresult %+v", diff, res)
			}
		})
	}
	if res := WarmImage(t.Context(), &ResolvedImage{Reference: "x", EROFSPath: img}); res != (blockstore.PrefetchResult{}) {
		t.Errorf("warming an image read whole: %+v", res)
	}
}

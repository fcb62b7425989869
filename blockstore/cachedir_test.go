package blockstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestCachedBytesRemoveChunks checks what CachedBytes counts and what
// RemoveChunks keeps, on files a Store wrote: chunk files of another
// length do not count, a chunk held twice counts twice, and chunks a kept
// index lists stay.
func TestCachedBytesRemoveChunks(t *testing.T) {
	ctx := t.Context()
	const cs = MinChunkSize
	chunk := func(b byte) []byte { return bytes.Repeat([]byte{b}, cs) }
	// a: chunks x x y z (x twice); b: y w, half a chunk at the end.
	dataA := bytes.Join([][]byte{chunk(1), chunk(1), chunk(2), chunk(3)}, nil)
	dataB := append(chunk(2), chunk(4)[:cs/2]...)
	a, err := BuildIndex(ctx, bytes.NewReader(dataA), cs)
	if err != nil {
		t.Fatal(err)
	}
	b, err := BuildIndex(ctx, bytes.NewReader(dataB), cs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s, err := NewStore(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, ix := range []*Index{a, b} {
		data := dataA
		if ix == b {
			data = dataB
		}
		im, err := s.Open(ix, byteFetcher(data))
		if err != nil {
			t.Fatal(err)
		}
		// Only a's first three chunks and all of b.
		n := ix.Size
		if ix == a {
			n = 3 * cs
		}
		if _, err := im.ReadAt(make([]byte, n), 0); err != nil {
			t.Fatal(err)
		}
		im.Close()
	}
	s.Close()
	if got, want := CachedBytes(dir, a), int64(3*cs); got != want {
		t.Errorf("CachedBytes(a) = %d, want %d", got, want)
	}
	if got, want := CachedBytes(dir, b), b.Size; got != want {
		t.Errorf("CachedBytes(b) = %d, want %d", got, want)
	}
	// A damaged (short) file of chunk y does not count.
	y := ChunkPath(dir, a.Chunks[2])
	if err := os.WriteFile(y, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, want := CachedBytes(dir, a), int64(2*cs); got != want {
		t.Errorf("CachedBytes(a) with a short chunk file = %d, want %d", got, want)
	}

	files, n, err := RemoveChunks(dir, a, []*Index{b})
	if err != nil {
		t.Fatal(err)
	}
	if files != 1 || n != cs {
		t.Errorf("RemoveChunks(a, keep b) = %d files, %d bytes; want x's one file of %d bytes", files, n, cs)
	}
	var left []string
	filepath.WalkDir(filepath.Join(dir, "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			left = append(left, filepath.Base(p))
		}
		return nil
	})
	want := []string{a.Chunks[2], b.Chunks[1]} // y (shared with b) and w
	if want[0] > want[1] {
		want[0], want[1] = want[1], want[0]
	}
	if diff := cmp.Diff(want, left); diff != "" {
		t.Errorf("chunk files left (-want +got):\n%s", diff)
	}
}

// byteFetcher fetches from bytes in memory.
type byteFetcher []byte

func (f byteFetcher) Fetch(_ context.Context, off, length int64) ([]byte, error) {
	return bytes.Clone(f[off : off+length]), nil
}

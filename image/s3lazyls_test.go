package image

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore"
)

// TestLazyListRemove lists and removes s3:// images runs read lazily: two
// images that share chunks (the same file's first MiBs), one cached whole
// and one in part. Removing one keeps the chunks the other lists.
func TestLazyListRemove(t *testing.T) {
	_, client := s3Env(t)
	ctx := t.Context()
	config := testS3ConfigJSON()
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	store, err := c.ChunkStore(0)
	if err != nil {
		t.Fatal(err)
	}
	refA, _ := ParseReference("s3://images/ce/a:v1")
	refB, _ := ParseReference("s3://images/ce/b:v1")
	// open pushes an image holding size random bytes (the same rng: the
	// two images share their data's first bytes) under ref, opens it
	// lazily and reads its first n bytes into the chunk cache.
	open := func(ref Reference, size int, n int64) *blockstore.Index {
		t.Helper()
		file := writeTestEROFSSize(t, t.TempDir(), size)
		if _, err := PushEROFS(ctx, file, config, ref, PushOptions{PullOptions: PullOptions{S3: client}}); err != nil {
			t.Fatal(err)
		}
		img, err := c.OpenS3(ctx, ref, PullOptions{S3: client}, store)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if img.Lazy == nil {
			t.Fatal("not opened lazily")
		}
		if _, err := img.Lazy.ReadAt(make([]byte, min(n, img.Size)), 0); err != nil {
			t.Fatal(err)
		}
		return img.Lazy.Index()
	}
	ixA := open(refA, 3<<20+12345, 1<<40)
	ixB := open(refB, 5<<20+12345, 2*blockstore.DefaultChunkSize)
	c.FlushChunkStore()

	inA, inB := map[string]bool{}, map[string]bool{}
	for _, d := range ixA.Chunks {
		inA[d] = true
	}
	for _, d := range ixB.Chunks {
		inB[d] = true
	}
	var shared, onlyA, onlyB []string
	for d := range inA {
		if inB[d] {
			shared = append(shared, d)
		} else {
			onlyA = append(onlyA, d)
		}
	}
	for d := range inB {
		if !inA[d] {
			onlyB = append(onlyB, d)
		}
	}
	t.Logf("image A: %d chunks, B: %d, shared: %d", len(ixA.Chunks), len(ixB.Chunks), len(shared))
	if len(shared) == 0 || len(onlyA) == 0 {
		t.Fatal("the test images share no chunk, or A has none of its own")
	}
	// B's cached part: its first two chunks, and those A cached.
	var wantB int64
	for i, d := range ixB.Chunks {
		if i < 2 || inA[d] {
			_, l := ixB.ChunkRange(i)
			wantB += l
		}
	}
	hA, _ := v1.NewHash(ixDigest(t, c, ixA))
	hB, _ := v1.NewHash(ixDigest(t, c, ixB))

	type row struct {
		Reference   string
		Digest      v1.Hash
		Platform    string
		Size        int64
		CachedBytes int64
		Lazy        bool
	}
	list := func() []row {
		t.Helper()
		l, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var rows []row
		for _, img := range l {
			if img.LastUsed.IsZero() {
				t.Errorf("%s: no last use", img.Reference)
			}
			rows = append(rows, row{img.Reference, img.Digest, img.Platform, img.Size, img.CachedBytes, img.Lazy})
		}
		return rows
	}
	rowA := row{refA.String(), hA, DefaultPlatform(), ixA.Size, ixA.Size, true}
	rowB := row{refB.String(), hB, DefaultPlatform(), ixB.Size, wantB, true}
	if diff := cmp.Diff([]row{rowA, rowB}, list()); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}

	chunkThere := func(d string) bool { return exists(blockstore.ChunkPath(c.path(s3LazyDir), d)) }
	rep, err := c.Remove(ctx, refA)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&RemoveReport{Untagged: []string{refA.String()}, Deleted: []v1.Hash{hA}, Chunks: len(onlyA), Bytes: rep.Bytes}, rep); diff != "" {
		t.Errorf("Remove %s (-want +got):\n%s", refA, diff)
	}
	if rep.Bytes < int64(len(onlyA)-1)*blockstore.DefaultChunkSize {
		t.Errorf("Remove freed %d bytes, want at least the %d chunks of A's own", rep.Bytes, len(onlyA))
	}
	for _, d := range onlyA {
		if chunkThere(d) {
			t.Errorf("chunk %s of the removed image only is still cached", d[:12])
		}
	}
	for _, d := range shared {
		if !chunkThere(d) {
			t.Errorf("chunk %s that B shares was removed", d[:12])
		}
	}
	if exists(c.s3IndexPath(hA)) || exists(c.s3RefPath(refA.String())) {
		t.Error("the removed image's index or tag record is still there")
	}
	rowB.CachedBytes = blockstore.CachedBytes(c.path(s3LazyDir), ixB)
	if rowB.CachedBytes == 0 || rowB.CachedBytes != wantB {
		t.Errorf("B's cached bytes after removing A: %d, want %d", rowB.CachedBytes, wantB)
	}
	if diff := cmp.Diff([]row{rowB}, list()); diff != "" {
		t.Errorf("List after rm (-want +got):\n%s", diff)
	}
	if _, err := c.Remove(ctx, refA); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no such image in the cache: s3://images/ce/a:v1") {
		t.Errorf("Remove again: %v; want ErrNotFound naming the reference", err)
	}

	// A pinned open is listed by its pinned reference, and a second
	// record of the same digest keeps the image when the tag goes.
	pinned, _ := PinS3(refB.String(), hB.String())
	pinnedRef, _ := ParseReference(pinned)
	img, err := c.OpenS3(ctx, pinnedRef, PullOptions{S3: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	if _, err := c.Remove(ctx, refB); err != nil {
		t.Fatal(err)
	}
	rowB.Reference = pinned
	if diff := cmp.Diff([]row{rowB}, list()); diff != "" {
		t.Errorf("List after removing B's tag (-want +got):\n%s", diff)
	}
	rep, err = c.RemoveID(ctx, hB.Hex[:12])
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 1 || rep.Deleted[0] != hB || rep.Chunks == 0 {
		t.Errorf("RemoveID = %+v; want B deleted with its chunks", rep)
	}
	for _, d := range ixB.Chunks {
		if chunkThere(d) {
			t.Errorf("chunk %s of B is still cached", d[:12])
		}
	}
	if l := list(); len(l) != 0 {
		t.Errorf("List after removing everything: %+v", l)
	}

	// Prune removes lazy indexes no record names.
	img, err = c.OpenS3(ctx, pinnedRef, PullOptions{S3: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	os.Remove(c.s3RefPath(pinned))
	rep, err = c.Prune(ctx, PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 1 || rep.Deleted[0] != hB || exists(c.s3IndexPath(hB)) {
		t.Errorf("Prune = %+v; want the unnamed lazy image removed", rep)
	}
	if _, err := os.Stat(filepath.Join(c.path(s3LazyDir), "chunks")); err != nil {
		t.Errorf("the chunk store's directory: %v", err)
	}

	// rm NAME@DIGEST removes the tags of NAME that resolved to DIGEST.
	img, err = c.OpenS3(ctx, refA, PullOptions{S3: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	pinnedA, _ := PinS3(refA.String(), hA.String())
	pinnedARef, _ := ParseReference(pinnedA)
	rep, err = c.Remove(ctx, pinnedARef)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&RemoveReport{Untagged: []string{refA.String()}, Deleted: []v1.Hash{hA}, Bytes: rep.Bytes}, rep); diff != "" {
		t.Errorf("Remove %s (-want +got):\n%s", pinnedA, diff)
	}
	if exists(c.s3RefPath(refA.String())) || exists(c.s3IndexPath(hA)) {
		t.Error("the tag record or the index is still there")
	}

	// Read lazily, then pulled whole: listed both ways, removed both ways.
	img, err = c.OpenS3(ctx, refA, PullOptions{S3: client}, store)
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	if _, err := c.Pull(ctx, refA, PullOptions{S3: client}); err != nil {
		t.Fatal(err)
	}
	l, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 || l[0].Reference != refA.String() || l[1].Reference != refA.String() || l[0].Lazy == l[1].Lazy {
		t.Errorf("List of an image read lazily and pulled: %+v; want it once whole, once lazy", l)
	}
	rep, err = c.Remove(ctx, refA)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&RemoveReport{Untagged: []string{refA.String()}, Deleted: []v1.Hash{hA}, Blobs: rep.Blobs, Bytes: rep.Bytes}, rep); diff != "" {
		t.Errorf("Remove of an image read lazily and pulled (-want +got):\n%s", diff)
	}
	if l, _ := c.List(ctx); len(l) != 0 {
		t.Errorf("List after Remove: %+v", l)
	}
}

// ixDigest returns the digest of the cache's copy of ix: the image digest.
func ixDigest(t *testing.T, c *Cache, ix *blockstore.Index) string {
	t.Helper()
	entries, err := c.scanLazy()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.ix.Digest == ix.Digest {
			return e.digest.String()
		}
	}
	t.Fatalf("no local index for image %s", ix.Digest)
	return ""
}

package image

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/erofs"
)

func TestTraceKey(t *testing.T) {
	a, b := TraceKey("a b"), TraceKey("a", "b")
	if a == b || len(a) != 64 || !isLowerHex(a) {
		t.Errorf("TraceKey(\"a b\") = %s, TraceKey(\"a\", \"b\") = %s: want two different 64-hex keys", a, b)
	}
	if TraceKey("a", "b") != b {
		t.Error("TraceKey is not deterministic")
	}
}

// TestS3Traces stores and loads traces beside a pushed image in versitygw:
// none at first, the first one saved stays, and objects that are not a
// valid trace of the image are refused naming their key.
func TestS3Traces(t *testing.T) {
	g, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	ref, _ := ParseReference("s3://images/team/tool:v1")
	res, err := PushEROFS(ctx, file, DefaultEROFSConfig(), ref, PushOptions{PullOptions: PullOptions{S3: client}})
	if err != nil {
		t.Fatal(err)
	}
	ib, err := client.ReadAll(ctx, "images", "team/indexes/sha256/"+res.Digest.Hex+".json", blockstore.MaxIndexBytes)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := blockstore.DecodeIndex(ib)
	if err != nil {
		t.Fatal(err)
	}
	key := TraceKey("/bin/tool", "-v", "/")
	objKey := "team/traces/sha256/" + res.Digest.Hex + "/" + key + ".json"
	objFile := filepath.Join(g.Dir, "images", objKey)

	if tr, err := LoadS3Trace(ctx, client, ref, res.Digest, ix, key); tr != nil || err != nil {
		t.Fatalf("LoadS3Trace before any was saved = %v, %v; want nil, nil", tr, err)
	}
	first := &blockstore.Trace{Version: 1, Image: ix.Digest, ChunkSize: ix.ChunkSize, Chunks: []int{3, 0, 1}}
	if wrote, err := SaveS3Trace(ctx, client, ref, res.Digest, ix, key, first); !wrote || err != nil {
		t.Fatalf("first SaveS3Trace = %v, %v; want it written", wrote, err)
	}
	if _, err := os.Stat(objFile); err != nil {
		t.Errorf("the trace is not at %s: %v", objKey, err)
	}
	second := &blockstore.Trace{Version: 1, Image: ix.Digest, ChunkSize: ix.ChunkSize, Chunks: []int{2}}
	if wrote, err := SaveS3Trace(ctx, client, ref, res.Digest, ix, key, second); wrote || err != nil {
		t.Errorf("second SaveS3Trace = %v, %v; want not written, no error", wrote, err)
	}
	got, err := LoadS3Trace(ctx, client, ref, res.Digest, ix, key)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(first, got); d != "" {
		t.Errorf("loaded trace (-first saved +got):\n%s", d)
	}
	// Another command's trace is another object.
	if tr, err := LoadS3Trace(ctx, client, ref, res.Digest, ix, TraceKey("/bin/other")); tr != nil || err != nil {
		t.Errorf("LoadS3Trace of another command = %v, %v; want nil, nil", tr, err)
	}
	if wrote, err := SaveS3Trace(ctx, client, ref, res.Digest, ix, TraceKey("/bin/other"), &blockstore.Trace{Version: 1, Image: ix.Digest, ChunkSize: ix.ChunkSize}); wrote || err != nil {
		t.Errorf("SaveS3Trace of an empty trace = %v, %v; want not written, no error", wrote, err)
	}

	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("not a trace")},
		{"chunk out of range", []byte(`{"version":1,"image":"` + ix.Digest + `","chunkSize":524288,"chunks":[99]}`)},
		{"other image", []byte(`{"version":1,"image":"sha256:` + strings.Repeat("0", 64) + `","chunkSize":524288,"chunks":[1]}`)},
		{"too big", bytes.Repeat([]byte(" "), blockstore.MaxTraceBytes+1)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(objFile, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			tr, err := LoadS3Trace(ctx, client, ref, res.Digest, ix, key)
			t.Logf("the error: %v", err)
			if tr != nil || err == nil || !strings.Contains(err.Error(), objKey) {
				t.Errorf("LoadS3Trace = %v, %v; want an error naming %s", tr, err, objKey)
			}
			if tt.name != "too big" && !errors.Is(err, blockstore.ErrInvalidTrace) {
				t.Errorf("error does not wrap ErrInvalidTrace: %v", err)
			}
		})
	}

	if _, err := LoadS3Trace(ctx, client, ref, res.Digest, ix, "../x"); err == nil {
		t.Error("LoadS3Trace with key ../x: no error")
	}
	local, _ := ParseReference("alpine:3")
	if _, err := SaveS3Trace(ctx, client, local, res.Digest, ix, key, first); err == nil {
		t.Error("SaveS3Trace beside a registry image: no error")
	}
	bad := &blockstore.Trace{Version: 1, Image: ix.Digest, ChunkSize: ix.ChunkSize, Chunks: []int{1, 1}}
	if _, err := SaveS3Trace(ctx, client, ref, res.Digest, ix, TraceKey("dup"), bad); !errors.Is(err, blockstore.ErrInvalidTrace) {
		t.Errorf("SaveS3Trace of an invalid trace: %v; want ErrInvalidTrace", err)
	}
}

// TestS3PushMetadataChunks: the pushed index lists the chunks the
// image's metadata is in, as the reader's walk finds it.
func TestS3PushMetadataChunks(t *testing.T) {
	_, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	ref, _ := ParseReference("s3://images/tool:v1")
	res, err := PushEROFS(ctx, file, DefaultEROFSConfig(), ref, PushOptions{PullOptions: PullOptions{S3: client}})
	if err != nil {
		t.Fatal(err)
	}
	ib, err := client.ReadAll(ctx, "images", "indexes/sha256/"+res.Digest.Hex+".json", blockstore.MaxIndexBytes)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := blockstore.DecodeIndex(ib)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rs, err := erofs.MetadataRanges(f, ix.Size)
	if err != nil {
		t.Fatal(err)
	}
	want := chunksOfRanges(rs, ix)
	if len(want) == 0 {
		t.Fatal("no metadata found")
	}
	if d := cmp.Diff(want, ix.MetadataChunks); d != "" {
		t.Errorf("metadata chunks in the index (-walk +index):\n%s", d)
	}
	// pe's writer puts the metadata first: a few KiB here, in chunk 0.
	if d := cmp.Diff([]int{0}, ix.MetadataChunks); d != "" {
		t.Errorf("metadata chunks of pe's image (-want +got):\n%s", d)
	}
	t.Logf("metadata chunks %v of %d", ix.MetadataChunks, len(ix.Chunks))
}

func TestChunksOfRanges(t *testing.T) {
	ix := &blockstore.Index{Size: 10*4096 + 100, ChunkSize: 4096}
	for _, tt := range []struct {
		name string
		rs   []erofs.ByteRange
		want []int
	}{
		{"none", nil, nil},
		{"first byte", []erofs.ByteRange{{Off: 0, Len: 1}}, []int{0}},
		{"chunk exactly", []erofs.ByteRange{{Off: 4096, Len: 4096}}, []int{1}},
		{"across", []erofs.ByteRange{{Off: 4095, Len: 2}}, []int{0, 1}},
		{"shared chunk once", []erofs.ByteRange{{Off: 0, Len: 10}, {Off: 100, Len: 10}, {Off: 4000, Len: 200}}, []int{0, 1}},
		{"last partial", []erofs.ByteRange{{Off: 10 * 4096, Len: 100}}, []int{10}},
		{"past the end", []erofs.ByteRange{{Off: 10*4096 + 50, Len: 1 << 20}, {Off: 1 << 30, Len: 1}}, []int{10}},
		{"empty range", []erofs.ByteRange{{Off: 8192, Len: 0}}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, chunksOfRanges(tt.rs, ix)); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

// TestBuildEROFSMetadataFirst: pe image build-erofs (through its
// atomically renamed output file) lays the metadata out first, in one
// range from the image's start.
func TestBuildEROFSMetadataFirst(t *testing.T) {
	src := t.TempDir()
	for i := range 50 {
		d := filepath.Join(src, "d"+strconv.Itoa(i%5))
		os.MkdirAll(d, 0o755)
		if err := os.WriteFile(filepath.Join(d, "f"+strconv.Itoa(i)), bytes.Repeat([]byte{byte(i)}, 5000+i*3000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("d0/f0", filepath.Join(src, "link"))
	out := filepath.Join(t.TempDir(), "out.erofs")
	if err := BuildEROFS(t.Context(), src, out, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	rs, err := erofs.MetadataRanges(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Off != 0 || rs[0].Len*4 > fi.Size() {
		t.Errorf("metadata ranges %v of a %d-byte image: want one, from 0", rs, fi.Size())
	}
}

// TestS3TraceTwoMachines: a first run reads an image lazily from the
// bucket, recording its trace, and saves it there; a second run with an
// empty cache elsewhere loads it, prefetches the plan (trace, then the
// metadata) and its reads then find every chunk cached: no demand read
// waits for the bucket.
func TestS3TraceTwoMachines(t *testing.T) {
	_, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	ref, _ := ParseReference("s3://images/team/tool:v1")
	res, err := PushEROFS(ctx, file, DefaultEROFSConfig(), ref, PushOptions{PullOptions: PullOptions{S3: client}})
	if err != nil {
		t.Fatal(err)
	}
	ib, err := client.ReadAll(ctx, "images", "team/indexes/sha256/"+res.Digest.Hex+".json", blockstore.MaxIndexBytes)
	if err != nil {
		t.Fatal(err)
	}
	ix, err := blockstore.DecodeIndex(ib)
	if err != nil {
		t.Fatal(err)
	}
	blob := client.Object("images", "team/blobs/sha256/"+lazyBlobHex(ix))
	key := TraceKey("/bin/tool", "/")

	// The program: mount, look up the tool, read 100 KiB at its middle.
	runProgram := func(t *testing.T, im *blockstore.Image) {
		t.Helper()
		fsys, err := erofs.OpenSize(im, im.Size())
		if err != nil {
			t.Fatal(err)
		}
		f, err := fsys.Open("bin/tool")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.(io.ReaderAt).ReadAt(make([]byte, 100<<10), 3<<19); err != nil {
			t.Fatal(err)
		}
	}
	open := func(t *testing.T) *blockstore.Image {
		t.Helper()
		s, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		im, err := s.Open(ix, blob)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { im.Close() })
		return im
	}

	first := open(t)
	if tr, err := LoadS3Trace(ctx, client, ref, res.Digest, ix, key); tr != nil || err != nil {
		t.Fatalf("a trace before the first run: %v, %v", tr, err)
	}
	first.StartTrace(0)
	runProgram(t, first)
	if st := first.Stats(); st.Misses == 0 {
		t.Fatalf("the first run missed nothing: %+v", st)
	}
	if wrote, err := SaveS3Trace(ctx, client, ref, res.Digest, ix, key, first.Trace()); !wrote || err != nil {
		t.Fatalf("SaveS3Trace = %v, %v", wrote, err)
	}
	t.Logf("trace %v, metadata chunks %v", first.Trace().Chunks, ix.MetadataChunks)

	second := open(t)
	tr, err := LoadS3Trace(ctx, client, ref, res.Digest, ix, key)
	if err != nil || tr == nil {
		t.Fatalf("LoadS3Trace = %v, %v", tr, err)
	}
	p := second.PrefetchOrder(ctx, blockstore.PrefetchPlan(ix, tr), 4).Wait()
	if p.Err != nil || p.Fetched != len(blockstore.PrefetchPlan(ix, tr)) {
		t.Fatalf("prefetch: %+v", p)
	}
	before := second.Stats()
	runProgram(t, second)
	after := second.Stats()
	// Joins are allowed: a chunk whose prefetch ended is served from its
	// flight until its cache file is written.
	if after.Misses != before.Misses || after.Gets != before.Gets {
		t.Errorf("the second run's reads fetched: misses %d→%d, GETs %d→%d; want every chunk there",
			before.Misses, after.Misses, before.Gets, after.Gets)
	}
}

package blockstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/pierrec/lz4/v4"
)

// packableImage returns an image of chunks of chunk size cs that pack in
// different ways: text that compresses well, random bytes that do not
// (stored raw), zeros, and a short last chunk.
func packableImage(t testing.TB, cs int64) ([]byte, *Index) {
	t.Helper()
	r := rand.NewChaCha8([32]byte{7})
	random := make([]byte, cs)
	r.Read(random)
	text := []byte(strings.Repeat("int main(void) { return 0; } /* pe */\n", int(cs)/38+1))[:cs]
	var data []byte
	data = append(data, text...)
	data = append(data, random...)
	data = append(data, make([]byte, cs)...)
	data = append(data, text[:cs/3]...)
	ix, err := BuildIndex(t.Context(), bytes.NewReader(data), cs)
	if err != nil {
		t.Fatal(err)
	}
	return data, ix
}

// packedBytes returns the packed object of the image.
func packedBytes(t testing.TB, data []byte, ix *Index) []byte {
	t.Helper()
	p, err := BuildPacked(t.Context(), bytes.NewReader(data), ix)
	if err != nil {
		t.Fatal(err)
	}
	ix.Packed = p
	obj, err := io.ReadAll(NewPackedReader(t.Context(), bytes.NewReader(data), ix, p))
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func TestPacked(t *testing.T) {
	data, ix := packableImage(t, cs)
	obj := packedBytes(t, data, ix)
	p := ix.Packed
	if sum := sha256.Sum256(obj); "sha256:"+hex.EncodeToString(sum[:]) != p.Digest || int64(len(obj)) != p.Size() {
		t.Fatalf("packed object: %d bytes with a different digest than Packed's %s of %d bytes", len(obj), p.Digest, p.Size())
	}
	// text shrinks, random bytes are stored raw, zeros shrink most.
	if !(p.Sizes[0] < cs/4 && p.Sizes[1] == cs && p.Sizes[2] < p.Sizes[0] && p.Sizes[3] < cs/3/4) {
		t.Errorf("stored sizes %v for chunks of %d (text, random, zeros, a third of text)", p.Sizes, cs)
	}
	back := reencode(t, ix)
	if d := cmp.Diff(ix, back, cmp.AllowUnexported(Packed{})); d != "" {
		t.Errorf("decoded index (-encoded +decoded):\n%s", d)
	}
	for i := range ix.Chunks {
		off, n := back.PackedRange(i)
		coff, cn := back.ChunkRange(i)
		got, err := UnpackChunk(back.Packed.Codec, obj[off:off+n], cn)
		if err != nil || !bytes.Equal(got, data[coff:coff+cn]) {
			t.Errorf("chunk %d: unpacked %d bytes, %v; equal to the image's: %v", i, len(got), err, bytes.Equal(got, data[coff:coff+cn]))
		}
	}
}

// TestPackedReaderChecks: an image that changed between indexing and
// upload, and one that changed between packing and upload, make the
// upload's reader fail, never end as if all were well.
func TestPackedReaderChecks(t *testing.T) {
	data, ix := packableImage(t, cs)
	p, err := BuildPacked(t.Context(), bytes.NewReader(data), ix)
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Clone(data)
	changed[cs+7] ^= 1
	if _, err := BuildPacked(t.Context(), bytes.NewReader(changed), ix); err == nil || !strings.Contains(err.Error(), "chunk 1 of the image changed") {
		t.Errorf("BuildPacked of a changed image: %v", err)
	}
	if _, err := io.ReadAll(NewPackedReader(t.Context(), bytes.NewReader(changed), ix, p)); err == nil || !strings.Contains(err.Error(), "chunk 1 of the image changed") {
		t.Errorf("reading a changed image packed: %v", err)
	}
	other := *p
	other.Digest = "sha256:" + strings.Repeat("0", 64)
	if _, err := io.ReadAll(NewPackedReader(t.Context(), bytes.NewReader(data), ix, &other)); err == nil || !strings.Contains(err.Error(), "not the sha256:0000") {
		t.Errorf("packing to other bytes than indexed: %v", err)
	}
	other = *p
	other.Sizes = append([]int64{p.Sizes[0] + 1}, p.Sizes[1:]...)
	if _, err := io.ReadAll(NewPackedReader(t.Context(), bytes.NewReader(data), ix, &other)); err == nil || !strings.Contains(err.Error(), "chunk 0 packed to") {
		t.Errorf("packing to other sizes than indexed: %v", err)
	}
}

func TestUnpackChunkErrors(t *testing.T) {
	text := []byte(strings.Repeat("abcdefgh", 512))
	var c lz4.Compressor
	block, err := PackChunk(&c, text, nil)
	if err != nil || len(block) >= len(text) {
		t.Fatalf("PackChunk: %d bytes, %v", len(block), err)
	}
	for _, tt := range []struct {
		name   string
		codec  string
		stored []byte
		length int64
	}{
		{"unknown codec", "zstd", block, int64(len(text))},
		{"longer than the chunk", CodecLZ4, append(bytes.Clone(text), 0), int64(len(text))},
		{"decodes shorter", CodecLZ4, block, int64(len(text)) + 1},
		{"decodes longer", CodecLZ4, block, int64(len(text)) - 1},
		{"truncated block", CodecLZ4, block[:len(block)/2], int64(len(text))},
		{"garbage", CodecLZ4, []byte{0xff, 0xff, 0xff, 0xff}, 4096},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := UnpackChunk(tt.codec, tt.stored, tt.length)
			if !errors.Is(err, ErrBadPackedChunk) {
				t.Errorf("UnpackChunk = %d bytes, %v; want ErrBadPackedChunk", len(got), err)
			}
		})
	}
	if got, err := UnpackChunk(CodecLZ4, block, int64(len(text))); err != nil || !bytes.Equal(got, text) {
		t.Errorf("the good block: %v", err)
	}
}

// TestStorePacked reads a packed image through the store: the same bytes
// as the image, fewer fetched, and a stored chunk corrupted in storage is
// refetched once, then refused, never served.
func TestStorePacked(t *testing.T) {
	data, ix := packableImage(t, cs)
	obj := packedBytes(t, data, ix)
	s := newStore(t, Options{})
	im := openImage(t, s, ix, &fakeFetcher{data: obj})
	got := make([]byte, len(data))
	if n, err := im.ReadAtContext(t.Context(), got, 0); err != nil || n != len(data) || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, %v; equal %v", n, err, bytes.Equal(got, data))
	}
	if st := im.Stats(); st.BytesFetched != int64(len(obj)) || st.BytesFetched >= int64(len(data)) {
		t.Errorf("fetched %d bytes, want the packed object's %d (the image has %d)", st.BytesFetched, len(obj), len(data))
	}

	for _, tt := range []struct {
		name    string
		corrupt func(n int64) bool
		wantErr bool
	}{
		{"corrupt once, refetched", func(n int64) bool { return n == 1 }, false},
		{"corrupt always, refused", func(int64) bool { return true }, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, Options{})
			im := openImage(t, s, ix, &fakeFetcher{data: obj, corrupt: tt.corrupt})
			p := make([]byte, 100)
			n, err := im.ReadAtContext(t.Context(), p, 10) // chunk 0: compressed
			if !tt.wantErr {
				if err != nil || !bytes.Equal(p, data[10:110]) {
					t.Fatalf("read = %d, %v", n, err)
				}
				return
			}
			de, ok := errorsAs[*DigestError](err)
			if !ok || n != 0 || !bytes.Equal(p, make([]byte, 100)) {
				t.Fatalf("read = %d, %v; want 0 bytes and a *DigestError", n, err)
			}
			if de.Chunk != 0 || de.Want != ix.Chunks[0] {
				t.Errorf("DigestError %+v", de)
			}
		})
	}
}

// FuzzUnpackChunk feeds UnpackChunk arbitrary stored bytes: it must not
// panic, and what it accepts is exactly the asked length.
func FuzzUnpackChunk(f *testing.F) {
	var c lz4.Compressor
	text := []byte(strings.Repeat("int main(void) { return 0; }\n", 200))
	block, _ := PackChunk(&c, text, nil)
	f.Add(block, int64(len(text)))
	f.Add(block[:len(block)-3], int64(len(text)))
	f.Add([]byte("raw chunk bytes"), int64(15))
	f.Add([]byte{0xf0, 0xff, 0xff, 0xff, 0xff, 0x00}, int64(1<<20))
	f.Fuzz(func(t *testing.T, stored []byte, length int64) {
		if length < 0 || length > 4<<20 {
			return
		}
		got, err := UnpackChunk(CodecLZ4, stored, length)
		if err != nil {
			if !errors.Is(err, ErrBadPackedChunk) {
				t.Fatalf("error %v does not wrap ErrBadPackedChunk", err)
			}
			return
		}
		if int64(len(got)) != length {
			t.Fatalf("%d bytes for a chunk of %d", len(got), length)
		}
	})
}

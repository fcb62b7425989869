package blockstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sumHex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestBuildIndexFile(t *testing.T) {
	data, _ := testImage(t, 3*8192+100, 8192)
	path := filepath.Join(t.TempDir(), "img.erofs")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name      string
		chunkSize int64
		want      *Index
	}{
		{"8 KiB chunks, short last", 8192, &Index{
			Version: 1, Digest: "sha256:" + sumHex(data), Size: int64(len(data)), ChunkSize: 8192,
			Chunks: []string{sumHex(data[:8192]), sumHex(data[8192:16384]), sumHex(data[16384:24576]), sumHex(data[24576:])},
		}},
		{"default chunk size, one chunk", 0, &Index{
			Version: 1, Digest: "sha256:" + sumHex(data), Size: int64(len(data)), ChunkSize: DefaultChunkSize,
			Chunks: []string{sumHex(data)},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BuildIndexFile(t.Context(), path, tt.chunkSize)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("index (-want +got):\n%s", d)
			}
			if d := cmp.Diff(got, reencode(t, got)); d != "" {
				t.Errorf("decoded index (-encoded +decoded):\n%s", d)
			}
		})
	}
	if _, err := BuildIndexFile(t.Context(), path, 1000); err == nil {
		t.Error("chunk size 1000 accepted")
	}
	if _, err := BuildIndexFile(t.Context(), filepath.Join(t.TempDir(), "none"), 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want ErrNotExist", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o644)
	if _, err := BuildIndexFile(t.Context(), empty, 0); !errors.Is(err, ErrInvalidIndex) {
		t.Errorf("empty file: err = %v, want ErrInvalidIndex", err)
	}
}

func TestDecodeIndexErrors(t *testing.T) {
	d := strings.Repeat("ab", 32)
	valid := `{"version":1,"digest":"sha256:` + d + `","size":5000,"chunkSize":4096,"chunks":["` + d + `","` + d + `"]}`
	if _, err := DecodeIndex([]byte(valid)); err != nil {
		t.Fatalf("valid index: %v", err)
	}
	for _, tt := range []struct {
		name, in, want string
	}{
		{"empty", ``, "EOF"},
		{"not json", `nope`, "invalid character"},
		{"array", `[]`, "cannot unmarshal array"},
		{"trailing data", valid + `{}`, "data after"},
		{"unknown field", strings.Replace(valid, `"size"`, `"extra":1,"size"`, 1), "unknown field"},
		{"version 2", strings.Replace(valid, `"version":1`, `"version":2`, 1), "version 2"},
		{"no digest", strings.Replace(valid, `"sha256:`+d+`"`, `""`, 1), "image digest"},
		{"md5 digest", strings.Replace(valid, `sha256:`, `md5:`, 1), "image digest"},
		{"uppercase digest", strings.Replace(valid, `sha256:`+d, `sha256:`+strings.ToUpper(d), 1), "image digest"},
		{"zero size", strings.Replace(valid, `"size":5000`, `"size":0`, 1), "image size 0"},
		{"negative size", strings.Replace(valid, `"size":5000`, `"size":-1`, 1), "image size -1"},
		{"huge size", strings.Replace(valid, `"size":5000`, `"size":9000000000000000`, 1), "image size"},
		{"chunk size not a multiple", strings.Replace(valid, `"chunkSize":4096`, `"chunkSize":4097`, 1), "chunk size 4097"},
		{"chunk size zero", strings.Replace(valid, `"chunkSize":4096`, `"chunkSize":0`, 1), "chunk size 0"},
		{"chunk size too big", strings.Replace(valid, `"chunkSize":4096`, `"chunkSize":134217728`, 1), "chunk size"},
		{"too few chunks", strings.Replace(valid, `"size":5000`, `"size":9000`, 1), "2 chunk digests"},
		{"too many chunks", strings.Replace(valid, `"size":5000`, `"size":4096`, 1), "2 chunk digests"},
		{"short chunk digest", strings.Replace(valid, `"chunks":["`+d, `"chunks":["abc`, 1), "chunk 0 digest"},
		{"null chunk", strings.Replace(valid, `"chunks":["`+d+`"`, `"chunks":[null`, 1), "chunk 0 digest"},
		{"metadata chunk out of range", strings.Replace(valid, `"chunks"`, `"metadataChunks":[0,2],"chunks"`, 1), "metadata chunk entry 1 is 2"},
		{"metadata chunks not increasing", strings.Replace(valid, `"chunks"`, `"metadataChunks":[1,0],"chunks"`, 1), "metadata chunk entry 1 is 0"},
		{"metadata chunk twice", strings.Replace(valid, `"chunks"`, `"metadataChunks":[1,1],"chunks"`, 1), "metadata chunk entry 1 is 1"},
		{"negative metadata chunk", strings.Replace(valid, `"chunks"`, `"metadataChunks":[-1],"chunks"`, 1), "metadata chunk entry 0 is -1"},
		{"size as string", strings.Replace(valid, `"size":5000`, `"size":"5000"`, 1), "cannot unmarshal string"},
		{"packed: unknown codec", strings.Replace(valid, `"chunks"`, `"packed":{"codec":"zstd","digest":"sha256:`+d+`","sizes":[100,100]},"chunks"`, 1), `codec "zstd"`},
		{"packed: no digest", strings.Replace(valid, `"chunks"`, `"packed":{"codec":"lz4","sizes":[100,100]},"chunks"`, 1), "packed object digest"},
		{"packed: too few sizes", strings.Replace(valid, `"chunks"`, `"packed":{"codec":"lz4","digest":"sha256:`+d+`","sizes":[100]},"chunks"`, 1), "1 packed chunk sizes for 2 chunks"},
		{"packed: empty chunk", strings.Replace(valid, `"chunks"`, `"packed":{"codec":"lz4","digest":"sha256:`+d+`","sizes":[0,100]},"chunks"`, 1), "packed chunk 0 is 0 bytes"},
		{"packed: longer than its chunk", strings.Replace(valid, `"chunks"`, `"packed":{"codec":"lz4","digest":"sha256:`+d+`","sizes":[4096,905]},"chunks"`, 1), "packed chunk 1 is 905 bytes, want 1..904"},
		{"packed: unknown field", strings.Replace(valid, `"chunks"`, `"packed":{"codec":"lz4","digest":"sha256:`+d+`","sizes":[1,1],"offsets":[0,1]},"chunks"`, 1), "unknown field"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ix, err := DecodeIndex([]byte(tt.in))
			if err == nil {
				t.Fatalf("DecodeIndex(%q) = %+v, want an error", tt.in, ix)
			}
			if !errors.Is(err, ErrInvalidIndex) {
				t.Errorf("error %v does not wrap ErrInvalidIndex", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
	big := bytes.Repeat([]byte(" "), MaxIndexBytes+1)
	if _, err := ReadIndex(bytes.NewReader(big)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("oversized index: err = %v", err)
	}
}

// FuzzDecodeIndex feeds DecodeIndex arbitrary bytes: it must not panic,
// and what it accepts must survive Encode and DecodeIndex unchanged and
// be usable by a Store (every chunk's range inside the image).
func FuzzDecodeIndex(f *testing.F) {
	d := strings.Repeat("0f", 32)
	f.Add([]byte(`{"version":1,"digest":"sha256:` + d + `","size":5000,"chunkSize":4096,"chunks":["` + d + `","` + d + `"]}`))
	f.Add([]byte(`{"version":1,"digest":"sha256:` + d + `","size":4096,"chunkSize":4096,"chunks":["` + d + `"],"config":{"Env":["A=1"]}}`))
	f.Add([]byte(`{"version":1,"digest":"sha256:` + d + `","size":5000,"chunkSize":4096,"chunks":["` + d + `","` + d + `"],"metadataChunks":[0,1]}`))
	f.Add([]byte(`{"version":1,"digest":"sha256:` + d + `","size":5000,"chunkSize":4096,"chunks":["` + d + `","` + d + `"],"packed":{"codec":"lz4","digest":"sha256:` + d + `","sizes":[1000,904]}}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ix, err := DecodeIndex(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidIndex) {
				t.Fatalf("error %v does not wrap ErrInvalidIndex", err)
			}
			return
		}
		for _, i := range ix.MetadataChunks {
			if i < 0 || i >= len(ix.Chunks) {
				t.Fatalf("metadata chunk %d of %d accepted", i, len(ix.Chunks))
			}
		}
		for i := range ix.Chunks {
			off, n := ix.ChunkRange(i)
			if off < 0 || n <= 0 || n > ix.ChunkSize || off+n > ix.Size {
				t.Fatalf("chunk %d range %d+%d outside image of %d", i, off, n, ix.Size)
			}
		}
		if ix.Packed != nil {
			var end int64
			for i := range ix.Chunks {
				off, n := ix.PackedRange(i)
				_, cn := ix.ChunkRange(i)
				if off != end || n <= 0 || n > cn {
					t.Fatalf("packed chunk %d at %d+%d (after %d), its chunk %d bytes", i, off, n, end, cn)
				}
				end += n
			}
		}
		if d := cmp.Diff(ix, reencode(t, ix), cmp.AllowUnexported(Packed{})); d != "" {
			t.Fatalf("round trip (-first +second):\n%s", d)
		}
	})
}

// reencode returns ix encoded and decoded again, failing t if either
// step fails.
func reencode(t testing.TB, ix *Index) *Index {
	t.Helper()
	enc, err := ix.Encode()
	if err != nil {
		t.Fatalf("the index does not encode: %v", err)
	}
	back, err := DecodeIndex(enc)
	if err != nil {
		t.Fatalf("the encoded index does not decode: %v", err)
	}
	return back
}

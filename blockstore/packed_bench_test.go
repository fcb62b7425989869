package blockstore

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// BenchmarkChunkCodecs compares the packed chunks' codec, LZ4, with zstd
// (its fastest level) and a plain copy, on chunks of a real image:
// PE_BENCH_IMAGE names the file (scripts/bench-lazy-image.sh builds the
// compiler image of docs/benchmarks.md), of which every 16th 512 KiB
// chunk is taken. Each sub-benchmark reports the stored/raw ratio; the
// time is per chunk, so decode MB/s is 0.5 MiB over it.
//
//	PE_BENCH_IMAGE=/work/bench-cache/gcc-1.5g.erofs go test -run '^$' -bench ChunkCodecs ./blockstore
func BenchmarkChunkCodecs(b *testing.B) {
	path := os.Getenv("PE_BENCH_IMAGE")
	if path == "" {
		b.Skip("PE_BENCH_IMAGE is not set: no real image to take chunks from")
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var chunks [][]byte
	for off := int64(0); ; off += 16 * DefaultChunkSize {
		c := make([]byte, DefaultChunkSize)
		n, err := f.ReadAt(c, off)
		if n > 0 {
			chunks = append(chunks, c[:n])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	var raw int64
	for _, c := range chunks {
		raw += int64(len(c))
	}

	var lc lz4.Compressor
	zenc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	zdec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	defer zdec.Close()
	codecs := []struct {
		name   string
		pack   func(c []byte) []byte
		unpack func(stored []byte, n int) []byte
	}{
		{"copy", bytes.Clone, func(s []byte, _ int) []byte { return bytes.Clone(s) }},
		{"lz4", func(c []byte) []byte {
			s, err := PackChunk(&lc, c, nil)
			if err != nil {
				b.Fatal(err)
			}
			return bytes.Clone(s)
		}, func(s []byte, n int) []byte {
			out, err := UnpackChunk(CodecLZ4, s, int64(n))
			if err != nil {
				b.Fatal(err)
			}
			return out
		}},
		{"zstd-fastest", func(c []byte) []byte { return zenc.EncodeAll(c, nil) }, func(s []byte, n int) []byte {
			out, err := zdec.DecodeAll(s, make([]byte, 0, n))
			if err != nil || len(out) != n {
				b.Fatal(err)
			}
			return out
		}},
	}
	for _, c := range codecs {
		stored := make([][]byte, len(chunks))
		var packed int64
		for i, ch := range chunks {
			stored[i] = c.pack(ch)
			packed += int64(len(stored[i]))
		}
		b.Run(c.name+"/pack", func(b *testing.B) {
			b.SetBytes(DefaultChunkSize)
			for i := 0; b.Loop(); i++ {
				c.pack(chunks[i%len(chunks)])
			}
			b.ReportMetric(float64(packed)/float64(raw), "stored/raw")
		})
		b.Run(c.name+"/unpack", func(b *testing.B) {
			b.SetBytes(DefaultChunkSize)
			for i := 0; b.Loop(); i++ {
				k := i % len(chunks)
				c.unpack(stored[k], len(chunks[k]))
			}
			b.ReportMetric(float64(packed)/float64(raw), "stored/raw")
		})
	}
}

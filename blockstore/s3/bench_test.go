package s3

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The figures for docs/benchmarks.md, against versitygw on loopback:
//
//	go test -run '^$' -bench . -benchtime 3x ./blockstore/s3/   (throughput)
//	go test -run '^$' -bench ReadRange1MiB ./blockstore/s3/      (latency)

// benchObject writes size random bytes straight into versitygw's posix
// root (an object is a plain file there), so a read benchmark does not
// wait for an upload.
func benchObject(b *testing.B, g gateway, bucket, key string, size int) {
	b.Helper()
	path := filepath.Join(g.dir, bucket, key)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, randomBytes(b, size), 0o644); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkReadRange1MiB: one 1 MiB ranged GET, read to the end; ns/op is
// its latency.
func BenchmarkReadRange1MiB(b *testing.B) {
	g := startVersitygw(b)
	bucket := g.bucket(b, "pe-bench")
	benchObject(b, g, bucket, "img", 64<<20)
	c := g.client(b, testSecret)
	b.SetBytes(1 << 20)
	i := int64(0)
	for b.Loop() {
		off := (i % 64) << 20
		i++
		r, err := c.ReadRange(b.Context(), bucket, "img", off, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, r)
		r.Close()
		if err != nil || n != 1<<20 {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
}

// BenchmarkGetObject256MiB: a whole 256 MiB object in one GET; MB/s is
// the throughput.
func BenchmarkGetObject256MiB(b *testing.B) {
	const size = 256 << 20
	g := startVersitygw(b)
	bucket := g.bucket(b, "pe-bench")
	benchObject(b, g, bucket, "img", size)
	c := g.client(b, testSecret)
	b.SetBytes(size)
	for b.Loop() {
		r, _, err := c.GetObject(b.Context(), bucket, "img")
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, r)
		r.Close()
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
}

// BenchmarkUpload256MiB: a 256 MiB multipart upload, 16 MiB parts, 4 in
// flight; MB/s is the throughput (SHA-256 of every part included).
func BenchmarkUpload256MiB(b *testing.B) {
	const size = 256 << 20
	g := startVersitygw(b)
	bucket := g.bucket(b, "pe-bench")
	data := randomBytes(b, size)
	c := g.client(b, testSecret)
	b.SetBytes(size)
	for b.Loop() {
		if _, err := c.Upload(b.Context(), bucket, "up", bytes.NewReader(data), UploadOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFileReadAt1MiB is the reference for BenchmarkReadRange1MiB: the
// same 1 MiB reads straight from the file versitygw serves.
func BenchmarkFileReadAt1MiB(b *testing.B) {
	path := filepath.Join(b.TempDir(), "img")
	if err := os.WriteFile(path, randomBytes(b, 64<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	i := int64(0)
	for b.Loop() {
		if _, err := f.ReadAt(buf, (i%64)<<20); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkFileRead256MiB is the reference for BenchmarkGetObject256MiB:
// the same file read whole from the page cache.
func BenchmarkFileRead256MiB(b *testing.B) {
	const size = 256 << 20
	path := filepath.Join(b.TempDir(), "img")
	if err := os.WriteFile(path, randomBytes(b, size), 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	for b.Loop() {
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, f)
		f.Close()
		if err != nil || n != size {
			b.Fatalf("read %d bytes, %v", n, err)
		}
	}
}

package pearchive

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"testing"
)

// benchTree returns 256 files of 16 KiB in 16 directories plus one 8 MiB
// file, and their total content size.
func benchTree() (map[string]string, int64) {
	m := map[string]string{}
	small := string(bytes.Repeat([]byte("0123456789abcdef"), 1<<10))
	var total int64
	for i := range 256 {
		m[fmt.Sprintf("d%02d/f%03d", i%16, i)] = small
		total += int64(len(small))
	}
	m["big"] = string(bytes.Repeat([]byte{0xa5}, 8<<20))
	return m, total + 8<<20
}

// BenchmarkPackDir measures PackDir from a directory (in the page cache)
// into memory.
func BenchmarkPackDir(b *testing.B) {
	src := b.TempDir()
	m, total := benchTree()
	makeTree(b, src, m)
	var buf bytes.Buffer
	b.SetBytes(total)
	for b.Loop() {
		buf.Reset()
		if err := PackDir(&buf, src, PackOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReader measures reading every entry and its content through a
// Reader that buffers its input itself.
func BenchmarkReader(b *testing.B) {
	src := b.TempDir()
	m, total := benchTree()
	makeTree(b, src, m)
	var buf bytes.Buffer
	if err := PackDir(&buf, src, PackOptions{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	for b.Loop() {
		r := NewReader(noByteReader{bytes.NewReader(buf.Bytes())}, Limits{})
		for {
			_, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkReaderTarReference reads the same tree as a tar stream with
// archive/tar, as a reference for BenchmarkReader.
func BenchmarkReaderTarReference(b *testing.B) {
	m, total := benchTree()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for p, v := range m {
		tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(v))})
		io.WriteString(tw, v)
	}
	tw.Close()
	b.SetBytes(total)
	for b.Loop() {
		tr := tar.NewReader(noByteReader{bytes.NewReader(buf.Bytes())})
		for {
			_, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, tr); err != nil {
				b.Fatal(err)
			}
		}
	}
}

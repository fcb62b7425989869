package erofs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pierrec/lz4/v4"
)

// zData makes test data of the kinds compression meets.
type zData struct{ rng *rand.Rand }

func (z zData) random(n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := z.rng.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(z.rng.Uint32())
	}
	return b
}

var zWords = strings.Fields(`the quick brown fox jumps over lazy dog erofs pcluster lcluster compress
	decompress kernel block inode extent index header compact full lz4 hc window offset literal match
	func return if else for range package import struct type interface error nil true false`)

// text is word salad: compresses about 2 to 3 times, like source code.
func (z zData) text(n int) []byte {
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(zWords[z.rng.IntN(len(zWords))])
		if z.rng.IntN(12) == 0 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

// mixed alternates runs of text, random bytes and zeros of uneven lengths,
// so extents of every kind meet at every offset.
func (z zData) mixed(n int) []byte {
	b := make([]byte, 0, n)
	for len(b) < n {
		k := min(n-len(b), 500+z.rng.IntN(60000))
		switch z.rng.IntN(3) {
		case 0:
			b = append(b, z.text(k)...)
		case 1:
			b = append(b, z.random(k)...)
		default:
			b = append(b, make([]byte, k)...)
		}
	}
	return b
}

// zTree is a tree for compression: sizes around every block and pcluster
// boundary, compressible, random and mixed data, many small files, files
// whose xattrs move the index start to every alignment, and one large
// mixed file of large bytes.
func zTree(large int) *treeSpec {
	z := zData{rand.New(rand.NewPCG(7, 8))}
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	s := &treeSpec{}
	s.add(Entry{Path: "/", Mode: fs.ModeDir | 0o755, ModTime: t0}, nil)
	for _, n := range []int{0, 1, 4095, 4096, 4097, 8191, 8192, 8193, 12289, 16383, 16384, 16385,
		3*16384 - 1, 3*16384 + 1, 65535, 65536, 65537, 3*65536 - 1, 3*65536 + 1, 5*65536 + 7} {
		s.add(Entry{Path: fmt.Sprintf("sizes/text-%d", n), Mode: 0o644, ModTime: t0}, z.text(n))
		s.add(Entry{Path: fmt.Sprintf("sizes/random-%d", n), Mode: 0o644, ModTime: t0}, z.random(n))
		if n > 4096 {
			s.add(Entry{Path: fmt.Sprintf("sizes/mixed-%d", n), Mode: 0o644, ModTime: t0}, z.mixed(n))
			// Compressible up to one byte from a boundary, then random.
			s.add(Entry{Path: fmt.Sprintf("sizes/textend-%d", n), Mode: 0o644, ModTime: t0},
				append(bytes.Repeat([]byte("abc"), (n-1)/3), z.random(n-(n-1)/3*3)...))
		}
	}
	// Larger than the 4 MiB input window of small pclusters: streamed.
	s.add(Entry{Path: "zeros-4.5M", Mode: 0o644, ModTime: t0}, make([]byte, 9<<19+5))
	s.add(Entry{Path: "random-4.2M", Mode: 0o644, ModTime: t0}, z.random(4200005))
	for i := range 200 {
		s.add(Entry{Path: fmt.Sprintf("small/f%03d", i), Mode: 0o644, ModTime: t0}, z.text(10+i*37))
	}
	for i := range 8 {
		e := Entry{Path: fmt.Sprintf("xattr/a%d", i), Mode: 0o600, ModTime: t0,
			Xattrs: map[string][]byte{"user.k": bytes.Repeat([]byte{'v'}, i)}}
		if i%2 == 1 {
			e.UID = 70000 // an extended inode
		}
		s.add(e, z.text(20000+i))
	}
	s.add(Entry{Path: "xattr/many", Mode: 0o644, ModTime: t0, Xattrs: map[string][]byte{
		"user.big": bytes.Repeat([]byte("x"), 2000), "trusted.t": []byte("1")}}, z.mixed(100000))
	s.link("hard/link", "sizes/text-65537")
	s.add(Entry{Path: "links/l", Mode: fs.ModeSymlink | 0o777, Linkname: "../sizes/text-8193", ModTime: t0}, nil)
	s.add(Entry{Path: "mixed/large", Mode: 0o644, ModTime: t0}, z.mixed(large))
	return s
}

// writeDir writes the tree's directories, files, symlinks and hard links
// under dir (no owners or xattrs), as a source for mkfs.erofs.
func (s *treeSpec) writeDir(t testing.TB, dir string) {
	t.Helper()
	for _, it := range s.items {
		p := filepath.Join(dir, it.entry.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case it.linkTo != "":
			err = os.Link(filepath.Join(dir, it.linkTo), p)
		case it.entry.Mode.IsDir():
			err = os.MkdirAll(p, 0o755)
		case it.entry.Mode&fs.ModeSymlink != 0:
			err = os.Symlink(it.entry.Linkname, p)
		case it.entry.Mode.IsRegular():
			err = os.WriteFile(p, it.data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// zCheckContents compares every regular file under src with the image's,
// and returns how many of the image's files are compressed.
func zCheckContents(t *testing.T, fsys *FS, src string) int {
	t.Helper()
	compressed := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		got, err := fsys.ReadFile(rel)
		if err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes read differ from the source's %d", rel, len(got), len(want))
		}
		fi, err := fsys.Stat(rel)
		if err != nil {
			return err
		}
		if l := fi.Sys().(*Stat).Layout; l == layoutCompressedFull || l == layoutCompressedCompact {
			compressed++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return compressed
}

// zLayouts counts the files of each data layout in an image.
func zLayouts(t *testing.T, img string) map[int]int {
	t.Helper()
	fsys := readerOpenFile(t, img)
	out := map[int]int{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := fsys.Stat(p)
		if err == nil {
			out[fi.Sys().(*Stat).Layout]++
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestCompressedMount has Linux mount compressed images in every
// configuration and compares every byte, and has fsck.erofs and pe's
// reader check them. Two configurations, one per index layout, also carry
// a 20 MB file (4 MB with -short).
func TestCompressedMount(t *testing.T) {
	t.Parallel()
	requireRootTool(t, "mount", "fsck.erofs")
	large := 20 << 20
	if testing.Short() {
		large = 4 << 20
	}
	small, big := zTree(300000), zTree(large)
	for _, alg := range []string{CompressionLZ4, CompressionLZ4HC} {
		for _, index := range []string{IndexCompact, IndexFull} {
			for _, pc := range []int{4096, 16384, 65536} {
				opts := WriterOptions{Compression: alg, CompressIndex: index, PclusterSize: pc}
				spec := small
				if alg == CompressionLZ4HC && (index == IndexCompact && pc == 65536 || index == IndexFull && pc == 4096) {
					spec = big
				}
				t.Run(fmt.Sprintf("%s-%s-%d", alg, index, pc), func(t *testing.T) {
					t.Parallel()
					zCheckMounted(t, spec, opts)
				})
			}
		}
	}
}

// zCheckMounted writes spec with opts, checks the image with fsck.erofs,
// compares the mounted image and pe's reader with the source, and checks
// that files were compressed with the layout asked for.
func zCheckMounted(t *testing.T, spec *treeSpec, opts WriterOptions) {
	t.Helper()
	img := spec.write(t, opts)
	want := spec.expected(t, opts)
	if out, err := exec.Command("fsck.erofs", img).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs: %v\n%s", err, out)
	}
	if diff := cmp.Diff(want, hostSnapshot(t, mountImage(t, img))); diff != "" {
		t.Errorf("mounted image differs from the source (-want +got):\n%s", diff)
	}
	checkImageWithReader(t, img, want)
	layouts := zLayouts(t, img)
	wantLayout := layoutCompressedCompact
	if opts.CompressIndex == IndexFull {
		wantLayout = layoutCompressedFull
	}
	if layouts[wantLayout] < 50 {
		t.Errorf("only %d files compressed (layouts %v)", layouts[wantLayout], layouts)
	}
}

// TestCompressedFsckExtract has fsck.erofs extract compressed images and
// compares the files.
func TestCompressedFsckExtract(t *testing.T) {
	t.Parallel()
	requireRootTool(t, "fsck.erofs")
	spec := zTree(3 << 20)
	for _, opts := range []WriterOptions{
		{Compression: CompressionLZ4HC, PclusterSize: 16384},
		{Compression: CompressionLZ4, CompressIndex: IndexFull, PclusterSize: 65536},
	} {
		t.Run(opts.Compression+opts.CompressIndex, func(t *testing.T) {
			t.Parallel()
			img := spec.write(t, opts)
			dir := filepath.Join(t.TempDir(), "x")
			if out, err := exec.Command("fsck.erofs", "--extract="+dir, img).CombinedOutput(); err != nil {
				t.Fatalf("fsck.erofs --extract: %v\n%s", err, out)
			}
			norm := func(_ string, f facts) facts {
				return facts{Type: f.Type, Size: f.Size, Digest: f.Digest, Target: f.Target}
			}
			wantSnap := spec.expected(t, opts).project(norm)
			if diff := cmp.Diff(wantSnap, hostSnapshot(t, dir).project(norm)); diff != "" {
				t.Errorf("fsck.erofs --extract differs from the source (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCompressedChoices checks what gets compressed: compressible files
// above a block, not tiny or incompressible ones, and that compression
// shrinks the image and bigger pclusters shrink it more.
func TestCompressedChoices(t *testing.T) {
	t.Parallel()
	z := zData{rand.New(rand.NewPCG(1, 1))}
	s := &treeSpec{}
	s.add(Entry{Path: "tiny", Mode: 0o644}, z.text(3000))
	s.add(Entry{Path: "text", Mode: 0o644}, z.text(200000))
	s.add(Entry{Path: "random-small", Mode: 0o644}, z.random(100000))
	s.add(Entry{Path: "random-big", Mode: 0o644}, z.random(5<<20+100))
	s.add(Entry{Path: "zeros", Mode: 0o644}, make([]byte, 5<<20))
	layoutOf := func(img, name string) int {
		fi, err := readerOpenFile(t, img).Stat(name)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*Stat).Layout
	}
	size := func(img string) int64 {
		fi, err := os.Stat(img)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	plain := s.write(t, WriterOptions{})
	var last int64
	for _, pc := range []int{4096, 16384, 65536} {
		img := s.write(t, WriterOptions{Compression: CompressionLZ4HC, PclusterSize: pc})
		for name, want := range map[string]int{
			"tiny": layoutFlatInline, "text": layoutCompressedCompact, "zeros": layoutCompressedCompact,
			"random-small": layoutFlatInline, "random-big": layoutFlatPlain,
		} {
			if got := layoutOf(img, name); got != want {
				t.Errorf("pcluster %d: %s has layout %d, want %d", pc, name, got, want)
			}
		}
		n := size(img)
		t.Logf("pcluster %d: %d bytes (uncompressed %d)", pc, n, size(plain))
		if n >= size(plain) || (last != 0 && n > last) {
			t.Errorf("pcluster %d: image of %d bytes, uncompressed %d, previous pcluster %d", pc, n, size(plain), last)
		}
		last = n
		checkImageWithReader(t, img, s.expected(t, WriterOptions{}))
	}
}

// TestCompressedOptions checks option validation.
func TestCompressedOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts WriterOptions
		msg  string
	}{
		{WriterOptions{Compression: "zstd"}, "unknown compression"},
		{WriterOptions{Compression: "lz4", CompressionLevel: 3}, "no compression levels"},
		{WriterOptions{Compression: "lz4hc", CompressionLevel: 13}, "out of range"},
		{WriterOptions{Compression: "lz4hc", CompressionLevel: -1}, "out of range"},
		{WriterOptions{Compression: "lz4", PclusterSize: 5000}, "multiple of the block size"},
		{WriterOptions{Compression: "lz4", PclusterSize: 2 << 20}, "at most"},
		{WriterOptions{Compression: "lz4", CompressIndex: "tiny"}, "unknown index layout"},
		{WriterOptions{Compression: "lz4", BlockSize: 1024}, "4096-byte block size"},
		{WriterOptions{PclusterSize: 8192}, "need Compression"},
	} {
		_, err := NewWriter(&seekBuffer{}, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: error %v, want one saying %q", tc.opts, err, tc.msg)
		}
	}
	for _, o := range []WriterOptions{
		{Compression: "LZ4"}, {Compression: "lz4hc", CompressionLevel: 12, PclusterSize: 1 << 20, CompressIndex: "full"},
	} {
		if _, err := NewWriter(&seekBuffer{}, o); err != nil {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

// seekBuffer is an in-memory io.WriteSeeker.
type seekBuffer struct {
	b   []byte
	off int
}

func (s *seekBuffer) Write(p []byte) (int, error) {
	if need := s.off + len(p); need > len(s.b) {
		s.b = append(s.b, make([]byte, need-len(s.b))...)
	}
	copy(s.b[s.off:], p)
	s.off += len(p)
	return len(p), nil
}

func (s *seekBuffer) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		off += int64(s.off)
	case io.SeekEnd:
		off += int64(len(s.b))
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	s.off = int(off)
	return off, nil
}

// TestCompressFit checks the fixed-output-size fitting on its own: every
// block decodes to exactly the input prefix it claims, within the size,
// and fills it closely.
func TestCompressFit(t *testing.T) {
	t.Parallel()
	z := zData{rand.New(rand.NewPCG(3, 4))}
	inputs := map[string][]byte{
		"text": z.text(1 << 20), "random": z.random(300000), "mixed": z.mixed(1 << 20),
		"zeros": make([]byte, 1<<20), "short": z.text(5000),
	}
	for _, alg := range []string{CompressionLZ4, CompressionLZ4HC} {
		for _, pc := range []int{4096, 16384, 65536} {
			cfg := &compressConfig{alg: alg, level: 9, pcap: pc, compact: true}
			zw := newZwriter(cfg, 4096, false)
			for name, in := range inputs {
				for off := 0; off < len(in); {
					n, blk, err := zw.fit(in[off:], pc)
					if err != nil {
						t.Fatalf("%s/%d/%s at %d: %v", alg, pc, name, off, err)
					}
					if len(blk) > pc || n <= 0 {
						t.Fatalf("%s/%d/%s at %d: %d input bytes in a %d-byte block", alg, pc, name, off, n, len(blk))
					}
					out := make([]byte, n)
					if k, err := lz4.UncompressBlock(blk, out); err != nil || k != n || !bytes.Equal(out, in[off:off+n]) {
						t.Fatalf("%s/%d/%s at %d: block decodes to %d bytes (%v), want %d", alg, pc, name, off, k, err, n)
					}
					if off+n < len(in) && len(blk) < pc-pc/64-32 {
						t.Errorf("%s/%d/%s at %d: block of %d bytes leaves much of %d unused", alg, pc, name, off, len(blk), pc)
					}
					off += n
				}
			}
		}
	}
}

func TestMaxLiterals(t *testing.T) {
	for budget := range 5000 {
		m := maxLiterals(budget)
		if m+litExtra(m) > budget || (m+1)+litExtra(m+1) <= budget {
			t.Fatalf("maxLiterals(%d) = %d", budget, m)
		}
	}
}

// zFuzzOptions picks compression options from a fuzzer byte.
func zFuzzOptions(mode uint8) WriterOptions {
	o := WriterOptions{Compression: CompressionLZ4, PclusterSize: 4096 << (mode >> 2 & 3)}
	if mode&1 != 0 {
		o.Compression = CompressionLZ4HC
		o.CompressionLevel = int(mode>>4%12) + 1
	}
	if mode&2 != 0 {
		o.CompressIndex = IndexFull
	}
	return o
}

// zFuzzFiles adds regular files to spec whose sizes fall around block and
// pcluster boundaries and whose data mixes text, random bytes and zeros,
// all chosen by the fuzzer's bytes.
func zFuzzFiles(spec *treeSpec, data []byte) {
	sizes := []int{4097, 8191, 8193, 16383, 16385, 20000, 65535, 65537, 3*65536 + 1, 300000}
	for i := 0; i+3 <= len(data) && i < 24; i += 3 {
		z := zData{rand.New(rand.NewPCG(uint64(data[i]), uint64(data[i+1])))}
		n := sizes[int(data[i+2])%len(sizes)]
		var body []byte
		switch data[i+2] >> 4 % 4 {
		case 0:
			body = z.text(n)
		case 1:
			body = z.mixed(n)
		case 2:
			body = append(z.text(n/2), z.random(n-n/2)...)
		default:
			body = append(make([]byte, n/3), z.text(n-n/3)...)
		}
		spec.add(Entry{Path: fmt.Sprintf("z/%d", i/3), Mode: 0o644, UID: uint32(data[i]) << 10}, body)
	}
}

// FuzzCompressedWriter writes random trees compressed with random options
// and checks them with pe's reader and, as root, by mounting them.
func FuzzCompressedWriter(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 7, 5, 4, 9, 1, 2, 3, 4, 5, 6}, uint8(0))
	f.Add([]byte("\x01\x02\x00\x01\x02\x03\x01\x02\x03\x04\x05\x06\x00\x01\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"), uint8(0x1f))
	f.Add([]byte{9, 9, 0x29, 3, 4, 0x1b, 7, 7, 0x38, 1, 1, 1}, uint8(0x0e))
	f.Fuzz(func(t *testing.T, data []byte, mode uint8) {
		opts := zFuzzOptions(mode)
		spec := fuzzTree(data)
		zFuzzFiles(spec, data)
		img := spec.write(t, opts)
		want := spec.expected(t, opts)
		checkImageWithReader(t, img, want)
		if os.Geteuid() == 0 {
			if diff := cmp.Diff(want, hostSnapshot(t, mountImage(t, img))); diff != "" {
				t.Errorf("mounted image differs (-want +got):\n%s", diff)
			}
		}
	})
}

// zFuzzBase is an image with one compressed file, and where its map
// header and indexes start and end, for FuzzZMap to overwrite.
type zFuzzBase struct {
	img        []byte
	start, end int
}

var zFuzzBases = sync.OnceValue(func() []zFuzzBase {
	z := zData{rand.New(rand.NewPCG(5, 5))}
	body := z.mixed(200000)
	var out []zFuzzBase
	for _, o := range []WriterOptions{
		{Compression: CompressionLZ4},
		{Compression: CompressionLZ4, CompressIndex: IndexFull},
		{Compression: CompressionLZ4HC, PclusterSize: 16384},
		{Compression: CompressionLZ4HC, PclusterSize: 16384, CompressIndex: IndexFull},
	} {
		var buf seekBuffer
		w, err := NewWriter(&buf, o)
		if err != nil {
			panic(err)
		}
		if err := w.Add(Entry{Path: "f", Mode: 0o644, Size: int64(len(body)),
			Xattrs: map[string][]byte{"user.a": []byte("b")}}, bytes.NewReader(body)); err != nil {
			panic(err)
		}
		if err := w.Close(); err != nil {
			panic(err)
		}
		fsys, err := Open(bytes.NewReader(buf.b))
		if err != nil {
			panic(err)
		}
		in, err := fsys.resolve("f", false)
		if err != nil {
			panic(err)
		}
		start := int(align(in.dataOff(), 8))
		end := start + zIndexSize(start-int(in.pos), uint64(len(body)), 4096, o.CompressIndex != IndexFull)
		out = append(out, zFuzzBase{img: buf.b, start: start, end: end})
	}
	return out
})

// FuzzZMap overwrites the map header, the lcluster indexes and the first
// pcluster bytes of a compressed file with arbitrary bytes and reads the
// file: errors are expected, panics, hangs and reads outside the image
// (boundedReaderAt fails the test) not.
func FuzzZMap(f *testing.F) {
	for i, b := range zFuzzBases() {
		f.Add(uint8(i), b.img[b.start:b.end], []byte{})
	}
	f.Add(uint8(2), []byte{0, 0, 0, 0, 6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, []byte{0, 0, 0, 1, 2, 3})
	f.Fuzz(func(t *testing.T, which uint8, index, data []byte) {
		bases := zFuzzBases()
		b := bases[int(which)%len(bases)]
		img := bytes.Clone(b.img)
		copy(img[b.start:b.end], index)
		copy(img[4096:], data) // the first pclusters
		fsys, err := Open(boundedReaderAt{t, bytes.NewReader(img)})
		if err != nil {
			return
		}
		f, err := fsys.Open("f")
		if err != nil {
			return
		}
		defer f.Close()
		io.Copy(io.Discard, io.LimitReader(f, 4<<20))
		ra := f.(io.ReaderAt)
		p := make([]byte, 5000)
		for _, off := range []int64{0, 4095, 70000, 199000, 1 << 40} {
			ra.ReadAt(p, off)
		}
	})
}

// FuzzLZ4Prefix decodes arbitrary bytes with the decoder for pclusters
// without zero padding, and checks it against pierrec/lz4 where that
// decodes them whole; it also round-trips them through the lz4hc encoder.
func FuzzLZ4Prefix(f *testing.F) {
	z := zData{rand.New(rand.NewPCG(9, 9))}
	for _, in := range [][]byte{z.text(5000), z.mixed(20000), make([]byte, 3000)} {
		enc := make([]byte, lz4.CompressBlockBound(len(in)))
		n, _ := lz4.CompressBlock(in, enc, nil)
		f.Add(enc[:n], uint32(len(in)))
		f.Add(append(enc[:n:n], 0, 0, 0), uint32(len(in)/2))
	}
	f.Fuzz(func(t *testing.T, src []byte, size uint32) {
		// The lz4hc encoder must round-trip whatever it is given.
		hc := &lazyHC{depth: int(size%64) + 1}
		enc := make([]byte, lz4.CompressBlockBound(len(src)))
		if n, err := hc.compress(src, enc); err != nil {
			t.Fatalf("lazyHC: %v", err)
		} else if back := make([]byte, len(src)); len(src) > 0 {
			if k, err := lz4.UncompressBlock(enc[:n], back); err != nil || k != len(src) || !bytes.Equal(back, src) {
				t.Fatalf("lazyHC block of %d bytes decodes to %d bytes: %v", len(src), k, err)
			}
		}
		size %= 1 << 20
		dst := make([]byte, size)
		err := lz4DecodePrefix(src, dst)
		ref := make([]byte, size)
		if n, rerr := lz4.UncompressBlock(src, ref); rerr == nil && n == int(size) {
			if err != nil || !bytes.Equal(dst, ref) {
				t.Fatalf("pierrec/lz4 decodes %d bytes, lz4DecodePrefix: %v, equal %v", n, err, bytes.Equal(dst, ref))
			}
		}
	})
}

// TestZFuzzCorpus writes compressed images to FuzzReader's seed corpus:
// pe's own (both index layouts, big pclusters) and mkfs.erofs's (lz4hc,
// big pclusters, legacy indexes, tail packing). It runs only with
// PE_EROFS_WRITE_CORPUS=1:
//
//	PE_EROFS_WRITE_CORPUS=1 go test ./erofs -run TestZFuzzCorpus
func TestZFuzzCorpus(t *testing.T) {
	if os.Getenv("PE_EROFS_WRITE_CORPUS") != "1" {
		t.Skip("set PE_EROFS_WRITE_CORPUS=1 to write the compressed seeds of testdata/fuzz/FuzzReader")
	}
	requireTool(t, "mkfs.erofs")
	z := zData{rand.New(rand.NewPCG(11, 12))}
	s := &treeSpec{}
	s.add(Entry{Path: "text", Mode: 0o644}, z.text(40000))
	s.add(Entry{Path: "d/mixed", Mode: 0o644, Xattrs: map[string][]byte{"user.x": []byte("yz")}}, z.mixed(30000))
	s.add(Entry{Path: "d/random", Mode: 0o644}, z.random(5000))
	s.add(Entry{Path: "zeros", Mode: 0o644}, make([]byte, 70000))
	s.add(Entry{Path: "small", Mode: 0o644}, z.text(300))
	s.add(Entry{Path: "link", Mode: fs.ModeSymlink | 0o777, Linkname: "text"}, nil)
	seeds := map[string][]byte{}
	for name, o := range map[string]WriterOptions{
		"pe-lz4-compact":     {Compression: CompressionLZ4},
		"pe-lz4hc-full":      {Compression: CompressionLZ4HC, CompressIndex: IndexFull},
		"pe-lz4-compact-16k": {Compression: CompressionLZ4, PclusterSize: 16384},
		"pe-lz4hc-full-16k":  {Compression: CompressionLZ4HC, PclusterSize: 16384, CompressIndex: IndexFull},
	} {
		b, err := os.ReadFile(s.write(t, o))
		if err != nil {
			t.Fatal(err)
		}
		seeds[name] = b
	}
	src := filepath.Join(t.TempDir(), "src")
	s.writeDir(t, src)
	for name, args := range map[string][]string{
		"mkfs-lz4hc":        {"-zlz4hc"},
		"mkfs-lz4-16k":      {"-zlz4", "-C16384"},
		"mkfs-lz4-legacy":   {"-zlz4", "-Elegacy-compress"},
		"mkfs-lz4-ztail":    {"-zlz4", "-Eztailpacking"},
		"mkfs-lz4-16k-tail": {"-zlz4hc", "-C16384", "-Eztailpacking", "-Elegacy-compress"},
	} {
		b, err := os.ReadFile(mkfsImage(t, src, append(args, "-T0", "-Enosbcrc")...))
		if err != nil {
			t.Fatal(err)
		}
		seeds[name] = b
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzReader")
	for name, data := range seeds {
		if len(data) > 64<<10 {
			t.Fatalf("seed %s is %d bytes; keep seeds within 64 KiB", name, len(data))
		}
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCompressedDeterministic builds the same tree twice: workers
// compress files in parallel, and the image must not depend on which
// finished first.
func TestCompressedDeterministic(t *testing.T) {
	t.Parallel()
	spec := zTree(1 << 20)
	for _, o := range []WriterOptions{
		{Compression: CompressionLZ4HC, PclusterSize: 16384},
		{Compression: CompressionLZ4, CompressIndex: IndexFull},
	} {
		a, err := os.ReadFile(spec.write(t, o))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(spec.write(t, o))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%+v: two builds of the same input differ (%d and %d bytes)", o, len(a), len(b))
		}
	}
}

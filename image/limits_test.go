package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	kgzip "github.com/klauspost/compress/gzip"

	"github.com/pe-project/pe/erofs"
)

// rawHeader is one 512-byte ustar header block: archive/tar's Writer
// refuses to write what hostile layers hold (GNU sparse records, header
// chains), so the tests write the bytes themselves.
func rawHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b[0:100], name)
	copy(b[100:108], "0000644\x00")
	copy(b[108:116], "0000000\x00")
	copy(b[116:124], "0000000\x00")
	copy(b[124:136], fmt.Sprintf("%011o\x00", size))
	copy(b[136:148], "14616100731\x00")
	b[156] = typ
	copy(b[257:265], "ustar\x0000")
	copy(b[148:156], "        ")
	var sum int64
	for _, c := range b {
		sum += int64(c)
	}
	copy(b[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

// pad rounds b up to whole 512-byte blocks.
func pad(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// paxRecords encodes PAX extended header records, in the given order.
func paxRecords(kv ...string) []byte {
	var out []byte
	for i := 0; i < len(kv); i += 2 {
		rec := " " + kv[i] + "=" + kv[i+1] + "\n"
		// The length counts its own digits.
		n := len(rec) + 1
		for len(rec)+len(strconv.Itoa(n)) != n {
			n = len(rec) + len(strconv.Itoa(n))
		}
		out = append(out, strconv.Itoa(n)+rec...)
	}
	return out
}

// sparseBomb is a tar stream, a few KiB, holding one PAX (GNU 1.0 format)
// sparse file that declares size bytes, all a hole but for 4 bytes.
func sparseBomb(name string, size int64) []byte {
	pax := paxRecords("GNU.sparse.major", "1", "GNU.sparse.minor", "0", "GNU.sparse.name", name,
		"GNU.sparse.realsize", strconv.FormatInt(size, 10))
	data := append(pad([]byte("1\n0\n4\n")), "data"...)
	var b []byte
	b = append(b, rawHeader("PaxHeaders/"+name, 'x', int64(len(pax)))...)
	b = append(b, pad(pax)...)
	b = append(b, rawHeader("GNUSparseFile.0/"+name, '0', int64(len(data)))...)
	b = append(b, pad(data)...)
	return append(b, make([]byte, 1024)...)
}

// paxChain is a tar stream of n PAX headers of about size bytes each
// that never reach an entry: work for the reader, nothing for the image.
func paxChain(n, size int) []byte {
	pax := paxRecords("comment", strings.Repeat("x", size))
	var b []byte
	for range n {
		b = append(b, rawHeader("PaxHeaders/x", 'x', int64(len(pax)))...)
		b = append(b, pad(pax)...)
	}
	return append(b, make([]byte, 1024)...)
}

// gzipBytes compresses b fast.
func gzipBytes(t testing.TB, write func(io.Writer) error) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := kgzip.NewWriterLevel(&buf, kgzip.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	if err := write(zw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zeroFileTar writes a tar of one regular file of size zero bytes: a
// gzip bomb once compressed (1000:1).
func zeroFileTar(name string, size int64) func(io.Writer) error {
	return func(w io.Writer) error {
		if _, err := w.Write(rawHeader(name, '0', size)); err != nil {
			return err
		}
		zeros := make([]byte, 1<<20)
		for left := (size+511)&^511 + 1024; left > 0; {
			n := min(left, int64(len(zeros)))
			if _, err := w.Write(zeros[:n]); err != nil {
				return err
			}
			left -= n
		}
		return nil
	}
}

// manyEntries writes a tar of n empty files with short names spread over
// directories of 1000, block by block.
func manyEntries(n int) func(io.Writer) error {
	return func(w io.Writer) error {
		buf := make([]byte, 0, 512*1024)
		for i := range n {
			buf = append(buf, rawHeader(fmt.Sprintf("d%x/%x", i/1000, i%1000), '0', 0)...)
			if len(buf) == cap(buf) {
				if _, err := w.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
		buf = append(buf, make([]byte, 1024)...)
		_, err := w.Write(buf)
		return err
	}
}

// deepPath is a tar of one file depth directories deep.
func deepPath(depth int) []byte {
	name := strings.Repeat("a/", depth-1) + "f"
	pax := paxRecords("path", name)
	var b []byte
	b = append(b, rawHeader("PaxHeaders/f", 'x', int64(len(pax)))...)
	b = append(b, pad(pax)...)
	b = append(b, rawHeader("f", '0', 0)...)
	return append(b, make([]byte, 1024)...)
}

// bombCase is a hostile layer and the limit it must hit.
type bombCase struct {
	name  string
	layer func(t testing.TB) []byte // the layer blob
	lim   Limits
	want  LimitKind
	// stream: the limit is hit by the decompressed stream, not a header.
	stream bool
	// entry is the tar entry the error names.
	entry string
}

func bombCases() []bombCase {
	small := Limits{MaxUnpacked: 64 << 10, MaxEntries: 1000, MaxDepth: 64}
	return []bombCase{
		{name: "sparse bomb", layer: func(testing.TB) []byte { return sparseBomb("big", 1<<40) }, lim: small,
			want: LimitUnpacked, entry: "big"},
		{name: "sparse bomb near 2^63", layer: func(testing.TB) []byte { return sparseBomb("big", 1<<62) }, lim: small,
			want: LimitUnpacked, entry: "big"},
		{name: "gzip bomb", layer: func(t testing.TB) []byte { return gzipBytes(t, zeroFileTar("zeros", 64<<20)) }, lim: small,
			want: LimitUnpacked, entry: "zeros"},
		{name: "gzip bomb after the end of the archive", layer: func(t testing.TB) []byte {
			return gzipBytes(t, func(w io.Writer) error {
				if _, err := w.Write(append(rawHeader("hello", '0', 2), pad([]byte("hi"))...)); err != nil {
					return err
				}
				_, err := w.Write(make([]byte, 64<<20))
				return err
			})
		}, lim: small, want: LimitUnpacked, stream: true},
		{name: "chain of PAX headers", layer: func(t testing.TB) []byte {
			return gzipBytes(t, func(w io.Writer) error { _, err := w.Write(paxChain(64, 64<<10)); return err })
		}, lim: small, want: LimitUnpacked, stream: true},
		{name: "million-entry layer", layer: func(t testing.TB) []byte { return gzipBytes(t, manyEntries(1_000_000)) }, lim: small,
			want: LimitEntries, entry: "d1/0"},
		{name: "deep path", layer: func(testing.TB) []byte { return deepPath(100) }, lim: small,
			want: LimitDepth, entry: strings.Repeat("a/", 99) + "f"},
	}
}

// checkLimitError checks that err is the LimitError c wants.
func checkLimitError(t *testing.T, c bombCase, err error) {
	t.Helper()
	var le *LimitError
	if !errors.As(err, &le) || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want a LimitError (%s)", err, c.want)
	}
	if le.Kind != c.want || le.Stream != c.stream || le.Entry != c.entry {
		t.Errorf("limit %s, stream %v, entry %q; want %s, %v, %q (%v)", le.Kind, le.Stream, le.Entry, c.want, c.stream, c.entry, err)
	}
	if !strings.Contains(err.Error(), "image exceeds "+string(c.want)) {
		t.Errorf("message %q does not name the limit", err)
	}
}

// TestFlattenLimits flattens each hostile layer under a small base layer
// and expects the limit's error, quickly.
func TestFlattenLimits(t *testing.T) {
	for _, c := range bombCases() {
		t.Run(c.name, func(t *testing.T) {
			blob := c.layer(t)
			var o opener
			layers := o.layers(t, []testLayer{
				{name: "layer 1", ents: []lent{tDir("etc/"), tFile("etc/hello", "hi")}},
				{name: "layer 2", raw: blob},
			})
			start := time.Now()
			out := new(memFile)
			w, err := erofs.NewWriter(out, erofs.WriterOptions{})
			if err != nil {
				t.Fatal(err)
			}
			err = Flatten(t.Context(), w, layers, c.lim)
			w.Discard()
			checkLimitError(t, c, err)
			if le := (*LimitError)(nil); errors.As(err, &le) && le.Layer != "layer 2" {
				t.Errorf("the error names %q, want layer 2", le.Layer)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v to stop", d)
			}
			o.check(t, 2, false, nil)
		})
	}
}

// TestBuildEROFSLimits builds each hostile layer as a tarball with
// BuildEROFS: the limit's error, and nothing left in the output directory
// or in TMPDIR.
func TestBuildEROFSLimits(t *testing.T) {
	for _, c := range bombCases() {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			dir := t.TempDir()
			src := filepath.Join(t.TempDir(), "layer.tar")
			if err := os.WriteFile(src, c.layer(t), 0o644); err != nil {
				t.Fatal(err)
			}
			err := BuildEROFS(t.Context(), src, filepath.Join(dir, "out.erofs"), BuildOptions{Limits: c.lim})
			checkLimitError(t, c, err)
			for _, d := range []string{dir, tmp} {
				if left := dirNames(t, d); len(left) > 0 {
					t.Errorf("%s holds %v after the failed build", d, left)
				}
			}
		})
	}
}

// TestPullLimits pushes each hostile layer, over a small base layer, to
// the in-process registry and pulls it with limits: the limit's error
// (--max-image-size, which counts compressed bytes, lets every one of
// them through), no image and nothing half-written in the cache, only the
// downloaded blobs, which prune removes. Then the same pull with no limit
// on what failed... is not tried: it would fill the disk.
func TestPullLimits(t *testing.T) {
	fr := newFakeRegistry(t)
	base := static.NewLayer(gzipBytes(t, func(w io.Writer) error {
		_, err := w.Write(layerTar(t, []lent{tDir("etc/"), tFile("etc/hello", "hi")}))
		return err
	}), types.OCILayer)
	for i, c := range bombCases() {
		t.Run(c.name, func(t *testing.T) {
			blob := c.layer(t)
			mt := types.OCILayer
			if blob[0] != 0x1f {
				mt = types.OCIUncompressedLayer
			}
			img := fakeImage(t, "linux/amd64", base, static.NewLayer(blob, mt))
			ref := fr.push(t, fmt.Sprintf("bomb:%d", i), img)
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			c1 := testCache(t)
			_, err := c1.Get(t.Context(), ref, PullOptions{Limits: c.lim, MaxSize: 16 << 20})
			checkLimitError(t, c, err)
			layers := layerDigests(t, img)
			if le := (*LimitError)(nil); errors.As(err, &le) && !strings.Contains(le.Layer, layers[1].String()) {
				t.Errorf("the error names %q, want layer %s", le.Layer, layers[1])
			}
			var want []string
			for _, l := range layers {
				want = append(want, blobsDir+"/"+l.Hex)
			}
			if diff := cmp.Diff(sortedStrings(want), sortedStrings(cacheFiles(t, c1))); diff != "" {
				t.Errorf("cache files after the refused pull (-want +got):\n%s", diff)
			}
			if left := dirNames(t, tmp); len(left) > 0 {
				t.Errorf("TMPDIR holds %v after the refused pull", left)
			}
			rep, err := c1.Prune(t.Context(), PruneOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Blobs != len(layers) || len(cacheFiles(t, c1)) != 0 {
				t.Errorf("prune removed %d blobs, left %v", rep.Blobs, cacheFiles(t, c1))
			}
		})
	}
}

// TestServeLimitsMillionEntries checks pe serve's default entry limit
// against a layer of a million empty files.
func TestServeLimitsMillionEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("flattens half a million entries")
	}
	blob := gzipBytes(t, manyEntries(1_000_000))
	var o opener
	layers := o.layers(t, []testLayer{{name: "layer 1", raw: blob}})
	start := time.Now()
	out := new(memFile)
	w, err := erofs.NewWriter(out, erofs.WriterOptions{TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	err = Flatten(t.Context(), w, layers, ServeLimits())
	w.Discard()
	checkLimitError(t, bombCase{want: LimitEntries, entry: fmt.Sprintf("d%x/%x", ServeMaxEntries/1000, 0)}, err)
	t.Logf("stopped after %v", time.Since(start))
}

// TestLimitsLetRealImagesThrough checks that limits an image just fits
// under are not hit: the declared bytes, entries and depth exactly at
// the limit.
func TestLimitsLetRealImagesThrough(t *testing.T) {
	ents := []lent{tDir("a/"), tDir("a/b/"), tFile("a/b/f", strings.Repeat("x", 1000)), tFile("g", strings.Repeat("y", 24))}
	lim := Limits{MaxUnpacked: 1024, MaxEntries: 4, MaxDepth: 3}
	for _, compress := range []string{"", "gzip"} {
		var o opener
		out := new(memFile)
		w, err := erofs.NewWriter(out, erofs.WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := Flatten(t.Context(), w, o.layers(t, []testLayer{{ents: ents, compress: compress}}), lim); err != nil {
			t.Errorf("%q: %v", compress, err)
		}
		w.Discard()
		for _, tighter := range []Limits{{MaxUnpacked: 1023}, {MaxEntries: 3}, {MaxDepth: 2}} {
			w, _ := erofs.NewWriter(new(memFile), erofs.WriterOptions{})
			err := Flatten(t.Context(), w, o.layers(t, []testLayer{{ents: ents, compress: compress}}), tighter)
			w.Discard()
			if !errors.Is(err, ErrTooLarge) {
				t.Errorf("%q, %+v: %v, want ErrTooLarge", compress, tighter, err)
			}
		}
	}
}

func TestLimitErrorMessage(t *testing.T) {
	for _, c := range []struct {
		err  *LimitError
		want string
	}{
		{&LimitError{Kind: LimitUnpacked, Max: 3 << 30, Layer: "layer sha256:ab of evil", Entry: "usr/big", Declared: 1 << 30, Total: 3<<30 + 1<<29},
			`image exceeds --max-image-unpacked 3GiB at layer sha256:ab of evil, tar entry "usr/big": declared 1GiB, 3.5GiB in all`},
		{&LimitError{Kind: LimitUnpacked, Max: 64 << 10, After: "hello", Total: 100 << 10, Stream: true},
			`image exceeds --max-image-unpacked 64KiB, after tar entry "hello": 100KiB of decompressed tar stream`},
		{&LimitError{Kind: LimitEntries, Max: 1000, Layer: "layer 2", Entry: "d1/0", Total: 1001},
			`image exceeds --max-image-entries 1000 at layer 2, tar entry "d1/0": entry number 1001`},
		{&LimitError{Kind: LimitDepth, Max: 64, Entry: "a/b", Total: 65},
			`image exceeds --max-image-depth 64, tar entry "a/b": 65 path components`},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("got  %s\nwant %s", got, c.want)
		}
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	slices.Sort(out)
	return out
}

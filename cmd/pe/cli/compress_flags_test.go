package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/pe-project/pe/erofs"
)

func TestBuildCompressed(t *testing.T) {
	src := makeTree(t)
	if err := os.WriteFile(filepath.Join(src, "text"), []byte(strings.Repeat("compress me, again and again\n", 5000)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--compress", "lz4"},
		{"--compress", "lz4hc:12", "--pcluster-size", "64K", "--compress-index", "full"},
		{"--compress", "lz4hc", "--pcluster-size", "16384"},
	} {
		img := filepath.Join(t.TempDir(), "out.erofs")
		if _, _, err := run(t, "", append([]string{"image", "build-erofs", src, "-o", img}, args...)...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		fsys, err := erofs.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := fsys.Stat("text")
		if err != nil {
			t.Fatal(err)
		}
		if l := fi.Sys().(*erofs.Stat).Layout; l != 1 && l != 3 {
			t.Errorf("%v: text has layout %d, want a compressed one", args, l)
		}
		if b, err := fsys.ReadFile("text"); err != nil || len(b) != 5000*29 {
			t.Errorf("%v: ReadFile(text): %d bytes, %v", args, len(b), err)
		}
		f.Close()
	}
}

func TestBuildCompressedUsage(t *testing.T) {
	src := makeTree(t)
	img := filepath.Join(t.TempDir(), "out.erofs")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--compress", "zstd"}, "not lz4 or lz4hc"},
		{[]string{"--compress", "lz4:3"}, "lz4 takes no level"},
		{[]string{"--compress", "lz4hc:13"}, "1 to 12"},
		{[]string{"--compress", "lz4", "--pcluster-size", "lots"}, "not a size"},
		{[]string{"--compress", "lz4", "--compress-index", "tiny"}, "not compact or full"},
		{[]string{"--pcluster-size", "16K"}, "need --compress"},
		{[]string{"--compress", "lz4", "--pcluster-size", "5000"}, "--pcluster-size: 5000: want a multiple of the block size 4096"},
		{[]string{"--compress", "lz4", "--pcluster-size", "2MiB"}, "--pcluster-size: 2MiB (2097152 bytes): want a multiple of the block size 4096, at most 1MiB"},
		{[]string{"--compress", "lz4", "--pcluster-size", "1K"}, "--pcluster-size: 1K (1024 bytes): want a multiple of the block size 4096"},
		{[]string{"--compress", ""}, "--compress: empty value"},
		{[]string{"--compress=", "--pcluster-size", "16K"}, "--compress: empty value"},
		{[]string{"--compress", "lz4", "--pcluster-size", ""}, "--pcluster-size: empty value"},
		{[]string{"--compress", "lz4", "--compress-index", ""}, "--compress-index: empty value"},
		{[]string{"--image-compress", ""}, "--image-compress: empty value"},
	} {
		_, _, err := run(t, "", append([]string{"image", "build-erofs", src, "-o", img}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: error %v, want one saying %q", tc.args, err, tc.msg)
		}
	}
	if _, err := os.Stat(img); err == nil {
		t.Errorf("a failed build left %s behind", img)
	}
}

func TestParsePclusterSize(t *testing.T) {
	type result struct {
		N   int
		Err string
	}
	for _, tc := range []struct {
		in        string
		blockSize int
		want      result
	}{
		{"4096", 0, result{N: 4096}},
		{"16K", 4096, result{N: 16384}},
		{"64KiB", 4096, result{N: 65536}},
		{"1MiB", 4096, result{N: 1 << 20}},
		{"1024", 1024, result{N: 1024}},
		{"5000", 4096, result{Err: "5000: want a multiple of the block size 4096, at most 1MiB (1048576)"}},
		{"2MiB", 4096, result{Err: "2MiB (2097152 bytes): want a multiple of the block size 4096, at most 1MiB (1048576)"}},
		{"2048", 0, result{Err: "2048: want a multiple of the block size 4096, at most 1MiB (1048576)"}},
		{"1536", 1024, result{Err: "1536: want a multiple of the block size 1024, at most 1MiB (1048576)"}},
		{"0", 4096, result{Err: `"0" is not a size such as 65536, 16K or 1MiB`}},
		{"lots", 4096, result{Err: `"lots" is not a size such as 65536, 16K or 1MiB`}},
	} {
		var got result
		n, err := parsePclusterSize(tc.in, tc.blockSize)
		got.N = n
		if err != nil {
			got.Err = err.Error()
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("parsePclusterSize(%q, %d) (-want +got):\n%s", tc.in, tc.blockSize, diff)
		}
	}
}

// TestEmptyCompressFlags checks that an explicitly empty compression flag
// is refused on every command that has one, while leaving the flag out, or
// an empty PE_IMAGE_COMPRESS, still means no compression.
func TestEmptyCompressFlags(t *testing.T) {
	isolate(t)
	src := makeTree(t)
	dir := t.TempDir()
	type result struct {
		Err     string
		Written bool
	}
	for _, tc := range []struct {
		name string
		env  string // PE_IMAGE_COMPRESS, when not ""
		args []string
		want result
	}{
		{"no flag", "", []string{"image", "build-erofs", src}, result{Written: true}},
		{"empty setting", "unset-empty", []string{"image", "build-erofs", src}, result{Written: true}},
		{"empty --compress", "", []string{"image", "build-erofs", src, "--compress", ""},
			result{Err: "--compress: empty value (want lz4 or lz4hc[:LEVEL]; leave the flag out for no compression) (see 'pe image build-erofs --help')"}},
		{"empty --image-compress", "", []string{"image", "build-erofs", src, "--image-compress="},
			result{Err: "--image-compress: empty value (want lz4 or lz4hc[:LEVEL]; leave the flag out for uncompressed images) (see 'pe image build-erofs --help')"}},
		{"empty --image-compress on pull", "", []string{"image", "pull", "--image-compress", "", "busybox"},
			result{Err: "--image-compress: empty value (want lz4 or lz4hc[:LEVEL]; leave the flag out for uncompressed images) (see 'pe image pull --help')"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env == "unset-empty" {
				t.Setenv("PE_IMAGE_COMPRESS", "")
			}
			out := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".erofs")
			args := tc.args
			if args[1] == "build-erofs" {
				args = append(slices.Clone(args), "-o", out)
			}
			var got result
			if _, _, err := run(t, "", args...); err != nil {
				got.Err = err.Error()
			}
			_, err := os.Stat(out)
			got.Written = err == nil
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("pe %q (-want +got):\n%s", args, diff)
			}
		})
	}
}

// compressedTarFiles are the files of the tarballs the --compress tests
// build from: one that compresses well, one that does not, a small one.
func compressedTarFiles() map[string]string {
	noise := make([]byte, 20000)
	x := uint32(2463534242)
	for i := range noise {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		noise[i] = byte(x)
	}
	return map[string]string{
		"tool-1.0/share/text": strings.Repeat("compress me, again and again\n", 5000),
		"tool-1.0/bin/noise":  string(noise),
		"tool-1.0/small":      "tiny\n",
	}
}

// tarOf returns files as a tar stream, gzip-compressed when gz is set.
func tarOf(t *testing.T, files map[string]string, gz bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var zw *gzip.Writer
	var w io.Writer = &buf
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		body := files[name]
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// ociLayout writes an OCI layout holding one linux image, tagged v1, whose
// one layer holds files, and returns its oci: reference.
func ociLayout(t *testing.T, files map[string]string) string {
	t.Helper()
	img := filesImage(t, files)
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir + ":v1"
}

// compressedFile is what TestBuildCompressedFromTar compares of a regular
// file read back from an image.
type compressedFile struct {
	Data       string
	Compressed bool // stored with a compressed data layout
}

// readCompressed reads every regular file of the EROFS image img with
// pe's reader.
func readCompressed(t *testing.T, img string) map[string]compressedFile {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := erofs.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]compressedFile{}
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		b, err := fsys.ReadFile(p)
		if err != nil {
			return err
		}
		l := fi.Sys().(*erofs.Stat).Layout
		got[p] = compressedFile{Data: string(b), Compressed: l == 1 || l == 3}
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", img, err)
	}
	return got
}

// TestBuildCompressedFromTar builds with --compress lz4hc from sources
// other than a directory (a gzip tar file, a tar on standard input, a
// tarball laid over an OCI layout with --tar and --prefix) and checks with
// pe's reader that the compressible files are stored compressed, the
// others not, and that every byte reads back.
func TestBuildCompressedFromTar(t *testing.T) {
	isolate(t)
	files := compressedTarFiles()
	dir := t.TempDir()
	gzPath := filepath.Join(dir, "tool.tar.gz")
	if err := os.WriteFile(gzPath, tarOf(t, files, true), 0o644); err != nil {
		t.Fatal(err)
	}
	base := ociLayout(t, map[string]string{
		"etc/os-release": "NAME=base\n",
		"usr/lib/big":    strings.Repeat("a base file that compresses\n", 4000),
	})
	// want maps the tarball's files under root (dropping "tool-1.0/"
	// when strip is set) and adds extra.
	want := func(root string, strip bool, extra map[string]compressedFile) map[string]compressedFile {
		m := map[string]compressedFile{}
		for name, body := range files {
			if strip {
				name = strings.TrimPrefix(name, "tool-1.0/")
			}
			m[path.Join(root, name)] = compressedFile{Data: body, Compressed: strings.HasSuffix(name, "text")}
		}
		maps.Copy(m, extra)
		return m
	}
	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		want  map[string]compressedFile
	}{
		{"gzip tar file", "", []string{gzPath}, want(".", false, nil)},
		{"stdin", string(tarOf(t, files, false)), []string{"-"}, want(".", false, nil)},
		{"gzip stdin", string(tarOf(t, files, true)), []string{"-"}, want(".", false, nil)},
		{"tar over an OCI layout", "", []string{"--tar", gzPath, "--strip-components", "1", "--prefix", "/opt/x", "--base", base},
			want("opt/x", true, map[string]compressedFile{
				"etc/os-release": {Data: "NAME=base\n"},
				"usr/lib/big":    {Data: strings.Repeat("a base file that compresses\n", 4000), Compressed: true},
			})},
		{"tar from stdin", string(tarOf(t, files, false)), []string{"--tar", "-", "--prefix", "/opt/x"}, want("opt/x", false, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "out.erofs")
			args := append([]string{"image", "build-erofs", "-o", img, "--compress", "lz4hc", "--cache-dir", filepath.Join(dir, "cache")}, tc.args...)
			if _, stderr, err := run(t, tc.stdin, args...); err != nil {
				t.Fatalf("pe %q: %v (stderr %q)", args, err, stderr)
			}
			if diff := cmp.Diff(tc.want, readCompressed(t, img)); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
		})
	}
}

package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/erofs"
)

var (
	t0    = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	tNano = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	epoch = time.Unix(0, 0)
)

// tarEntry is one member of a tar archive made by a test.
type tarEntry struct {
	hdr  tar.Header
	data string
}

// makeTar writes entries as a tar archive. Regular files get their size
// from data.
func makeTar(t testing.TB, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("writing tar header %q: %v", h.Name, err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil {
			t.Fatalf("writing tar data %q: %v", h.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// compress compresses b with gzip, zstd or xz ("" leaves it as it is).
func compress(t testing.TB, format string, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch format {
	case "":
		return b
	case "gzip":
		zw := gzip.NewWriter(&buf)
		if _, err = zw.Write(b); err == nil {
			err = zw.Close()
		}
	case "zstd":
		var zw *zstd.Encoder
		if zw, err = zstd.NewWriter(&buf); err == nil {
			if _, err = zw.Write(b); err == nil {
				err = zw.Close()
			}
		}
	case "xz":
		var xw *xz.Writer
		if xw, err = xz.NewWriter(&buf); err == nil {
			if _, err = xw.Write(b); err == nil {
				err = xw.Close()
			}
		}
	default:
		t.Fatalf("unknown compression %q", format)
	}
	if err != nil {
		t.Fatalf("%s: %v", format, err)
	}
	return buf.Bytes()
}

// facts is what the tests compare of each file read back from an image.
type facts struct {
	Mode     fs.FileMode
	UID, GID uint32
	ModTime  time.Time
	Size     int64  // regular files
	Data     string // regular files
	Link     string // symlinks
	Nlink    uint32 // non-directories
	Dev      [2]uint32
	Xattrs   map[string]string
}

// readImage reads every file of the EROFS image at path with pe's reader.
func readImage(t testing.TB, path string) map[string]facts {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := erofs.Open(f)
	if err != nil {
		t.Fatalf("erofs.Open(%s): %v", path, err)
	}
	got := map[string]facts{}
	if err := walkImage(t, fsys, func(p string, fc facts, _ *erofs.Stat) { got[p] = fc }); err != nil {
		t.Fatalf("walking %s: %v", path, err)
	}
	return got
}

// walkImage calls fn with the facts and the erofs.Stat of every path of
// fsys, the root (".") included.
func walkImage(t testing.TB, fsys *erofs.FS, fn func(p string, fc facts, st *erofs.Stat)) error {
	return fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := fsys.Lstat(p)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*erofs.Stat)
		if !ok {
			t.Fatalf("%s: Sys() is %T, want *erofs.Stat", p, fi.Sys())
		}
		fc := facts{Mode: fi.Mode(), UID: st.UID, GID: st.GID, ModTime: fi.ModTime()}
		if !fi.IsDir() {
			fc.Nlink = st.Nlink
		}
		switch {
		case fi.Mode().IsRegular():
			data, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			fc.Size, fc.Data = fi.Size(), string(data)
		case fi.Mode()&fs.ModeSymlink != 0:
			if fc.Link, err = fsys.ReadLink(p); err != nil {
				return err
			}
		case fi.Mode()&fs.ModeDevice != 0:
			fc.Dev = [2]uint32{st.DevMajor, st.DevMinor}
		}
		for k, v := range st.Xattrs {
			if fc.Xattrs == nil {
				fc.Xattrs = map[string]string{}
			}
			fc.Xattrs[k] = string(v)
		}
		fn(p, fc, st)
		return nil
	})
}

// diffImage compares the files of an image with what a test expects.
func diffImage(want, got map[string]facts) string {
	return cmp.Diff(want, got, cmpopts.EquateEmpty())
}

// richTar has an entry of every kind AddTar handles; richWant is what an
// image built from it holds.
func richTar(t testing.TB) []byte {
	big := strings.Repeat("0123456789abcdef", 5000/16+1)[:5000]
	return makeTar(t, []tarEntry{
		{hdr: tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: t0}},
		{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "ignored"}}},
		{hdr: tar.Header{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1, Gid: 2, ModTime: t0}},
		{hdr: tar.Header{Name: "./etc/hello.txt", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 1000, Gid: 1001, ModTime: tNano, Format: tar.FormatPAX}, data: "hello\n"},
		{hdr: tar.Header{Name: "etc/hello-again", Typeflag: tar.TypeLink, Linkname: "./etc/hello.txt", ModTime: t0}},
		{hdr: tar.Header{Name: "etc/motd", Typeflag: tar.TypeSymlink, Linkname: "hello.txt", Mode: 0o777, ModTime: t0}},
		{hdr: tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o4755, ModTime: t0}, data: big},
		{hdr: tar.Header{Name: "empty", Typeflag: tar.TypeReg, Mode: 0o600, ModTime: t0}},
		{hdr: tar.Header{Name: "dev/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: t0}},
		{hdr: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3, Mode: 0o666, ModTime: t0}},
		{hdr: tar.Header{Name: "dev/sda", Typeflag: tar.TypeBlock, Devmajor: 8, Devminor: 0, Mode: 0o660, Gid: 6, ModTime: t0}},
		{hdr: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o600, ModTime: t0}},
		{hdr: tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: t0}},
		{hdr: tar.Header{Name: "long/" + strings.Repeat("p", 200) + "/file", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t0, Format: tar.FormatPAX}, data: "pax"},
		{hdr: tar.Header{Name: "gnu/" + strings.Repeat("g", 180), Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t0, Format: tar.FormatGNU}, data: "gnu"},
		{hdr: tar.Header{Name: "xattrs", Typeflag: tar.TypeReg, Mode: 0o755, ModTime: t0, Format: tar.FormatPAX, PAXRecords: map[string]string{
			"SCHILY.xattr.user.test":              "v1",
			"SCHILY.xattr.trusted.overlay.opaque": "y",
			"SCHILY.xattr.security.capability":    "\x01\x00\x00\x02\x00\x20\x00\x00",
		}}, data: "x"},
		{hdr: tar.Header{Name: "bigid", Typeflag: tar.TypeReg, Mode: 0o644, Uid: 4000000000, Gid: 4000000001, ModTime: t0, Format: tar.FormatPAX}, data: "id"},
		{hdr: tar.Header{Name: "dup", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t0}, data: "one"},
		{hdr: tar.Header{Name: "./dup", Typeflag: tar.TypeReg, Mode: 0o640, ModTime: tNano, Format: tar.FormatPAX}, data: "two"},
	})
}

func richWant() map[string]facts {
	big := strings.Repeat("0123456789abcdef", 5000/16+1)[:5000]
	dir := func(perm fs.FileMode, uid, gid uint32, mt time.Time) facts {
		return facts{Mode: fs.ModeDir | perm, UID: uid, GID: gid, ModTime: mt}
	}
	file := func(perm fs.FileMode, data string) facts {
		return facts{Mode: perm, ModTime: t0, Size: int64(len(data)), Data: data, Nlink: 1}
	}
	hello := facts{Mode: 0o644, UID: 1000, GID: 1001, ModTime: tNano, Size: 6, Data: "hello\n", Nlink: 2}
	bigid := file(0o644, "id")
	bigid.UID, bigid.GID = 4000000000, 4000000001
	xattrs := file(0o755, "x")
	xattrs.Xattrs = map[string]string{
		"user.test":              "v1",
		"trusted.overlay.opaque": "y",
		"security.capability":    "\x01\x00\x00\x02\x00\x20\x00\x00",
	}
	dup := file(0o640, "two")
	dup.ModTime = tNano
	longDir := "long/" + strings.Repeat("p", 200)
	return map[string]facts{
		".":                               dir(0o755, 0, 0, t0),
		"etc":                             dir(0o750, 1, 2, t0),
		"etc/hello.txt":                   hello,
		"etc/hello-again":                 hello,
		"etc/motd":                        {Mode: fs.ModeSymlink | 0o777, ModTime: t0, Link: "hello.txt", Nlink: 1},
		"bin":                             dir(0o755, 0, 0, epoch), // implicit parent
		"bin/tool":                        file(fs.ModeSetuid|0o755, big),
		"empty":                           file(0o600, ""),
		"dev":                             dir(0o755, 0, 0, t0),
		"dev/null":                        {Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, ModTime: t0, Nlink: 1, Dev: [2]uint32{1, 3}},
		"dev/sda":                         {Mode: fs.ModeDevice | 0o660, GID: 6, ModTime: t0, Nlink: 1, Dev: [2]uint32{8, 0}},
		"run":                             dir(0o755, 0, 0, epoch),
		"run/fifo":                        {Mode: fs.ModeNamedPipe | 0o600, ModTime: t0, Nlink: 1},
		"tmp":                             dir(fs.ModeSticky|0o777, 0, 0, t0),
		"long":                            dir(0o755, 0, 0, epoch),
		longDir:                           dir(0o755, 0, 0, epoch),
		longDir + "/file":                 file(0o644, "pax"),
		"gnu":                             dir(0o755, 0, 0, epoch),
		"gnu/" + strings.Repeat("g", 180): file(0o644, "gnu"),
		"xattrs":                          xattrs,
		"bigid":                           bigid,
		"dup":                             dup,
	}
}

func TestBuildEROFSFromTar(t *testing.T) {
	plain := richTar(t)
	for _, format := range []string{"", "gzip", "zstd", "xz"} {
		name := format
		if name == "" {
			name = "plain"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "in.tar")
			if err := os.WriteFile(src, compress(t, format, plain), 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out.erofs")
			if err := BuildEROFS(t.Context(), src, out, BuildOptions{}); err != nil {
				t.Fatalf("BuildEROFS: %v", err)
			}
			if diff := diffImage(richWant(), readImage(t, out)); diff != "" {
				t.Errorf("image differs from the tar (-want +got):\n%s", diff)
			}
			fi, err := os.Stat(out)
			if err != nil {
				t.Fatal(err)
			}
			if perm := fi.Mode().Perm(); perm != 0o644 {
				t.Errorf("output mode %v, want 0644", perm)
			}
			assertNoTemp(t, dir)
		})
	}
}

func TestBuildEROFSCompressedTrailers(t *testing.T) {
	gz := compress(t, "gzip", richTar(t))
	badCRC := bytes.Clone(gz)
	badCRC[len(badCRC)-8] ^= 0xff
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"gzip with zero padding", append(bytes.Clone(gz), make([]byte, 512)...), ""},
		{"two gzip members", append(bytes.Clone(gz), compress(t, "gzip", make([]byte, 1024))...), ""},
		{"gzip with a bad checksum", badCRC, "reading gzip stream after the end of the tar: gzip: invalid checksum"},
		{"gzip without its trailer", gz[:len(gz)-8], "reading gzip stream after the end of the tar: gzip: unexpected EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out.erofs")
			err := BuildEROFS(t.Context(), "-", out, BuildOptions{Stdin: bytes.NewReader(tt.in)})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("BuildEROFS: %v", err)
				}
				if diff := diffImage(richWant(), readImage(t, out)); diff != "" {
					t.Errorf("image differs from the tar (-want +got):\n%s", diff)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("BuildEROFS: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestBuildEROFSFromStdin(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.erofs")
	stdin := bytes.NewReader(compress(t, "gzip", richTar(t)))
	if err := BuildEROFS(t.Context(), "-", out, BuildOptions{Stdin: stdin}); err != nil {
		t.Fatalf("BuildEROFS: %v", err)
	}
	if diff := diffImage(richWant(), readImage(t, out)); diff != "" {
		t.Errorf("image differs from the tar (-want +got):\n%s", diff)
	}
}

func TestBuildEROFSReproducible(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "in.tar")
	if err := os.WriteFile(src, richTar(t), 0o644); err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(1700000000, 0)
	var images [][]byte
	for _, name := range []string{"a.erofs", "b.erofs"} {
		out := filepath.Join(dir, name)
		if err := BuildEROFS(t.Context(), src, out, BuildOptions{Writer: erofs.WriterOptions{ModTime: &mtime}}); err != nil {
			t.Fatal(err)
		}
		for p, fc := range readImage(t, out) {
			if !fc.ModTime.Equal(mtime) {
				t.Errorf("%s: %s has mtime %v, want %v", name, p, fc.ModTime, mtime)
			}
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, b)
	}
	if !bytes.Equal(images[0], images[1]) {
		t.Error("two builds of the same tar differ")
	}
}

// assertNoTemp fails if BuildEROFS left a temporary file in dir.
func assertNoTemp(t testing.TB, dir string) {
	t.Helper()
	left, err := filepath.Glob(filepath.Join(dir, ".pe-build-*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("temporary files left behind: %q", left)
	}
}

func TestBuildEROFSBadTar(t *testing.T) {
	file := func(name, data string) tarEntry {
		return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t0}, data: data}
	}
	dirEntry := func(name string) tarEntry {
		return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: t0}}
	}
	twoFiles := makeTar(t, []tarEntry{file("first.txt", "0123456789"), file("second.txt", "x")})
	bigTar := makeTar(t, []tarEntry{file("ok", "fine"), file("big.bin", noise(10000))})
	long := strings.Repeat("n", 256)
	tests := []struct {
		name    string
		tar     []byte
		wantErr []string // substrings of the error message
	}{
		{"dotdot", makeTar(t, []tarEntry{file("../x", "x")}), []string{`tar entry "../x": path escapes the root`}},
		{"absolute", makeTar(t, []tarEntry{file("/abs", "x")}), []string{`tar entry "/abs": path is absolute`}},
		{"dotdot inside", makeTar(t, []tarEntry{dirEntry("a/"), file("a/../../x", "x")}), []string{`tar entry "a/../../x": path escapes the root`}},
		{"link target escapes", makeTar(t, []tarEntry{file("x", "x"), {hdr: tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "../x"}}}),
			[]string{`tar entry "l": hard link target "../x": path escapes the root`}},
		{"link target absolute", makeTar(t, []tarEntry{file("x", "x"), {hdr: tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "/x"}}}),
			[]string{`tar entry "l": hard link target "/x": path is absolute`}},
		{"link target missing", makeTar(t, []tarEntry{{hdr: tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "nothere"}}}),
			[]string{`tar entry "l"`, "no such file"}},
		{"truncated in data", bigTar[:3*512+3000], []string{`reading tar entry "big.bin": unexpected EOF`}},
		{"truncated in header", twoFiles[:2*512+200], []string{`reading tar header of entry "second.txt": unexpected EOF`}},
		{"truncated in name", twoFiles[:2*512+5], []string{`reading tar header after entry "first.txt": unexpected EOF`}},
		{"truncated gzip", halve(compress(t, "gzip", bigTar)), []string{`reading tar entry "big.bin": gzip: unexpected EOF`}},
		// zstd and xz decompress whole blocks: the cut shows before the first entry.
		{"truncated zstd", halve(compress(t, "zstd", bigTar)), []string{"zstd: unexpected EOF"}},
		{"truncated xz", halve(compress(t, "xz", bigTar)), []string{"xz: unexpected EOF"}},
		{"file then child", makeTar(t, []tarEntry{file("a", "x"), file("a/b", "y")}), []string{`tar entry "a/b"`, "not a directory"}},
		{"dir then file", makeTar(t, []tarEntry{dirEntry("conflict/"), file("conflict", "y")}), []string{`tar entry "conflict"`, "both a directory and a non-directory"}},
		{"file then dir", makeTar(t, []tarEntry{file("conflict", "y"), dirEntry("conflict/")}), []string{`tar entry "conflict/"`, "both a directory and a non-directory"}},
		{"long name", makeTar(t, []tarEntry{{hdr: tar.Header{Name: "d/" + long, Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatPAX}}}),
			[]string{`tar entry "d/` + long + `"`, "longer than 255"}},
		{"unsupported type", makeTar(t, []tarEntry{{hdr: tar.Header{Name: "vol", Typeflag: 'V', Format: tar.FormatGNU}}}),
			[]string{`tar entry "vol": unsupported entry type 'V'`}},
		{"not a tar", []byte(strings.Repeat("this is not a tar file\n", 100)), []string{"reading tar header", "invalid tar header"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "in.tar")
			if err := os.WriteFile(src, tt.tar, 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "out.erofs")
			err := BuildEROFS(t.Context(), src, out, BuildOptions{})
			if err == nil {
				t.Fatal("BuildEROFS succeeded, want an error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if _, serr := os.Lstat(out); !errors.Is(serr, fs.ErrNotExist) {
				t.Errorf("output exists after a failed build (%v)", serr)
			}
			assertNoTemp(t, dir)
		})
	}
}

// noise returns n bytes that do not compress.
func noise(n int) string {
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return string(b)
}

// halve returns the first half of b.
func halve(b []byte) []byte { return b[:len(b)/2] }

func TestBuildEROFSKeepsOldOutputOnError(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.erofs")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.tar")
	if err := os.WriteFile(bad, makeTar(t, []tarEntry{{hdr: tar.Header{Name: "../x", Typeflag: tar.TypeDir}}}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := BuildEROFS(t.Context(), bad, out, BuildOptions{}); err == nil {
		t.Fatal("BuildEROFS succeeded on a bad tar")
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "old" {
		t.Errorf("existing output changed by a failed build: %q, %v", b, err)
	}
	good := filepath.Join(dir, "good.tar")
	if err := os.WriteFile(good, richTar(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := BuildEROFS(t.Context(), good, out, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if diff := diffImage(richWant(), readImage(t, out)); diff != "" {
		t.Errorf("image differs from the tar (-want +got):\n%s", diff)
	}
	assertNoTemp(t, dir)
}

func TestBuildEROFSOutputIsDirectory(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "in.tar")
	if err := os.WriteFile(src, richTar(t), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	err := BuildEROFS(t.Context(), src, out, BuildOptions{})
	if !errors.Is(err, unix.EISDIR) {
		t.Fatalf("BuildEROFS to a directory: %v, want EISDIR", err)
	}
	if want := "output " + out + ": is a directory"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not contain %q", err, want)
	}
	if left, _ := os.ReadDir(out); len(left) > 0 {
		t.Errorf("files written into the directory: %v", left)
	}
	assertNoTemp(t, dir)
}

func TestBuildEROFSCanceled(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "in.tar")
	if err := os.WriteFile(src, richTar(t), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	out := filepath.Join(dir, "out.erofs")
	for _, source := range []string{src, dir} {
		err := BuildEROFS(ctx, source, out, BuildOptions{})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("BuildEROFS(%s) with a canceled context: %v, want context.Canceled", source, err)
		}
		if _, err := os.Lstat(out); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("output exists after a canceled build (%v)", err)
		}
		assertNoTemp(t, dir)
	}
}

func TestBuildEROFSMissingSource(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out.erofs")
	err := BuildEROFS(t.Context(), filepath.Join(dir, "nothere"), out, BuildOptions{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
	assertNoTemp(t, dir)
}

// setTimes sets the modification time of path, not following a symlink.
func setTimes(t testing.TB, path string, mt time.Time) {
	t.Helper()
	ts := unix.NsecToTimespec(mt.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func TestBuildEROFSFromDir(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	big := strings.Repeat("data", 2000)
	must(os.Mkdir(src, 0o755))
	must(os.WriteFile(filepath.Join(src, "a.txt"), []byte("hello"), 0o644))
	must(os.Mkdir(filepath.Join(src, "sub"), 0o700))
	must(os.WriteFile(filepath.Join(src, "sub", "b.bin"), []byte(big), 0o600))
	must(os.Link(filepath.Join(src, "a.txt"), filepath.Join(src, "sub", "hard")))
	must(os.Symlink("a.txt", filepath.Join(src, "link")))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o640))
	must(unix.Mknod(filepath.Join(src, "sock"), unix.S_IFSOCK|0o600, 0))
	must(os.WriteFile(filepath.Join(src, "setuid"), []byte("#!/bin/sh\n"), 0o755))
	// Permissions exactly as wanted, whatever the umask.
	for name, perm := range map[string]fs.FileMode{"": 0o755, "a.txt": 0o644, "sub": 0o700, "sub/b.bin": 0o600, "fifo": 0o640, "sock": 0o600, "setuid": fs.ModeSetuid | 0o755} {
		must(os.Chmod(filepath.Join(src, name), perm))
	}
	xattrs := map[string]string{"user.test": "value"}
	if err := unix.Lsetxattr(filepath.Join(src, "a.txt"), "user.test", []byte("value"), 0); err != nil {
		t.Logf("no user xattrs on this file system (%v): not checking them", err)
		xattrs = nil
	}
	root := os.Getuid() == 0
	if root {
		must(unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(os.Chmod(filepath.Join(src, "null"), 0o666))
	}
	// Times last, children before their directories.
	times := map[string]time.Time{}
	for i, name := range []string{"a.txt", "sub/b.bin", "link", "fifo", "sock", "setuid", "null", "sub", ""} {
		if name == "null" && !root {
			continue
		}
		mt := time.Unix(1700000000+int64(i)*1000, int64(i)*111111111+1)
		setTimes(t, filepath.Join(src, name), mt)
		times[name] = mt
	}

	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	a := facts{Mode: 0o644, UID: uid, GID: gid, ModTime: times["a.txt"], Size: 5, Data: "hello", Nlink: 2, Xattrs: xattrs}
	want := map[string]facts{
		".":         {Mode: fs.ModeDir | 0o755, UID: uid, GID: gid, ModTime: times[""]},
		"a.txt":     a,
		"sub":       {Mode: fs.ModeDir | 0o700, UID: uid, GID: gid, ModTime: times["sub"]},
		"sub/b.bin": {Mode: 0o600, UID: uid, GID: gid, ModTime: times["sub/b.bin"], Size: int64(len(big)), Data: big, Nlink: 1},
		"sub/hard":  a,
		"link":      {Mode: fs.ModeSymlink | 0o777, UID: uid, GID: gid, ModTime: times["link"], Link: "a.txt", Nlink: 1},
		"fifo":      {Mode: fs.ModeNamedPipe | 0o640, UID: uid, GID: gid, ModTime: times["fifo"], Nlink: 1},
		"sock":      {Mode: fs.ModeSocket | 0o600, UID: uid, GID: gid, ModTime: times["sock"], Nlink: 1},
		"setuid":    {Mode: fs.ModeSetuid | 0o755, UID: uid, GID: gid, ModTime: times["setuid"], Size: 10, Data: "#!/bin/sh\n", Nlink: 1},
	}
	if root {
		want["null"] = facts{Mode: fs.ModeDevice | fs.ModeCharDevice | 0o666, ModTime: times["null"], Nlink: 1, Dev: [2]uint32{1, 3}}
	}

	t.Run("outside", func(t *testing.T) {
		dir := t.TempDir()
		out := filepath.Join(dir, "out.erofs")
		if err := BuildEROFS(t.Context(), src, out, BuildOptions{}); err != nil {
			t.Fatalf("BuildEROFS: %v", err)
		}
		if diff := diffImage(want, readImage(t, out)); diff != "" {
			t.Errorf("image differs from the directory (-want +got):\n%s", diff)
		}
	})
	t.Run("symlink to the source", func(t *testing.T) {
		dir := t.TempDir()
		must(os.Symlink(src, filepath.Join(dir, "src-link")))
		out := filepath.Join(dir, "out.erofs")
		if err := BuildEROFS(t.Context(), filepath.Join(dir, "src-link"), out, BuildOptions{}); err != nil {
			t.Fatalf("BuildEROFS: %v", err)
		}
		if diff := diffImage(want, readImage(t, out)); diff != "" {
			t.Errorf("image differs from the directory (-want +got):\n%s", diff)
		}
	})
	t.Run("output inside the source", func(t *testing.T) {
		out := filepath.Join(src, "self.erofs")
		t.Cleanup(func() { os.Remove(out) })
		if err := BuildEROFS(t.Context(), src, out, BuildOptions{}); err != nil {
			t.Fatalf("BuildEROFS: %v", err)
		}
		got := readImage(t, out)
		// The root's mtime changed when the temporary file was created.
		delete(got, ".")
		want := maps.Clone(want)
		delete(want, ".")
		if diff := diffImage(want, got); diff != "" {
			t.Errorf("image differs from the directory (-want +got):\n%s", diff)
		}
		assertNoTemp(t, src)
	})
}

func TestAddDirNotADirectory(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "out.erofs"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w, err := erofs.NewWriter(out, erofs.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Discard()
	if err := AddDir(t.Context(), w, file); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("AddDir on a file: %v, want a not-a-directory error", err)
	}
}

func TestCleanTarPath(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{"a", "a", false},
		{"./a", "a", false},
		{"./", ".", false},
		{".", ".", false},
		{"a/b/", "a/b", false},
		{"a//b/./c", "a/b/c", false},
		{"././a", "a", false},
		{"", "", true},
		{"/a", "", true},
		{"..", "", true},
		{"a/..", "", true},
		{"a/../b", "", true},
		{strings.Repeat("x", 255), strings.Repeat("x", 255), false},
		{strings.Repeat("x", 256), "", true},
	}
	for _, tt := range tests {
		got, err := cleanTarPath(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("cleanTarPath(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, erofs.ErrInvalidPath) {
			t.Errorf("cleanTarPath(%q) error %v does not match erofs.ErrInvalidPath", tt.in, err)
		}
	}
}

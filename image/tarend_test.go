package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// tarEndCase is a tar stream and what a user-tarball reader says of it:
// the message its error ends with, or "" when it is accepted.
type tarEndCase struct {
	name    string
	tar     []byte
	wantErr string
}

// tarEndCases are tar streams that end in various ways: complete, empty,
// and cut exactly between two entries.
func tarEndCases(t *testing.T) []tarEndCase {
	file := func(name, data string) tarEntry {
		return tarEntry{hdr: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t0}, data: data}
	}
	// noEnd drops the end-of-archive marker (two zero blocks) that
	// tar.Writer.Close writes.
	noEnd := func(b []byte) []byte {
		if !bytes.Equal(b[len(b)-1024:], make([]byte, 1024)) {
			t.Fatal("the archive does not end with two zero blocks")
		}
		return b[:len(b)-1024]
	}
	twoFiles := makeTar(t, []tarEntry{file("first.txt", "0123456789"), file("second.txt", "x")})
	first := makeTar(t, []tarEntry{file("first.txt", "0123456789")})
	zeros := makeTar(t, []tarEntry{file("first.txt", "1"), file("zeros", string(make([]byte, 1024)))})
	dirLast := makeTar(t, []tarEntry{file("a", "1"), {hdr: tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: t0}}})
	return []tarEndCase{
		{"complete", twoFiles, ""},
		{"complete gzip", compress(t, "gzip", twoFiles), ""},
		{"rich", richTar(t), ""},
		{"no entries", make([]byte, 1024), ""},
		{"one zero block", noEnd(twoFiles)[:len(twoFiles)-512], ""},
		{"empty", nil, "empty input, not a tar archive"},
		{"empty gzip", compress(t, "gzip", nil), "empty gzip stream, not a tar archive"},
		{"empty zstd", compress(t, "zstd", nil), "empty zstd stream, not a tar archive"},
		{"cut after the last entry", noEnd(twoFiles), `tar ends after entry "second.txt" without its end-of-archive marker: truncated?`},
		{"cut after the first entry", noEnd(twoFiles)[:len(noEnd(first))], `tar ends after entry "first.txt" without its end-of-archive marker: truncated?`},
		{"cut after a directory", noEnd(dirLast), `tar ends after entry "d/" without its end-of-archive marker: truncated?`},
		{"cut after zero data", noEnd(zeros), `tar ends after entry "zeros" without its end-of-archive marker: truncated?`},
		{"rich cut", noEnd(richTar(t)), `tar ends after entry "./dup" without its end-of-archive marker: truncated?`},
		{"cut before gzip", compress(t, "gzip", noEnd(twoFiles)), `tar ends after entry "second.txt" without its end-of-archive marker: truncated?`},
		{"cut before xz", compress(t, "xz", noEnd(twoFiles)), `tar ends after entry "second.txt" without its end-of-archive marker: truncated?`},
	}
}

// errTail returns err's message from where want starts in it, or all of
// it ("" for nil), so that cmp.Diff shows the whole message when it lacks
// want.
func errTail(err error, want string) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	if i := strings.Index(msg, want); i >= 0 && want != "" {
		return msg[i:]
	}
	return msg
}

// TestBuildEROFSTarEnd checks that build-erofs from a tar file or from
// standard input refuses an empty stream and an archive without its
// end-of-archive marker, and leaves no output behind.
func TestBuildEROFSTarEnd(t *testing.T) {
	for _, tc := range tarEndCases(t) {
		for _, from := range []string{"file", "stdin"} {
			t.Run(tc.name+"/"+from, func(t *testing.T) {
				dir := t.TempDir()
				src, opts := filepath.Join(dir, "in.tar"), BuildOptions{}
				if err := os.WriteFile(src, tc.tar, 0o644); err != nil {
					t.Fatal(err)
				}
				if from == "stdin" {
					src, opts.Stdin = "-", bytes.NewReader(tc.tar)
				}
				out := filepath.Join(dir, "out.erofs")
				err := BuildEROFS(t.Context(), src, out, opts)
				if diff := cmp.Diff(tc.wantErr, errTail(err, tc.wantErr)); diff != "" {
					t.Errorf("BuildEROFS error (-want +got):\n%s", diff)
				}
				_, serr := os.Lstat(out)
				if tc.wantErr != "" && !errors.Is(serr, fs.ErrNotExist) {
					t.Errorf("output exists after a failed build (%v)", serr)
				}
				if tc.wantErr == "" && serr != nil {
					t.Errorf("no output after a successful build: %v", serr)
				}
				assertNoTemp(t, dir)
			})
		}
	}
}

// TestImportTarEnd checks the same for pe image import and the --tar form
// of build-erofs (Cache.Import and BuildImportEROFS, from a file and from
// standard input).
func TestImportTarEnd(t *testing.T) {
	c := testCache(t)
	for _, tc := range tarEndCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tarPath := filepath.Join(dir, "tool.tar")
			if err := os.WriteFile(tarPath, tc.tar, 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := c.Import(t.Context(), ImportOptions{Tar: tarPath, Prefix: "/opt/tool", Tag: "tool:" + strings.ReplaceAll(tc.name, " ", "-")})
			if diff := cmp.Diff(tc.wantErr, errTail(err, tc.wantErr)); diff != "" {
				t.Errorf("Import error (-want +got):\n%s", diff)
			}
			for _, from := range []string{tarPath, "-"} {
				out := filepath.Join(dir, "out.erofs")
				err := c.BuildImportEROFS(t.Context(), out, ImportOptions{Tar: from, Prefix: "/opt/tool"}, BuildOptions{Stdin: bytes.NewReader(tc.tar)})
				if diff := cmp.Diff(tc.wantErr, errTail(err, tc.wantErr)); diff != "" {
					t.Errorf("BuildImportEROFS from %s: error (-want +got):\n%s", from, diff)
				}
				if _, serr := os.Lstat(out); tc.wantErr != "" && !errors.Is(serr, fs.ErrNotExist) {
					t.Errorf("BuildImportEROFS from %s: output exists after a failed build (%v)", from, serr)
				}
				os.Remove(out)
				assertNoTemp(t, dir)
			}
		})
	}
}

// TestFlattenLayerTarEnd checks that image layers, unlike user tarballs,
// may be empty or lack the end-of-archive marker, as docker allows: some
// layer producers omit it.
func TestFlattenLayerTarEnd(t *testing.T) {
	for _, tc := range tarEndCases(t) {
		for _, tarball := range []bool{false, true} {
			want := ""
			if tarball {
				want = tc.wantErr
			}
			b := tc.tar
			_, err := flattenBytes(t, []FlattenLayer{{
				Name:    "layer",
				Open:    func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
				Tarball: tarball,
			}})
			if diff := cmp.Diff(want, errTail(err, want)); diff != "" {
				t.Errorf("%s, Tarball %v: Flatten error (-want +got):\n%s", tc.name, tarball, diff)
			}
		}
	}
}

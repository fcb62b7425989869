package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// run runs pe in-process with args and returns what it wrote.
func run(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := New()
	var out, errOut bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err = cmd.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// makeTree creates a small directory tree with fixed permissions and times.
func makeTree(t *testing.T) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	for _, err := range []error{
		os.MkdirAll(filepath.Join(src, "sub"), 0o755),
		os.WriteFile(filepath.Join(src, "hello.txt"), []byte("hello, pe\n"), 0o644),
		os.WriteFile(filepath.Join(src, "sub", "tool"), []byte("#!/bin/sh\necho hi\n"), 0o755),
		os.Symlink("hello.txt", filepath.Join(src, "link")),
		os.Chmod(filepath.Join(src, "sub", "tool"), os.ModeSetuid|0o755),
		os.Chmod(src, 0o755),
		os.Chmod(filepath.Join(src, "sub"), 0o750),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return src
}

func TestBuildFilesCat(t *testing.T) {
	src := makeTree(t)
	img := filepath.Join(t.TempDir(), "out.erofs")
	stdout, stderr, err := run(t, "", "image", "build-erofs", src, "-o", img, "--mtime", "@1700000000")
	if err != nil {
		t.Fatalf("build-erofs: %v", err)
	}
	if stdout != "" || stderr != "" {
		t.Errorf("build-erofs printed %q and %q, want nothing", stdout, stderr)
	}

	uid, gid := os.Getuid(), os.Getgid()
	stdout, _, err = run(t, "", "image", "files", img)
	if err != nil {
		t.Fatalf("files: %v", err)
	}
	// Sizes of directories depend on the layout: check the other columns.
	var got []string
	for line := range strings.Lines(stdout) {
		f := strings.Fields(line)
		if len(f) < 7 {
			t.Fatalf("short line %q", line)
		}
		if f[0][0] == 'd' {
			f[4] = "DIRSIZE"
		}
		got = append(got, strings.Join(f, " "))
	}
	mt := "2023-11-14T22:13:20Z"
	ids := fmt.Sprintf("%d %d", uid, gid)
	want := []string{
		"drwxr-xr-x 3 " + ids + " DIRSIZE " + mt + " /",
		"-rw-r--r-- 1 " + ids + " 10 " + mt + " /hello.txt",
		"lrwxrwxrwx 1 " + ids + " 9 " + mt + " /link -> hello.txt",
		"drwxr-x--- 2 " + ids + " DIRSIZE " + mt + " /sub",
		"-rwsr-xr-x 1 " + ids + " 18 " + mt + " /sub/tool",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("files output (-want +got):\n%s\nfull output:\n%s", diff, stdout)
	}

	stdout, _, err = run(t, "", "image", "files", img, "/sub", "--json")
	if err != nil {
		t.Fatalf("files --json: %v", err)
	}
	var entries []jsonEntry
	for line := range strings.Lines(stdout) {
		var e jsonEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		entries = append(entries, e)
	}
	if len(entries) != 2 {
		t.Fatalf("files /sub --json printed %d entries, want 2:\n%s", len(entries), stdout)
	}
	entries[0].Size = 0 // directory size depends on the layout
	wantJSON := []jsonEntry{
		{Path: "/sub", Type: "dir", Mode: "0750", UID: uint32(uid), GID: uint32(gid), Mtime: mt, Nlink: 2},
		{Path: "/sub/tool", Type: "file", Mode: "4755", UID: uint32(uid), GID: uint32(gid), Size: 18, Mtime: mt, Nlink: 1},
	}
	if diff := cmp.Diff(wantJSON, entries); diff != "" {
		t.Errorf("files --json (-want +got):\n%s", diff)
	}

	for _, tt := range []struct{ path, want string }{
		{"hello.txt", "hello, pe\n"},
		{"/hello.txt", "hello, pe\n"},
		{"/sub/tool", "#!/bin/sh\necho hi\n"},
	} {
		stdout, _, err := run(t, "", "image", "cat", img, tt.path)
		if err != nil || stdout != tt.want {
			t.Errorf("cat %s = %q, %v; want %q", tt.path, stdout, err, tt.want)
		}
	}
	for _, p := range []string{"/sub", "/nothere"} {
		if _, _, err := run(t, "", "image", "cat", img, p); err == nil {
			t.Errorf("cat %s succeeded, want an error", p)
		}
	}
}

func TestFilesXattrsAndDevices(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.Mkdir(src, 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(src, "f")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(f, "user.pe", []byte{0, 1, 2}, 0); err != nil {
		t.Skipf("no user xattrs here: %v", err)
	}
	img := filepath.Join(dir, "x.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", src, "-o", img); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := run(t, "", "image", "files", img, "/f", "--xattrs")
	if err != nil || !strings.HasSuffix(stdout, " /f [user.pe]\n") {
		t.Errorf("files --xattrs = %q, %v; want a line ending in \" /f [user.pe]\"", stdout, err)
	}
	stdout, _, err = run(t, "", "image", "files", img, "/f", "--json")
	if err != nil || !strings.Contains(stdout, `"xattrs":{"user.pe":"AAEC"}`) {
		t.Errorf("files --json = %q, %v; want the xattr in base64", stdout, err)
	}
}

func TestBuildFromStdinAndSourceDateEpoch(t *testing.T) {
	src := makeTree(t)
	old := time.Unix(1500000000, 0)
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, "hello.txt"), []unix.Timespec{unix.NsecToTimespec(old.UnixNano()), unix.NsecToTimespec(old.UnixNano())}, 0); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1600000000")
	img := filepath.Join(t.TempDir(), "out.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", src, "-o", img); err != nil {
		t.Fatal(err)
	}
	stdout, _, err := run(t, "", "image", "files", img, "--json")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(stdout) {
		var e jsonEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		want := "2020-09-13T12:26:40Z" // the clamp: everything else is newer
		if e.Path == "/hello.txt" {
			want = "2017-07-14T02:40:00Z"
		}
		if e.Mtime != want {
			t.Errorf("%s: mtime %s, want %s", e.Path, e.Mtime, want)
		}
	}

	t.Setenv("SOURCE_DATE_EPOCH", "soon")
	if _, _, err := run(t, "", "image", "build-erofs", src, "-o", img); err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH") {
		t.Errorf("bad SOURCE_DATE_EPOCH: %v, want an error naming it", err)
	}
}

func TestBuildFromStdin(t *testing.T) {
	// An empty tar: two zero blocks.
	img := filepath.Join(t.TempDir(), "out.erofs")
	if _, _, err := run(t, strings.Repeat("\x00", 1024), "image", "build-erofs", "-", "-o", img); err != nil {
		t.Fatalf("build-erofs -: %v", err)
	}
	stdout, _, err := run(t, "", "image", "files", img)
	if err != nil || strings.Count(stdout, "\n") != 1 || !strings.HasSuffix(stdout, " /\n") {
		t.Errorf("files of an empty image = %q, %v; want the root alone", stdout, err)
	}
}

// TestBuildRefusesCutTar checks that a user's tarball that is empty or
// lacks its end-of-archive marker is refused, whichever way it comes in,
// and that no output is left.
func TestBuildRefusesCutTar(t *testing.T) {
	isolate(t)
	dir := t.TempDir()
	whole := tarOf(t, map[string]string{"a": "1", "b": "2"}, false)
	cut := whole[:len(whole)-1024] // tar.Writer ends with two zero blocks
	empty, cutPath := filepath.Join(dir, "empty.tar"), filepath.Join(dir, "cut.tar")
	for _, err := range []error{os.WriteFile(empty, nil, 0o644), os.WriteFile(cutPath, cut, 0o644)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out.erofs")
	const cutMsg = `tar ends after entry "b" without its end-of-archive marker: truncated?`
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"", []string{"image", "build-erofs", "-", "-o", out}, "building " + out + " from standard input: empty input, not a tar archive"},
		{"", []string{"image", "build-erofs", empty, "-o", out}, "building " + out + " from " + empty + ": empty input, not a tar archive"},
		{"", []string{"image", "build-erofs", cutPath, "-o", out}, "building " + out + " from " + cutPath + ": " + cutMsg},
		{string(cut), []string{"image", "build-erofs", "-", "-o", out}, "building " + out + " from standard input: " + cutMsg},
		{"", []string{"image", "build-erofs", "--tar", cutPath, "-o", out}, cutMsg},
		{"", []string{"image", "import", "--tar", empty, "--tag", "cut:1"}, "empty input, not a tar archive"},
		{"", []string{"image", "import", "--tar", cutPath, "--tag", "cut:1"}, cutMsg},
	} {
		_, _, err := run(t, tc.stdin, tc.args...)
		got := ""
		if err != nil {
			got = err.Error()
			if i := strings.Index(got, tc.want); i > 0 {
				got = got[i:] // the --tar and import forms say more before it
			}
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("pe %q (-want +got):\n%s", tc.args, diff)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("pe %q left %s behind", tc.args, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no source", []string{"image", "build-erofs", "-o", filepath.Join(dir, "x")}, "SOURCE (a directory, tar file or image) or --tar is required"},
		{"no output", []string{"image", "build-erofs", dir}, "--output"},
		{"unknown flag", []string{"image", "build-erofs", dir, "--bogus"}, "unknown flag: --bogus"},
		{"bad mtime", []string{"image", "build-erofs", dir, "-o", filepath.Join(dir, "x"), "--mtime", "yesterday"}, "--mtime"},
		{"bad block size", []string{"image", "build-erofs", dir, "-o", filepath.Join(dir, "x"), "--block-size", "1000"}, "block size 1000"},
		{"bad log level", []string{"--log-level", "loud", "image", "files", "x"}, "--log-level"},
		{"unknown command", []string{"bogus"}, `unknown command "bogus"`},
		{"unknown image command", []string{"image", "bogus"}, `unknown command "bogus" for "pe image"`},
		{"files without image", []string{"image", "files"}, "accepts between 1 and 2 arg(s)"},
		{"cat without path", []string{"image", "cat", "x.erofs"}, "accepts 2 arg(s)"},
		{"files of a missing image", []string{"image", "files", filepath.Join(dir, "nothere.erofs")}, "no such file"},
		{"files of a non-image", []string{"image", "files", "/dev/null"}, "/dev/null"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := run(t, "", tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("pe %q: error %v, want one containing %q", tt.args, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
			if stdout != "" || stderr != "" {
				t.Errorf("pe %q printed %q and %q; errors are for the caller to print", tt.args, stdout, stderr)
			}
		})
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) > 0 {
		t.Errorf("files left behind: %q", left)
	}
}

func TestUsageErrorsPointToHelp(t *testing.T) {
	_, _, err := run(t, "", "image", "build-erofs")
	var ue *usageError
	if !errors.As(err, &ue) || !strings.HasSuffix(err.Error(), "(see 'pe image build-erofs --help')") {
		t.Errorf("got %v, want a usage error pointing to the help", err)
	}
}

func TestParseMtime(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{in: "@1700000000", want: time.Unix(1700000000, 0)},
		{in: "1700000000", want: time.Unix(1700000000, 0)},
		{in: "0", want: time.Unix(0, 0)},
		{in: "@-1", want: time.Unix(-1, 0)},
		{in: "2024-01-02T03:04:05Z", want: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)},
		{in: "2024-01-02T03:04:05.123456789+02:00", want: time.Date(2024, 1, 2, 1, 4, 5, 123456789, time.UTC)},
		{in: "", wantErr: true},
		{in: "@", wantErr: true},
		{in: "@1.5", wantErr: true},
		{in: "2024-01-02", wantErr: true},
		{in: "yesterday", wantErr: true},
		{in: "@99999999999999999999", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseMtime(tt.in)
		if (err != nil) != tt.wantErr || !got.Equal(tt.want) {
			t.Errorf("parseMtime(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestLsMode(t *testing.T) {
	tests := []struct {
		mode os.FileMode
		want string
	}{
		{0o644, "-rw-r--r--"},
		{os.ModeDir | 0o755, "drwxr-xr-x"},
		{os.ModeDir | os.ModeSticky | 0o777, "drwxrwxrwt"},
		{os.ModeDir | os.ModeSticky | 0o770, "drwxrwx--T"},
		{os.ModeSetuid | 0o755, "-rwsr-xr-x"},
		{os.ModeSetuid | os.ModeSetgid | 0o644, "-rwSr-Sr--"},
		{os.ModeSetgid | 0o755, "-rwxr-sr-x"},
		{os.ModeSymlink | 0o777, "lrwxrwxrwx"},
		{os.ModeDevice | os.ModeCharDevice | 0o666, "crw-rw-rw-"},
		{os.ModeDevice | 0o660, "brw-rw----"},
		{os.ModeNamedPipe | 0o600, "prw-------"},
		{os.ModeSocket | 0o755, "srwxr-xr-x"},
	}
	for _, tt := range tests {
		if got := lsMode(tt.mode); got != tt.want {
			t.Errorf("lsMode(%v) = %q, want %q", tt.mode, got, tt.want)
		}
	}
}

func TestDisplayName(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/passwd":  "/etc/passwd",
		"/caf\u00e9":   "/caf\u00e9",
		"/with space":  "/with space",
		"/bad\xffname": `"/bad\xffname"`,
		"/new\nline":   `"/new\nline"`,
	} {
		if got := displayName(in); got != want {
			t.Errorf("displayName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestImagePath(t *testing.T) {
	for in, want := range map[string]string{
		"/": ".", "": ".", ".": ".", "/etc/passwd": "etc/passwd", "etc/": "etc", "a//b/./c": "a/b/c", "../x": "x",
	} {
		if got := imagePath(in); got != want {
			t.Errorf("imagePath(%q) = %q, want %q", in, got, want)
		}
	}
}

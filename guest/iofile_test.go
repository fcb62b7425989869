package guest

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// snapshot describes a tree as path → "type mode content|target".
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			m[rel] = "symlink -> " + target
		case info.IsDir():
			m[rel] = "dir " + info.Mode().Perm().String()
		default:
			b, _ := os.ReadFile(p)
			m[rel] = "file " + info.Mode().Perm().String() + " " + string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// makeTree creates files from a spec: "dir/", "file=content", "link->target";
// a "mode:" prefix sets the permission bits.
func makeTree(t *testing.T, root string, specs ...string) {
	t.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		mode := fs.FileMode(0o644)
		if i := strings.Index(s, ":"); i == 4 {
			var m uint32
			for _, c := range s[:4] {
				m = m*8 + uint32(c-'0')
			}
			mode, s = fs.FileMode(m), s[5:]
		}
		switch {
		case strings.HasSuffix(s, "/"):
			if mode == 0o644 {
				mode = 0o755
			}
			if err := os.MkdirAll(filepath.Join(root, s), 0o755); err != nil {
				t.Fatal(err)
			}
			defer os.Chmod(filepath.Join(root, s), mode) // after children exist
		case strings.Contains(s, "->"):
			name, target, _ := strings.Cut(s, "->")
			if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
				t.Fatal(err)
			}
		default:
			name, content, _ := strings.Cut(s, "=")
			p := filepath.Join(root, name)
			if err := os.WriteFile(p, []byte(content), mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func testRequest() *Request {
	return &Request{
		Argv:     []string{"sh", "-c", "echo hi"},
		Env:      []string{"PATH=/bin", "A=b c"},
		Cwd:      "/work",
		UID:      1000,
		GID:      1000,
		Groups:   []uint32{10, 20},
		Timeout:  3 * time.Second,
		Hostname: "box",
		Time:     time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC),
		Seed:     bytes.Repeat([]byte{7}, SeedSize),
	}
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	makeTree(t, in, "0755:run.sh=#!/bin/sh\necho run\n", "sub/", "sub/data.txt=data", "0700:sub/private/", "link->sub/data.txt", "abs->/etc/passwd")
	ioPath := filepath.Join(dir, "io.img")
	lim := Limits{MaxOutput: 8192, MaxFiles: 10, MaxRequest: 1 << 20}
	req := testRequest()
	req.MaxOutput = 5000
	if err := WriteIOFile(ioPath, req, strings.NewReader("stdin bytes"), in, lim); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(ioPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size()%blockSize != 0 {
		t.Errorf("I/O file size %d is not a multiple of %d", fi.Size(), blockSize)
	}
	if _, err := ReadResult(ioPath, lim); !errors.Is(err, ErrNoResult) {
		t.Errorf("ReadResult before the guest ran: %v, want ErrNoResult", err)
	}

	// The guest side.
	g, err := OpenIOFile(ioPath)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	got, err := g.Request()
	if err != nil {
		t.Fatal(err)
	}
	want := *req
	want.HasStdin = true
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	stdin, err := io.ReadAll(g.Stdin())
	if err != nil || string(stdin) != "stdin bytes" {
		t.Errorf("stdin = %q, %v", stdin, err)
	}
	guestIn := filepath.Join(dir, "guest-in")
	if err := g.ExtractInputs(guestIn); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(snapshot(t, in), snapshot(t, guestIn)); diff != "" {
		t.Errorf("inputs (-sent +extracted):\n%s", diff)
	}
	long := strings.Repeat("0123456789", 499)
	io.WriteString(g.Stdout(), long)
	io.WriteString(g.Stdout(), "abcdefghijklmnop") // past MaxOutput 5000: cut
	io.WriteString(g.Stderr(), "err")
	out := filepath.Join(dir, "guest-out")
	makeTree(t, out, "a.txt=A", "d/", "d/b=B", "l->a.txt")
	res := &Result{ExitCode: 3, Rusage: Rusage{UserMs: 1, MaxRSSKB: 2}, Timings: map[string]int64{"program": 5}}
	if err := g.WriteResult(res, out); err != nil {
		t.Fatal(err)
	}
	if err := g.WriteResult(res, out); !errors.Is(err, ErrCommitted) {
		t.Errorf("second WriteResult: %v, want ErrCommitted", err)
	}
	io.WriteString(g.Stdout(), "late") // after the commit: dropped

	resp, err := ReadResult(ioPath, lim)
	if err != nil {
		t.Fatal(err)
	}
	wantRes := Result{ExitCode: 3, StdoutTruncated: true, StdoutBytes: 5006, StderrBytes: 3,
		Rusage: Rusage{UserMs: 1, MaxRSSKB: 2}, Timings: map[string]int64{"program": 5}}
	if _, ok := resp.Result.Timings["collect"]; !ok {
		t.Error("WriteResult did not add its collect time")
	}
	delete(resp.Result.Timings, "collect")
	if diff := cmp.Diff(wantRes, resp.Result); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if string(resp.Stdout) != long+"abcdefghij" || string(resp.Stderr) != "err" {
		t.Errorf("stdout %.20q... (%d bytes) stderr %q", resp.Stdout, len(resp.Stdout), resp.Stderr)
	}
	hostOut := filepath.Join(dir, "host-out")
	if err := resp.ExtractOutputs(hostOut); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(snapshot(t, out), snapshot(t, hostOut)); diff != "" {
		t.Errorf("outputs (-guest +host):\n%s", diff)
	}
}

func TestNoStdinNoInputs(t *testing.T) {
	ioPath := filepath.Join(t.TempDir(), "io.img")
	req := testRequest()
	req.HasStdin = true // WriteIOFile sets it from stdin
	if err := WriteIOFile(ioPath, req, nil, "", DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	g, err := OpenIOFile(ioPath)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	got, err := g.Request()
	if err != nil {
		t.Fatal(err)
	}
	if got.HasStdin || got.MaxOutput != DefaultMaxOutput {
		t.Errorf("HasStdin %v MaxOutput %d, want false %d", got.HasStdin, got.MaxOutput, DefaultMaxOutput)
	}
	if err := g.ExtractInputs(filepath.Join(t.TempDir(), "in")); err != nil {
		t.Error(err)
	}
	if err := g.WriteResult(&Result{}, filepath.Join(t.TempDir(), "missing")); err != nil {
		t.Fatal(err)
	}
	resp, err := ReadResult(ioPath, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.outputs) > 0 {
		t.Error("outputs from a missing directory")
	}
}

func TestWriteIOFileErrors(t *testing.T) {
	dir := t.TempDir()
	fifoDir := filepath.Join(dir, "fifo")
	os.Mkdir(fifoDir, 0o755)
	if err := mkfifo(filepath.Join(fifoDir, "p")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		edit   func(*Request)
		input  string
		lim    Limits
		errHas string
	}{
		{"empty argv", func(r *Request) { r.Argv = nil }, "", DefaultLimits(), "empty command"},
		{"relative cwd", func(r *Request) { r.Cwd = "work" }, "", DefaultLimits(), "not absolute"},
		{"max output over limit", func(r *Request) { r.MaxOutput = 2 << 20 }, "", DefaultLimits(), "MaxOutput"},
		{"request too big", func(r *Request) { r.Env = []string{strings.Repeat("x", 2000)} }, "", Limits{MaxRequest: 1000}, "limit is 1000"},
		{"NUL in argv", func(r *Request) { r.Argv = []string{"a\x00b"} }, "", DefaultLimits(), "NUL"},
		{"missing input dir", func(*Request) {}, filepath.Join(dir, "nope"), DefaultLimits(), "no such file"},
		{"fifo input", func(*Request) {}, fifoDir, DefaultLimits(), "unsupported file type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := testRequest()
			tc.edit(req)
			p := filepath.Join(dir, "io.img")
			err := WriteIOFile(p, req, nil, tc.input, tc.lim)
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want one containing %q", err, tc.errHas)
			}
			if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the I/O file is left behind after an error")
			}
		})
	}
}

func TestOutputsTruncated(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	// Each small file takes 1024 bytes of tar (header + one data block).
	makeTree(t, out, "a=1", "b=2", "c=3", "d=4")
	for _, tc := range []struct {
		name      string
		maxOutput int64
		maxFiles  int
		want      []string
		truncated bool
	}{
		{"all fit", 8192, 0, []string{"a", "b", "c", "d"}, false},
		{"two fit", 2*1024 + tarTrailer, 0, []string{"a", "b"}, true},
		{"too small for one", 1024, 0, nil, true},
		{"file count", 8192, 3, []string{"a", "b", "c"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := os.Create(filepath.Join(dir, "area"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			aw := &areaWriter{w: f, off: 512, limit: tc.maxOutput}
			truncated, err := writeTree(aw, out, treeOptions{maxFiles: tc.maxFiles})
			if err != nil {
				t.Fatal(err)
			}
			if truncated != tc.truncated {
				t.Errorf("truncated = %v, want %v", truncated, tc.truncated)
			}
			if aw.pos > tc.maxOutput {
				t.Errorf("wrote %d bytes, limit %d", aw.pos, tc.maxOutput)
			}
			x := filepath.Join(t.TempDir(), "x")
			os.Mkdir(x, 0o755)
			if err := extractTar(io.NewSectionReader(f, 512, aw.pos), x, extractOptions{maxFiles: 100, maxBytes: 1 << 20}); err != nil {
				t.Fatal(err)
			}
			var got []string
			for name := range snapshot(t, x) {
				got = append(got, name)
			}
			slices.Sort(got)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
		})
	}
}

// TestOutputsTooDeep: the guest leaves out, as truncated, what lies deeper
// than MaxOutputDepth, so that an honest archive always extracts.
func TestOutputsTooDeep(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out")
	deep := filepath.Join(out, strings.Repeat("d/", MaxOutputDepth-1))
	if err := os.MkdirAll(filepath.Join(deep, "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(deep, "kept"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(deep, "e", "dropped"), []byte("x"), 0o644)
	f, err := os.Create(filepath.Join(t.TempDir(), "area"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, truncated, err := writeOutputs(f, 0, 1<<20, out)
	if err != nil || !truncated {
		t.Fatalf("writeOutputs: truncated %v, %v; want truncated", truncated, err)
	}
	x := filepath.Join(t.TempDir(), "x")
	if err := (&Response{outputs: mustRead(t, f, n)}).ExtractOutputs(x); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(x, strings.Repeat("d/", MaxOutputDepth-1), "kept")); err != nil {
		t.Errorf("the file at the depth limit: %v", err)
	}
	if _, err := os.Stat(filepath.Join(x, strings.Repeat("d/", MaxOutputDepth-1), "e", "dropped")); err == nil {
		t.Errorf("the file past the depth limit was archived")
	}
}

func mustRead(t *testing.T, f *os.File, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

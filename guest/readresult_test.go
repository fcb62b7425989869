package guest

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fuzzLimits are small so fuzzing reaches the caps.
var fuzzLimits = Limits{MaxOutput: 4096, MaxFiles: 16, MaxRequest: 1 << 16}

// validFile returns the bytes of an I/O file after a well-behaved guest
// run: streams, an output archive and a result.
func validFile(tb testing.TB) []byte {
	tb.Helper()
	dir := tb.TempDir()
	p := filepath.Join(dir, "io.img")
	req := &Request{Argv: []string{"true"}, MaxOutput: 2048, Timeout: time.Second}
	if err := WriteIOFile(p, req, strings.NewReader("in"), "", fuzzLimits); err != nil {
		tb.Fatal(err)
	}
	g, err := OpenIOFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer g.Close()
	if _, err := g.Request(); err != nil {
		tb.Fatal(err)
	}
	io.WriteString(g.Stdout(), "out")
	io.WriteString(g.Stderr(), "err")
	out := filepath.Join(dir, "out")
	os.MkdirAll(filepath.Join(out, "d"), 0o755)
	os.WriteFile(filepath.Join(out, "d", "f"), []byte("file"), 0o644)
	os.Symlink("d/f", filepath.Join(out, "l"))
	res := &Result{ExitCode: 1, Signal: "SIGTERM", Rusage: Rusage{UserMs: 1}, Timings: map[string]int64{"program": 1}}
	if err := g.WriteResult(res, out); err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// resultOffset finds the result area of a valid file.
func resultOffset(b []byte) int64 {
	h, err := parseHeader(b, int64(len(b)))
	if err != nil {
		panic(err)
	}
	return h.areas[areaResult].Off
}

// patchRecord rewrites the commit record (with a correct checksum).
func patchRecord(b []byte, edit func(*record)) {
	off := resultOffset(b)
	r, err := parseRecord(b[off : off+blockSize])
	if err != nil {
		panic(err)
	}
	edit(r)
	copy(b[off:], r.marshal())
}

// patchJSON replaces the result JSON.
func patchJSON(b []byte, js string) {
	off := resultOffset(b)
	copy(b[off+blockSize:], js)
	patchRecord(b, func(r *record) { r.JSONLen = int64(len(js)) })
}

func TestReadResultValidation(t *testing.T) {
	valid := validFile(t)
	if _, err := readResponse(bytes.NewReader(valid), int64(len(valid)), fuzzLimits); err != nil {
		t.Fatalf("the valid file: %v", err)
	}
	resOff := resultOffset(valid)
	for _, tc := range []struct {
		name   string
		edit   func(b []byte) []byte
		errIs  error
		errHas string
	}{
		{"no result", func(b []byte) []byte { copy(b[resOff:], make([]byte, blockSize)); return b }, ErrNoResult, "no result"},
		{"record magic", func(b []byte) []byte { copy(b[resOff:], "XXXX"); return b }, ErrBadResponse, "result record: magic"},
		{"torn record", func(b []byte) []byte { b[resOff+9]++; return b }, ErrBadResponse, "checksum"},
		{"record version", func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[resOff+4:], 9)
			return b
		}, ErrBadResponse, "version 9"},
		{"stdout past its area", func(b []byte) []byte { patchRecord(b, func(r *record) { r.StdoutLen = 1 << 40 }); return b }, ErrBadResponse, "stdout length 1099511627776 exceeds its area"},
		{"negative length", func(b []byte) []byte { patchRecord(b, func(r *record) { r.StderrLen = -1 }); return b }, ErrBadResponse, "out of range"},
		{"json past the cap", func(b []byte) []byte { patchRecord(b, func(r *record) { r.JSONLen = maxResultJSON + 1 }); return b }, ErrBadResponse, "result length 16385 exceeds"},
		{"outputs past the limit", func(b []byte) []byte {
			patchRecord(b, func(r *record) { r.OutputsLen = 2048 })
			return b
		}, nil, ""},
		{"bad json", func(b []byte) []byte { patchJSON(b, `{"exit_code":`); return b }, ErrBadResponse, "result JSON"},
		{"trailing json", func(b []byte) []byte { patchJSON(b, `{} {}`); return b }, ErrBadResponse, "trailing data"},
		{"exit code range", func(b []byte) []byte { patchJSON(b, `{"exit_code":300}`); return b }, ErrBadResponse, "exit code 300"},
		{"signal name", func(b []byte) []byte { patchJSON(b, `{"signal":"rm -rf /"}`); return b }, ErrBadResponse, "not a signal name"},
		{"error not UTF-8 is repaired", func(b []byte) []byte { patchJSON(b, "{\"error\":\"\xff\"}"); return b }, nil, ""},
		{"negative rusage", func(b []byte) []byte { patchJSON(b, `{"rusage":{"user_ms":-1}}`); return b }, ErrBadResponse, "negative rusage"},
		{"too many timings", func(b []byte) []byte {
			var sb strings.Builder
			sb.WriteString(`{"timings":{`)
			for i := range maxTimings + 1 {
				fmt.Fprintf(&sb, `%s"t%d":1`, map[bool]string{true: "", false: ","}[i == 0], i)
			}
			sb.WriteString(`}}`)
			patchJSON(b, sb.String())
			return b
		}, ErrBadResponse, "65 timings"},
		{"header magic", func(b []byte) []byte { copy(b, "XXXX"); return b }, ErrBadResponse, "header: magic"},
		{"header checksum", func(b []byte) []byte { b[20]++; return b }, ErrBadResponse, "header: checksum"},
		{"file cut short", func(b []byte) []byte { return b[:len(b)-blockSize] }, ErrBadResponse, "run past the end"},
		{"empty file", func(b []byte) []byte { return nil }, ErrBadResponse, "header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.edit(bytes.Clone(valid))
			_, err := readResponse(bytes.NewReader(b), int64(len(b)), fuzzLimits)
			if tc.errIs == nil {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if !errors.Is(err, tc.errIs) || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("error %v, want %v containing %q", err, tc.errIs, tc.errHas)
			}
		})
	}
}

func TestReadResultLimit(t *testing.T) {
	b := validFile(t)
	// The file's areas are 2048 bytes; a host with a smaller limit refuses
	// what the guest could legally write there.
	patchRecord(b, func(r *record) { r.StdoutLen = 2048 })
	lim := fuzzLimits
	lim.MaxOutput = 1024
	_, err := readResponse(bytes.NewReader(b), int64(len(b)), lim)
	if !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "exceeds the limit 1024") {
		t.Fatalf("error %v, want the limit refused", err)
	}
}

// tarOf builds an archive from entries; a nil body for a regular file means
// the header's size is a lie.
type tarEntry struct {
	hdr  tar.Header
	body string
}

func tarOf(entries ...tarEntry) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		tw.WriteHeader(&h)
		io.WriteString(tw, e.body)
	}
	tw.Close()
	return b.Bytes()
}

func file(name, body string) tarEntry {
	return tarEntry{tar.Header{Name: name, Typeflag: tar.TypeReg}, body}
}
func dirEntry(name string, mode int64) tarEntry {
	return tarEntry{tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode}, ""}
}
func symlink(name, target string) tarEntry {
	return tarEntry{tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}, ""}
}

// hostileArchives are the seeds of FuzzExtractOutputs and the cases of
// TestExtractOutputs: name → archive, and the error expected ("" = none).
func hostileArchives() []struct {
	name, errHas string
	tar          []byte
} {
	return []struct {
		name, errHas string
		tar          []byte
	}{
		{"normal", "", tarOf(dirEntry("d/", 0o755), file("d/f", "x"), symlink("l", "d/f"), file("top", "t"))},
		{"read-only dir keeps its children", "", tarOf(dirEntry("ro/", 0o555), file("ro/f", "x"))},
		{"dotdot", `path contains ".."`, tarOf(file("../escape", "x"))},
		{"dotdot inside", `path contains ".."`, tarOf(file("a/../../escape", "x"))},
		{"absolute", "absolute path", tarOf(file("/tmp/escape", "x"))},
		{"through own symlink", "symlink", tarOf(symlink("s", ".."), file("s/escape", "x"))},
		{"through absolute symlink", "symlink", tarOf(symlink("s", "/tmp"), file("s/escape", "x"))},
		{"through own symlink, deeper", "symlink", tarOf(dirEntry("d/", 0o755), symlink("d/s", "../.."), file("d/s/escape", "x"))},
		{"replace a symlink by a file", "", tarOf(symlink("s", "../outside/victim"), file("s", "new"))},
		{"hard link", "unsupported entry type", tarOf(tarEntry{tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "top"}, ""})},
		{"device", "unsupported entry type", tarOf(tarEntry{tar.Header{Name: "dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}, ""})},
		{"fifo", "unsupported entry type", tarOf(tarEntry{tar.Header{Name: "p", Typeflag: tar.TypeFifo}, ""})},
		{"too big", "limit on extracted data", tarOf(file("big", strings.Repeat("x", 5000)))},
		{"too many", "more than 16 entries", tarOf(func() []tarEntry {
			var es []tarEntry
			for i := range 17 {
				es = append(es, file(fmt.Sprintf("f%d", i), ""))
			}
			return es
		}()...)},
		{"implied parents count", "more than 16 entries", tarOf(file(strings.Repeat("d/", 16)+"f", "x"))},
		{"too deep", "the limit on depth is 128", tarOf(file(strings.Repeat("d/", 128)+"f", "x"))},
		{"deep enough", "", tarOf(file(strings.Repeat("d/", 8)+"f", "x"))},
		{"setuid and world-writable", "", tarOf(tarEntry{tar.Header{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o6777}, "s"}, dirEntry("sticky/", 0o1777))},
		{"file over dir", "a directory is in the way", tarOf(dirEntry("x/", 0o755), file("x", "x"))},
		{"dir over file", "exists and is not a directory", tarOf(file("x", "x"), dirEntry("x/", 0o755))},
		{"empty symlink", "bad symlink target", tarOf(symlink("s", ""))},
		{"root itself as file", "extraction directory itself", tarOf(file(".", "x"))},
		{"truncated", "unexpected EOF", tarOf(file("f", strings.Repeat("y", 1000)))[:700]},
		{"garbage", "read archive", []byte(strings.Repeat("garbage!", 100))},
	}
}

func TestExtractOutputs(t *testing.T) {
	for _, tc := range hostileArchives() {
		for _, existed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, empty dir %v", tc.name, existed), func(t *testing.T) {
				base := t.TempDir()
				dir, outside := extractSetup(t, base)
				if existed {
					os.Mkdir(dir, 0o755)
				}
				r := &Response{outputs: tc.tar, lim: fuzzLimits}
				err := r.ExtractOutputs(dir)
				if tc.errHas == "" && err != nil || err != nil && !strings.Contains(err.Error(), tc.errHas) || tc.errHas != "" && err == nil {
					t.Errorf("error %v, want %q", err, tc.errHas)
				}
				checkExtraction(t, base, outside, existed, err)
			})
		}
	}
	umask := processUmask()
	t.Run("modes and content", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "out")
		r := &Response{outputs: tarOf(
			dirEntry("ro/", 0o555), file("ro/f", "x"), dirEntry("shut/", 0),
			tarEntry{tar.Header{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o4755}, "s"},
			tarEntry{tar.Header{Name: "open", Typeflag: tar.TypeReg, Mode: 0o777}, "o"},
			tarEntry{tar.Header{Name: "sticky/", Typeflag: tar.TypeDir, Mode: 0o1777}, ""},
		), lim: fuzzLimits}
		if err := r.ExtractOutputs(dir); err != nil {
			t.Fatal(err)
		}
		want := map[string]fs.FileMode{
			".":      fs.ModeDir | 0o755&^umask,
			"ro":     fs.ModeDir | (0o555|0o700)&^umask,
			"ro/f":   0o644 &^ umask,
			"shut":   fs.ModeDir | (0o644|0o700)&^umask, // tarOf's mode 0 is 0644
			"suid":   0o755 &^ umask,
			"open":   0o777 &^ umask,
			"sticky": fs.ModeDir | 0o777&^umask,
		}
		got := map[string]fs.FileMode{}
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil {
				fi, _ := d.Info()
				rel, _ := filepath.Rel(dir, p)
				got[rel] = fi.Mode()
			}
			return err
		})
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("modes (-want +got):\n%s", diff)
		}
	})
	// The attack of issue 14: entries 1000 directories deep, with none of
	// their parents in the archive, made 20,021 directories.
	t.Run("deep trees", func(t *testing.T) {
		for _, c := range []struct {
			name          string
			entries, deep int
			want          string
		}{
			{"20 entries 1000 deep", 20, 1000, "1000 path components, the limit on depth is 128"},
			{"50 entries 100 deep", 50, 100, "more than 4096 entries (directories that deeper paths imply count too)"},
		} {
			t.Run(c.name, func(t *testing.T) {
				var es []tarEntry
				for i := range c.entries {
					es = append(es, file(fmt.Sprintf("e%d/", i)+strings.Repeat("d/", c.deep-2)+"f", "x"))
				}
				base := t.TempDir()
				dir := filepath.Join(base, "out")
				r := &Response{outputs: tarOf(es...), lim: DefaultLimits()}
				err := r.ExtractOutputs(dir)
				if !errors.Is(err, ErrOutputLimit) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("error %v, want ErrOutputLimit saying %q", err, c.want)
				}
				if left, _ := os.ReadDir(base); len(left) != 0 {
					t.Errorf("left after the error: %v", left)
				}
			})
		}
	})
	t.Run("an empty directory stays itself", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "out")
		os.Mkdir(dir, 0o700)
		os.Chmod(dir, 0o701)
		before, _ := os.Stat(dir)
		defer func() {
			if after, _ := os.Stat(dir); !os.SameFile(before, after) {
				t.Errorf("the output directory was replaced by another")
			}
		}()
		if err := (&Response{outputs: tarOf(file("f", "x")), lim: fuzzLimits}).ExtractOutputs(dir); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode() != fs.ModeDir|0o701 {
			t.Errorf("%v, %v; want mode 0701", fi.Mode(), err)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "f")); string(b) != "x" {
			t.Errorf("f: %q, %v", b, err)
		}
	})
	t.Run("a symlink to an empty directory", func(t *testing.T) {
		base := t.TempDir()
		os.Mkdir(filepath.Join(base, "real"), 0o755)
		os.Symlink("real", filepath.Join(base, "link"))
		if err := (&Response{outputs: tarOf(file("f", "x")), lim: fuzzLimits}).ExtractOutputs(filepath.Join(base, "link")); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(base, "real", "f")); string(b) != "x" {
			t.Errorf("real/f: %q, %v", b, err)
		}
		if l, err := os.Readlink(filepath.Join(base, "link")); l != "real" {
			t.Errorf("link: %q, %v; want it unchanged", l, err)
		}
	})
	t.Run("no outputs", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "a", "out")
		if err := (&Response{lim: fuzzLimits}).ExtractOutputs(dir); err != nil {
			t.Fatal(err)
		}
		if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
			t.Errorf("%v, %v; want an empty directory", ents, err)
		}
	})
}

// TestExtractOutputsNonEmpty: extraction into a directory that has
// entries is refused, and leaves every file, mode and time as it was (a
// repository used as --output keeps its hooks).
func TestExtractOutputsNonEmpty(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "repo")
	os.MkdirAll(filepath.Join(dir, ".git", "hooks"), 0o700)
	os.WriteFile(filepath.Join(dir, "README"), []byte("mine"), 0o600)
	snapshot := func() map[string]string {
		m := map[string]string{}
		filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil {
				fi, _ := d.Info()
				b, _ := os.ReadFile(p)
				m[p] = fmt.Sprintf("%v %v %q", fi.Mode(), fi.ModTime(), b)
			}
			return nil
		})
		return m
	}
	before := snapshot()
	archive := tarOf(
		dirEntry(".git/", 0o777), dirEntry(".git/hooks/", 0o777),
		tarEntry{tar.Header{Name: ".git/hooks/pre-commit", Typeflag: tar.TypeReg, Mode: 0o755}, "#!/bin/sh\nevil\n"},
		tarEntry{tar.Header{Name: "README", Typeflag: tar.TypeReg, Mode: 0o777}, "replaced"},
	)
	err := (&Response{outputs: archive, lim: fuzzLimits}).ExtractOutputs(dir)
	if !errors.Is(err, ErrOutputNotEmpty) {
		t.Errorf("error %v, want ErrOutputNotEmpty", err)
	}
	if diff := cmp.Diff(before, snapshot()); diff != "" {
		t.Errorf("the directory changed (-before +after):\n%s", diff)
	}
	if err := CheckOutputDir(dir); !errors.Is(err, ErrOutputNotEmpty) {
		t.Errorf("CheckOutputDir: %v, want ErrOutputNotEmpty", err)
	}
	if err := CheckOutputDir(filepath.Join(dir, "README")); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("CheckOutputDir of a file: %v", err)
	}
}

// extractSetup makes base/outside (which must stay as it is: one file)
// and names base/out, the extraction directory, which does not exist.
func extractSetup(t testing.TB, base string) (dir, outside string) {
	dir, outside = filepath.Join(base, "out"), filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "victim"), []byte("untouched"), 0o644)
	return dir, outside
}

// checkExtraction checks an extraction into base/out (which existed,
// empty, or not) that ended with err: nothing beside it, nothing outside,
// and on error base/out as it was.
func checkExtraction(t testing.TB, base, outside string, existed bool, err error) {
	t.Helper()
	entries, _ := os.ReadDir(base)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{"out", "outside"}
	if err != nil && !existed {
		want = []string{"outside"}
	}
	if err != nil && existed {
		if left, _ := os.ReadDir(filepath.Join(base, "out")); len(left) > 0 {
			t.Errorf("left in the output directory after an error: %v", left)
		}
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("beside the output directory (-want +got):\n%s", diff)
	}
	entries, _ = os.ReadDir(outside)
	b, _ := os.ReadFile(filepath.Join(outside, "victim"))
	if len(entries) != 1 || string(b) != "untouched" {
		t.Errorf("extraction wrote outside its dir: %d entries, victim %q", len(entries), b)
	}
}

// FuzzExtractOutputs feeds arbitrary archives to ExtractOutputs: it must
// never panic, write outside its directory or through a symlink, pass the
// caps (entries with every directory counted, bytes, depth), make special
// files or setuid, setgid or sticky modes, or leave anything on error.
func FuzzExtractOutputs(f *testing.F) {
	for _, tc := range hostileArchives() {
		f.Add(tc.tar)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		dir, outside := extractSetup(t, base)
		// Odd lengths go into an empty directory, even ones into none.
		existed := len(data)%2 == 1
		if existed {
			os.Mkdir(dir, 0o755)
		}
		r := &Response{outputs: data, lim: fuzzLimits}
		err := r.ExtractOutputs(dir)
		checkExtraction(t, base, outside, existed, err)
		var total int64
		n := 0
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || p == dir {
				return nil
			}
			n++
			fi, _ := d.Info()
			switch {
			case fi.Mode().IsRegular():
				total += fi.Size()
			case fi.IsDir(), fi.Mode()&fs.ModeSymlink != 0:
			default:
				t.Errorf("%s: a %v", p, fi.Mode().Type())
			}
			if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
				t.Errorf("%s: mode %v", p, fi.Mode())
			}
			if rel, _ := filepath.Rel(dir, p); strings.Count(rel, "/") >= MaxOutputDepth {
				t.Errorf("%s: deeper than %d", p, MaxOutputDepth)
			}
			return nil
		})
		if total > fuzzLimits.MaxOutput || n > fuzzLimits.MaxFiles {
			t.Errorf("extracted %d bytes in %d entries, caps %d and %d", total, n, fuzzLimits.MaxOutput, fuzzLimits.MaxFiles)
		}
	})
}

// FuzzReadResult feeds arbitrary guest-written bytes to the result reader.
// An input starting with "RAW" is the whole file; any other is a list of
// patches applied to a valid file, so the fuzzer can change any byte the
// guest could: op 'W' u32 offset u16 length bytes, op 'T' u32 new size.
func FuzzReadResult(f *testing.F) {
	valid := validFile(f)
	f.Add([]byte{})
	f.Add(append([]byte("RAW"), valid[:blockSize]...))
	f.Add([]byte("W\x00\x00\x00\x00\x04\x00PEIO"))
	resOff := uint32(resultOffset(valid))
	patch := func(off uint32, b []byte) []byte {
		p := []byte{'W'}
		p = binary.LittleEndian.AppendUint32(p, off)
		p = binary.LittleEndian.AppendUint16(p, uint16(len(b)))
		return append(p, b...)
	}
	f.Add(patch(resOff+16, []byte{0xff, 0xff, 0xff, 0xff}))
	f.Add(patch(resOff+blockSize, []byte(`{"exit_code":1e99}`)))
	f.Add(append([]byte{'T'}, binary.LittleEndian.AppendUint32(nil, uint32(len(valid)/2))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		file := data
		if !bytes.HasPrefix(data, []byte("RAW")) {
			file = applyPatches(bytes.Clone(valid), data)
		} else {
			file = data[3:]
		}
		resp, err := readResponse(bytes.NewReader(file), int64(len(file)), fuzzLimits)
		if err != nil {
			if !errors.Is(err, ErrBadResponse) && !errors.Is(err, ErrNoResult) {
				t.Fatalf("error %v wraps neither ErrBadResponse nor ErrNoResult", err)
			}
			return
		}
		if int64(len(resp.Stdout)) > fuzzLimits.MaxOutput || int64(len(resp.Stderr)) > fuzzLimits.MaxOutput || int64(len(resp.outputs)) > fuzzLimits.MaxOutput {
			t.Fatalf("accepted %d/%d/%d bytes past the cap %d", len(resp.Stdout), len(resp.Stderr), len(resp.outputs), fuzzLimits.MaxOutput)
		}
	})
}

func applyPatches(b, ops []byte) []byte {
	for len(ops) > 0 {
		switch ops[0] {
		case 'W':
			if len(ops) < 7 {
				return b
			}
			off := int(binary.LittleEndian.Uint32(ops[1:]))
			n := int(binary.LittleEndian.Uint16(ops[5:]))
			ops = ops[7:]
			n = min(n, len(ops))
			if off < len(b) {
				copy(b[off:], ops[:n])
			}
			ops = ops[n:]
		case 'T':
			if len(ops) < 5 {
				return b
			}
			if size := int(binary.LittleEndian.Uint32(ops[1:])); size < len(b) {
				b = b[:size]
			}
			ops = ops[5:]
		default:
			ops = ops[1:]
		}
	}
	return b
}

var updateCorpus = flag.Bool("update-fuzz-corpus", false, "write the fuzz seed corpora under testdata/fuzz")

// TestWriteFuzzCorpus writes the committed seed corpora (go test -run
// TestWriteFuzzCorpus -update-fuzz-corpus ./guest), so they can be read and
// kept in sync with the seeds added in the fuzz functions.
func TestWriteFuzzCorpus(t *testing.T) {
	if !*updateCorpus {
		t.Skip("run with -update-fuzz-corpus to rewrite testdata/fuzz")
	}
	write := func(target, name string, data []byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		os.MkdirAll(dir, 0o755)
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range hostileArchives() {
		write("FuzzExtractOutputs", strings.ReplaceAll(tc.name, " ", "-"), tc.tar)
	}
	valid := validFile(t)
	resOff := resultOffset(valid)
	w := func(off int64, b string) []byte {
		p := []byte{'W'}
		p = binary.LittleEndian.AppendUint32(p, uint32(off))
		p = binary.LittleEndian.AppendUint16(p, uint16(len(b)))
		return append(p, b...)
	}
	for name, data := range map[string][]byte{
		"valid":             {},
		"no-result":         w(resOff, string(make([]byte, blockSize))),
		"huge-stdout":       w(resOff+16, "\xff\xff\xff\xff\xff\xff\xff\x7f"),
		"bad-json":          w(resOff+blockSize, `{"exit_code":"x"}`),
		"header-area-moved": w(16, "\x00\x10"),
		"truncated":         append([]byte{'T'}, binary.LittleEndian.AppendUint32(nil, uint32(resOff+100))...),
		"raw-header":        append([]byte("RAW"), valid[:blockSize]...),
	} {
		write("FuzzReadResult", name, data)
	}
}

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
		{"over pre-existing symlink dir", "symlink", tarOf(file("pre/escape", "x"))},
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
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			dir, outside := extractSetup(t, base)
			r := &Response{outputs: tc.tar, lim: fuzzLimits}
			err := r.ExtractOutputs(dir)
			if tc.errHas == "" && err != nil || err != nil && !strings.Contains(err.Error(), tc.errHas) || tc.errHas != "" && err == nil {
				t.Errorf("error %v, want %q", err, tc.errHas)
			}
			checkOutside(t, base, outside)
		})
	}
	t.Run("modes and content", func(t *testing.T) {
		dir := t.TempDir()
		r := &Response{outputs: tarOf(dirEntry("ro/", 0o555), file("ro/f", "x"), tarEntry{tar.Header{Name: "suid", Typeflag: tar.TypeReg, Mode: 0o4755}, "s"}), lim: fuzzLimits}
		if err := r.ExtractOutputs(dir); err != nil {
			t.Fatal(err)
		}
		for p, want := range map[string]fs.FileMode{"ro": fs.ModeDir | 0o555, "ro/f": 0o644, "suid": 0o755} {
			fi, err := os.Lstat(filepath.Join(dir, p))
			if err != nil || fi.Mode() != want {
				t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode(), err, want)
			}
		}
		os.Chmod(filepath.Join(dir, "ro"), 0o755) // let TempDir clean up
	})
}

// extractSetup makes base/out (the extraction dir, holding a symlink "pre"
// to base/outside) and base/outside (which must stay as it is: one file).
func extractSetup(t testing.TB, base string) (dir, outside string) {
	dir, outside = filepath.Join(base, "out"), filepath.Join(base, "outside")
	os.Mkdir(dir, 0o755)
	os.Mkdir(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "victim"), []byte("untouched"), 0o644)
	os.Symlink("../outside", filepath.Join(dir, "pre"))
	return dir, outside
}

func checkOutside(t testing.TB, base, outside string) {
	entries, _ := os.ReadDir(base)
	if len(entries) != 2 {
		t.Errorf("extraction created %d entries beside the output dir", len(entries)-2)
	}
	entries, _ = os.ReadDir(outside)
	b, _ := os.ReadFile(filepath.Join(outside, "victim"))
	if len(entries) != 1 || string(b) != "untouched" {
		t.Errorf("extraction wrote outside its dir: %d entries, victim %q", len(entries), b)
	}
	// Let TempDir remove read-only directories the archive made.
	filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
}

// FuzzExtractOutputs feeds arbitrary archives to ExtractOutputs: it must
// never panic, write outside its directory or through a symlink, or pass
// the caps.
func FuzzExtractOutputs(f *testing.F) {
	for _, tc := range hostileArchives() {
		f.Add(tc.tar)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		dir, outside := extractSetup(t, base)
		r := &Response{outputs: data, lim: fuzzLimits}
		r.ExtractOutputs(dir)
		checkOutside(t, base, outside)
		var total int64
		n := 0
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				fi, _ := d.Info()
				total += fi.Size()
			}
			n++
			return nil
		})
		if total > fuzzLimits.MaxOutput || n > fuzzLimits.MaxFiles+2 { // + dir and pre
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

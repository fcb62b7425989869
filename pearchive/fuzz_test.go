package pearchive

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed files in testdata/fuzz/Fuzz{Reader,UnpackDir}")

// fuzzLimits keeps fuzzing cheap in memory and disk.
var fuzzLimits = Limits{MaxDepth: 8, MaxFiles: 200, MaxBytes: 1 << 20}

// seeds returns valid and malformed archives to start fuzzing from.
func seeds() [][]byte {
	return [][]byte{
		vector,
		{},
		cat(dirMsg("d"), popMsg),
		cat(dirMsg("a"), dirMsg("b"), fileMsg("c", "xy"), popMsg, fileMsg("d", "z"), popMsg, fileMsg("e", "")),
		cat(fileMsg("a", "1"), dirMsg("d"), fileMsg("a", "2"), popMsg),
		cat(fileMsg("stdout", "hello\n"), fileMsg("stderr", ""), dirMsg("dir"), fileMsg("out.txt", "result"), popMsg),
		fileMsg(strings.Repeat("n", 255), "x"),
		fileMsg("\xff\xfe", "bin"),
		nest(8),
		nest(9),
		[]byte{0x04},
		[]byte{tagFile, 'a', 0, 5, 0, 0, 0, 'x'},
		[]byte{tagFile, 'a', 0, 0xff, 0xff, 0xff, 0xff},
		fileMsg("", "x"),
		fileMsg("..", "x"),
		fileMsg("a/b", "x"),
		cat(dirMsg("d"), dirMsg("e")),
		popMsg,
		cat(fileMsg("a", "1"), fileMsg("a", "2")),
		cat(dirMsg("d"), popMsg, dirMsg("d"), popMsg),
		cat(fileMsg("a", "1"), dirMsg("a"), fileMsg("b", "2"), popMsg),
	}
}

// TestWriteSeedCorpus writes seeds() as committed corpus files when run
// with -update-corpus.
func TestWriteSeedCorpus(t *testing.T) {
	if !*updateCorpus {
		t.Skip("run with -update-corpus to rewrite the seed corpus")
	}
	for _, target := range []string{"FuzzReader", "FuzzUnpackDir"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds() {
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// FuzzReader checks that any input either parses or gives a *FormatError,
// that the streaming Reader and ReadAll agree, and that a parsed archive
// written again (by a Writer and by PackFiles) gives the same bytes.
func FuzzReader(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := readStream(data, fuzzLimits)
		files, err2 := ReadAll(data, fuzzLimits)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Reader error %v (%T) is not a *FormatError", err, err)
			}
			if diff := cmp.Diff(err, err2); diff != "" {
				t.Fatalf("Reader and ReadAll errors differ (-Reader +ReadAll):\n%s", diff)
			}
			return
		}
		if err2 != nil {
			t.Fatalf("Reader accepts the archive, ReadAll fails: %v", err2)
		}
		again, err := repack(entries)
		if err != nil {
			t.Fatalf("repack with a Writer: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("repacked %x, want %x", again, data)
		}
		reparsed, err := readStream(again, fuzzLimits)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(entries, reparsed); diff != "" {
			t.Fatalf("reparsed (-first +second):\n%s", diff)
		}
		var buf bytes.Buffer
		if err := PackFiles(&buf, files); err != nil {
			t.Fatalf("PackFiles(ReadAll): %v", err)
		}
		if !bytes.Equal(buf.Bytes(), data) {
			t.Fatalf("PackFiles(ReadAll) = %x, want %x", buf.Bytes(), data)
		}
	})
}

// FuzzUnpackDir extracts any input into a directory holding symbolic links
// that point outside it, and checks that nothing is written outside, and
// that a successful extraction gives the archive's tree.
func FuzzUnpackDir(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parent := t.TempDir()
		dst, outside := filepath.Join(parent, "dst"), filepath.Join(parent, "outside")
		preset := map[string]string{
			"dst/a":           "-> ../outside",
			"dst/b":           "-> ../outside/new",
			"dst/dir":         "-> " + outside,
			"dst/stdout":      "-> /dev/null",
			"outside/keep":    "keep",
			"outside/keepdir": "<dir>",
		}
		makeTree(t, parent, preset)
		err := UnpackDir(bytes.NewReader(data), dst, fuzzLimits)
		got := tree(t, parent)
		// Nothing outside dst may change.
		for p, v := range got {
			if pv, ok := preset[p]; !strings.HasPrefix(p, "dst/") && p != "dst" && p != "outside" && (!ok || pv != v) {
				t.Fatalf("UnpackDir (error %v) wrote %q outside its directory", err, p)
			}
		}
		for p, v := range preset {
			if got[p] != v {
				t.Fatalf("UnpackDir (error %v) changed %q: %q, want %q", err, p, got[p], v)
			}
		}
		if err != nil {
			return
		}
		files, err := ReadAll(data, fuzzLimits)
		if err != nil {
			t.Fatalf("UnpackDir accepts the archive, ReadAll fails: %v", err)
		}
		want := map[string]string{}
		for p, v := range preset {
			if strings.HasPrefix(p, "dst/") {
				want[p[len("dst/"):]] = v
			}
		}
		for p, v := range memTree(files) {
			want[p] = v
		}
		if diff := cmp.Diff(want, tree(t, dst)); diff != "" {
			t.Fatalf("extracted tree (-want +got):\n%s", diff)
		}
	})
}

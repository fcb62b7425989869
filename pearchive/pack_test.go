package pearchive

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// deepTree returns a tree() map of n nested directories "d" holding "f".
func deepTree(n int) map[string]string {
	m := map[string]string{}
	p := ""
	for range n {
		p = joinPath(p, "d")
		m[p] = "<dir>"
	}
	m[p+"/f"] = "bottom"
	return m
}

func TestPackDirUnpackDirRoundTrip(t *testing.T) {
	big := make([]byte, 5<<20+123)
	rand.Read(big)
	tests := []struct {
		name string
		tree map[string]string
	}{
		{"empty", map[string]string{}},
		{"one file", map[string]string{"file1": "data1"}},
		{"empty file and dir", map[string]string{"empty": "", "d": "<dir>", "e/f/g": "<dir>"}},
		{"mixed", map[string]string{"a/b/c.txt": "c", "a/b/d.txt": "d", "a/x": "", "b": "<dir>", "z": "last"}},
		{"255-byte names", map[string]string{strings.Repeat("n", 255): "x", strings.Repeat("d", 255) + "/" + strings.Repeat("m", 255): "y"}},
		{"non-UTF-8 names", map[string]string{"\xff\xfe": "bin", "dir\x80/\xc3\x28": "bad", "ok é": "utf8"}},
		{"deep", deepTree(32)},
		{"big file", map[string]string{"big.bin": string(big), "small": "s"}},
		{"dotfiles", map[string]string{".hidden": "h", "..x": "x", "...": "<dir>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, dst := t.TempDir(), t.TempDir()
			makeTree(t, src, tt.tree)
			var buf bytes.Buffer
			if err := PackDir(&buf, src, PackOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := UnpackDir(bytes.NewReader(buf.Bytes()), dst, Limits{}); err != nil {
				t.Fatal(err)
			}
			want := withParents(tt.tree)
			if diff := cmp.Diff(want, tree(t, dst)); diff != "" {
				t.Errorf("unpacked tree (-want +got):\n%s", diff)
			}
			files, err := ReadAll(buf.Bytes(), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, memTree(files)); diff != "" {
				t.Errorf("ReadAll (-want +got):\n%s", diff)
			}
			// Packing the unpacked tree gives the same bytes.
			var again bytes.Buffer
			if err := PackDir(&again, dst, PackOptions{}); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), again.Bytes()) {
				t.Error("PackDir output differs between the source and the unpacked tree")
			}
		})
	}
}

func TestPackDirSortedAndSkipsSpecialFiles(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, map[string]string{
		"b": "2", "a": "1", "c/z": "", "c/y": "<dir>", "B": "upper",
		"link":    "-> a",
		"dirlink": "-> c",
		"escape":  "-> /etc/passwd",
	})
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := PackDir(&buf, src, PackOptions{}); err != nil {
		t.Fatal(err)
	}
	want := cat(fileMsg("B", "upper"), fileMsg("a", "1"), fileMsg("b", "2"),
		dirMsg("c"), dirMsg("y"), popMsg, fileMsg("z", ""), popMsg)
	if !bytes.Equal(buf.Bytes(), want) {
		got, _ := ReadAll(buf.Bytes(), Limits{})
		t.Errorf("PackDir wrote %q, want the sorted regular files and dirs only", got)
	}
}

// TestWriterAddDir checks a directory packed into a Writer's subdirectory
// is PackDir's output framed by that directory's Dir and Pop.
func TestWriterAddDir(t *testing.T) {
	src := t.TempDir()
	makeTree(t, src, map[string]string{"a": "1", "c/z": "zz", "c/y": "<dir>"})
	var packed bytes.Buffer
	if err := PackDir(&packed, src, PackOptions{}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	aw := NewWriter(&buf)
	aw.File("stdout", 2, strings.NewReader("hi"))
	aw.Dir("dir")
	if err := aw.AddDir(src, PackOptions{}); err != nil {
		t.Fatal(err)
	}
	aw.Pop()
	if err := aw.Close(); err != nil {
		t.Fatal(err)
	}
	want := cat(fileMsg("stdout", "hi"), dirMsg("dir"), packed.Bytes(), popMsg)
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("AddDir wrote %q, want %q", buf.Bytes(), want)
	}
	if err := NewWriter(io.Discard).AddDir(filepath.Join(src, "missing"), PackOptions{}); err == nil {
		t.Error("AddDir of a missing directory: no error")
	}
}

func TestPackDirLimits(t *testing.T) {
	tests := []struct {
		name    string
		tree    map[string]string
		opts    PackOptions
		wantErr string // after the source directory
	}{
		{"too deep default", deepTree(33), PackOptions{}, strings.Repeat("/d", 33) + ": directories nested more than 32 deep"},
		{"too deep", deepTree(3), PackOptions{MaxDepth: 2}, "/d/d/d: directories nested more than 2 deep"},
		{"too many entries", map[string]string{"a": "", "b": "<dir>", "c": ""}, PackOptions{MaxFiles: 2}, "/c: more than 2 entries"},
		{"too many bytes", map[string]string{"a": "12345", "b/c": "123456"}, PackOptions{MaxBytes: 10}, "/b/c: file of 6 bytes takes the content over 10 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := t.TempDir()
			makeTree(t, src, tt.tree)
			var buf bytes.Buffer
			err := PackDir(&buf, src, tt.opts)
			if want := "pearchive: pack " + src + tt.wantErr; err == nil || err.Error() != want {
				t.Fatalf("got error %v, want %q", err, want)
			}
		})
	}
	t.Run("negative depth means none", func(t *testing.T) {
		src := t.TempDir()
		makeTree(t, src, deepTree(40))
		if err := PackDir(&bytes.Buffer{}, src, PackOptions{MaxDepth: -1}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		err := PackDir(&bytes.Buffer{}, filepath.Join(t.TempDir(), "nope"), PackOptions{})
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("got %v, want ErrNotExist", err)
		}
	})
}

func TestPackFilesReadAll(t *testing.T) {
	tests := []struct {
		name  string
		files []MemFile
		want  []byte
		back  []MemFile // ReadAll's result; nil means files
	}{
		{"vector", []MemFile{{Path: "file1", Data: []byte("data1")}}, vector, nil},
		{"nothing", nil, nil, nil},
		{"shared dirs in first-appearance order",
			[]MemFile{{Path: "z/b", Data: []byte("1")}, {Path: "a", Data: []byte("2")}, {Path: "z/a", Data: []byte("3")}},
			cat(dirMsg("z"), fileMsg("b", "1"), fileMsg("a", "3"), popMsg, fileMsg("a", "2")),
			[]MemFile{{Path: "z/"}, {Path: "z/b", Data: []byte("1")}, {Path: "z/a", Data: []byte("3")}, {Path: "a", Data: []byte("2")}}},
		{"empty dir and empty file",
			[]MemFile{{Path: "d/"}, {Path: "e", Data: []byte{}}, {Path: "x/y/"}},
			cat(dirMsg("d"), popMsg, fileMsg("e", ""), dirMsg("x"), dirMsg("y"), popMsg, popMsg),
			[]MemFile{{Path: "d/"}, {Path: "e", Data: []byte{}}, {Path: "x/"}, {Path: "x/y/"}}},
		{"explicit dir after its contents",
			[]MemFile{{Path: "d/f", Data: []byte("x")}, {Path: "d/"}},
			cat(dirMsg("d"), fileMsg("f", "x"), popMsg),
			[]MemFile{{Path: "d/"}, {Path: "d/f", Data: []byte("x")}}},
		{"nil data is an empty file",
			[]MemFile{{Path: "n"}},
			fileMsg("n", ""),
			[]MemFile{{Path: "n", Data: []byte{}}}},
		{"non-UTF-8", []MemFile{{Path: "\xff/\xfe", Data: []byte("x")}},
			cat(dirMsg("\xff"), fileMsg("\xfe", "x"), popMsg),
			[]MemFile{{Path: "\xff/"}, {Path: "\xff/\xfe", Data: []byte("x")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := PackFiles(&buf, tt.files); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), tt.want) {
				t.Errorf("PackFiles wrote %x, want %x", buf.Bytes(), tt.want)
			}
			got, err := ReadAll(buf.Bytes(), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			back := tt.back
			if back == nil {
				back = tt.files
			}
			if diff := cmp.Diff(back, got); diff != "" {
				t.Errorf("ReadAll (-want +got):\n%s", diff)
			}
			// ReadAll's output packs back to the same bytes.
			var again bytes.Buffer
			if err := PackFiles(&again, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again.Bytes(), buf.Bytes()) {
				t.Errorf("PackFiles(ReadAll(b)) = %x, want %x", again.Bytes(), buf.Bytes())
			}
		})
	}
}

func TestReadAllDoesNotAlias(t *testing.T) {
	b := bytes.Clone(vector)
	files, err := ReadAll(b, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] = '!'
	if string(files[0].Data) != "data1" {
		t.Errorf("ReadAll data changed with its input: %q", files[0].Data)
	}
}

func TestPackFilesErrors(t *testing.T) {
	tests := []struct {
		name    string
		files   []MemFile
		wantErr string
	}{
		{"empty path", []MemFile{{Path: ""}}, `path "": empty path`},
		{"slash only", []MemFile{{Path: "/"}}, `path "/": absolute path`},
		{"absolute", []MemFile{{Path: "/etc/passwd"}}, "absolute path"},
		{"dot", []MemFile{{Path: "."}}, `name "." is not allowed`},
		{"dot dir", []MemFile{{Path: "./"}}, `name "." is not allowed`},
		{"dotdot component", []MemFile{{Path: "a/../b"}}, `name ".." is not allowed`},
		{"empty component", []MemFile{{Path: "a//b"}}, "empty name"},
		{"double trailing slash", []MemFile{{Path: "a//"}}, "empty name"},
		{"NUL", []MemFile{{Path: "a\x00"}}, "contains NUL"},
		{"long component", []MemFile{{Path: "a/" + strings.Repeat("x", 256)}}, "longer than 255 bytes"},
		{"duplicate file", []MemFile{{Path: "a/b"}, {Path: "a/b"}}, `path "a/b": duplicate path`},
		{"duplicate dir", []MemFile{{Path: "a/"}, {Path: "a/"}}, `path "a/": duplicate path`},
		{"file then dir", []MemFile{{Path: "a"}, {Path: "a/b"}}, `path "a/b": "a" is a file and a directory`},
		{"file then explicit dir", []MemFile{{Path: "a"}, {Path: "a/"}}, `path "a/": "a" is a file and a directory`},
		{"dir then file", []MemFile{{Path: "a/b"}, {Path: "a"}}, `path "a": "a" is a directory and a file`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := PackFiles(&buf, tt.files)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
			if buf.Len() != 0 {
				t.Errorf("wrote %d bytes despite the error", buf.Len())
			}
		})
	}
}

func TestUnpackDirModes(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dst := t.TempDir()
	if err := UnpackDir(bytes.NewReader(cat(dirMsg("d"), fileMsg("f", "x"), popMsg)), dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]fs.FileMode{"d": fs.ModeDir | 0o755, "d/f": 0o644} {
		fi, err := os.Lstat(filepath.Join(dst, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
}

func TestUnpackDirRefusesExisting(t *testing.T) {
	outside := t.TempDir()
	tests := []struct {
		name     string
		existing map[string]string
		archive  []byte
		wantErr  string
	}{
		{"existing file", map[string]string{"a": "old"}, fileMsg("a", "new"), `unpack "a"`},
		{"existing dir", map[string]string{"d": "<dir>"}, cat(dirMsg("d"), popMsg), `unpack "d"`},
		{"file over existing dir", map[string]string{"d": "<dir>"}, fileMsg("d", "x"), `unpack "d"`},
		{"symlink to outside dir", map[string]string{"d": "-> " + outside}, cat(dirMsg("d"), fileMsg("f", "x"), popMsg), `unpack "d"`},
		{"symlink to outside file", map[string]string{"f": "-> " + filepath.Join(outside, "f")}, fileMsg("f", "x"), `unpack "f"`},
		{"dangling relative symlink", map[string]string{"f": "-> ../escaped"}, fileMsg("f", "x"), `unpack "f"`},
		{"nested symlink", map[string]string{"d/e": "-> /tmp"}, cat(dirMsg("x"), popMsg, fileMsg("d", "x")), `unpack "d"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "dst")
			if err := os.Mkdir(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			makeTree(t, dst, tt.existing)
			err := UnpackDir(bytes.NewReader(tt.archive), dst, Limits{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, fs.ErrExist) {
				t.Fatalf("got error %v, want ErrExist naming %q", err, tt.wantErr)
			}
			if got := tree(t, outside); len(got) != 0 {
				t.Errorf("wrote outside the target: %v", got)
			}
			if got := tree(t, parent); got["escaped"] != "" {
				t.Errorf("wrote beside the target: %v", got)
			}
			for p, v := range tt.existing {
				if got := tree(t, dst)[p]; got != v {
					t.Errorf("existing %s changed: %q, want %q", p, got, v)
				}
			}
		})
	}
}

func TestUnpackDirMissingDir(t *testing.T) {
	err := UnpackDir(bytes.NewReader(vector), filepath.Join(t.TempDir(), "nope"), Limits{})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %v, want ErrNotExist", err)
	}
}

func TestUnpackDirTruncatedContentNamesEntry(t *testing.T) {
	err := UnpackDir(bytes.NewReader(cat(dirMsg("d"), []byte{tagFile, 'f', 0, 9, 0, 0, 0, 'x'})), t.TempDir(), Limits{})
	var fe *FormatError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), `unpack "d/f"`) {
		t.Fatalf("got %v, want a FormatError naming d/f", err)
	}
}

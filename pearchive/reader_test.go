package pearchive

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// msg builders for hand-made archives.
func fileMsg(name, data string) []byte {
	b := append([]byte{tagFile}, name...)
	b = append(b, 0, byte(len(data)), byte(len(data)>>8), byte(len(data)>>16), byte(len(data)>>24))
	return append(b, data...)
}

func dirMsg(name string) []byte { return append(append([]byte{tagDir}, name...), 0) }

var popMsg = []byte{tagPop}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// nest returns n nested directories "d" holding a file "f".
func nest(n int) []byte {
	var b []byte
	for range n {
		b = append(b, dirMsg("d")...)
	}
	b = append(b, fileMsg("f", "x")...)
	for range n {
		b = append(b, popMsg...)
	}
	return b
}

func TestVector(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.File("file1", 5, strings.NewReader("data1")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(vector, buf.Bytes()); diff != "" {
		t.Errorf("Writer output (-want +got):\n%s", diff)
	}
	got, err := readStream(vector, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := []streamEntry{{Entry{Path: "file1", Size: 5}, "data1"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Reader (-want +got):\n%s", diff)
	}
}

func TestReaderValid(t *testing.T) {
	long := strings.Repeat("n", 255)
	tests := []struct {
		name string
		in   []byte
		lim  Limits
		want []streamEntry
	}{
		{"empty archive", nil, Limits{}, nil},
		{"empty file", fileMsg("e", ""), Limits{}, []streamEntry{{Entry{Path: "e"}, ""}}},
		{"empty dir", cat(dirMsg("d"), popMsg), Limits{}, []streamEntry{{Entry: Entry{Path: "d", Dir: true}}}},
		{"nested", cat(dirMsg("a"), dirMsg("b"), fileMsg("c", "xy"), popMsg, fileMsg("d", "z"), popMsg, fileMsg("e", "")), Limits{},
			[]streamEntry{
				{Entry: Entry{Path: "a", Dir: true}},
				{Entry: Entry{Path: "a/b", Dir: true}},
				{Entry{Path: "a/b/c", Size: 2}, "xy"},
				{Entry{Path: "a/d", Size: 1}, "z"},
				{Entry{Path: "e"}, ""},
			}},
		{"same name in different dirs", cat(fileMsg("a", "1"), dirMsg("d"), fileMsg("a", "2"), popMsg), Limits{},
			[]streamEntry{{Entry{Path: "a", Size: 1}, "1"}, {Entry: Entry{Path: "d", Dir: true}}, {Entry{Path: "d/a", Size: 1}, "2"}}},
		{"255-byte name", fileMsg(long, "x"), Limits{}, []streamEntry{{Entry{Path: long, Size: 1}, "x"}}},
		{"non-UTF-8 name", fileMsg("\xff\xfe\x80", "x"), Limits{}, []streamEntry{{Entry{Path: "\xff\xfe\x80", Size: 1}, "x"}}},
		{"dots inside names", fileMsg("...", "x"), Limits{}, []streamEntry{{Entry{Path: "...", Size: 1}, "x"}}},
		{"depth at limit", nest(3), Limits{MaxDepth: 3}, []streamEntry{
			{Entry: Entry{Path: "d", Dir: true}}, {Entry: Entry{Path: "d/d", Dir: true}}, {Entry: Entry{Path: "d/d/d", Dir: true}},
			{Entry{Path: "d/d/d/f", Size: 1}, "x"}}},
		{"default depth 32", nest(32), Limits{}, nil},
		{"files at limit", cat(fileMsg("a", ""), dirMsg("b"), popMsg), Limits{MaxFiles: 2},
			[]streamEntry{{Entry: Entry{Path: "a"}}, {Entry: Entry{Path: "b", Dir: true}}}},
		{"bytes at limit", cat(fileMsg("a", "12345"), fileMsg("b", "67890")), Limits{MaxBytes: 10},
			[]streamEntry{{Entry{Path: "a", Size: 5}, "12345"}, {Entry{Path: "b", Size: 5}, "67890"}}},
		{"negative limits mean none", nest(40), Limits{MaxDepth: -1, MaxFiles: -1, MaxBytes: -1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readStream(tt.in, tt.lim)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want != nil {
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("entries (-want +got):\n%s", diff)
				}
			}
			// The format is canonical: writing the entries again gives the same bytes.
			again, err := repack(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, tt.in) && !(len(again) == 0 && len(tt.in) == 0) {
				t.Errorf("repacked %x, want %x", again, tt.in)
			}
		})
	}
}

func TestReaderMalformed(t *testing.T) {
	tests := []struct {
		name    string
		in      []byte
		lim     Limits
		wantOff int64
		wantMsg string
	}{
		{"unknown tag", []byte{0x04}, Limits{}, 0, "unknown message tag 0x04"},
		{"unknown tag zero", cat(fileMsg("a", "x"), []byte{0x00}), Limits{}, 8, "unknown message tag 0x00"},
		{"tag only", []byte{tagFile}, Limits{}, 1, "truncated name"},
		{"unterminated name", []byte{tagDir, 'a', 'b'}, Limits{}, 3, "truncated name"},
		{"empty file name", fileMsg("", "x"), Limits{}, 0, "empty name"},
		{"empty dir name", cat(dirMsg(""), popMsg), Limits{}, 0, "empty name"},
		{"name of 256 bytes", fileMsg(strings.Repeat("n", 256), ""), Limits{}, 0, "longer than 255 bytes"},
		{"unterminated long name", cat([]byte{tagFile}, bytes.Repeat([]byte("n"), 300)), Limits{}, 0, "longer than 255 bytes"},
		{"slash in name", fileMsg("a/b", "x"), Limits{}, 0, `name "a/b" contains '/'`},
		{"slash only", cat(dirMsg("/"), popMsg), Limits{}, 0, `contains '/'`},
		{"dot", cat(dirMsg("."), popMsg), Limits{}, 0, `name "." is not allowed`},
		{"dotdot", cat(dirMsg("d"), fileMsg("..", "x"), popMsg), Limits{}, 3, `in directory "d": name ".." is not allowed`},
		{"truncated size", []byte{tagFile, 'a', 0, 1, 0}, Limits{}, 5, `truncated size of "a"`},
		{"truncated content", []byte{tagFile, 'a', 0, 5, 0, 0, 0, 'x'}, Limits{}, 8, `truncated content of "a" (4 bytes missing)`},
		{"huge size", []byte{tagFile, 'a', 0, 0xff, 0xff, 0xff, 0xff}, Limits{MaxBytes: -1}, 7, `truncated content of "a" (4294967295 bytes missing)`},
		{"unpopped dir", cat(dirMsg("d"), dirMsg("e"), fileMsg("f", "")), Limits{}, 13, `archive ends inside directory "d/e" (2 directories not popped)`},
		{"pop at top", popMsg, Limits{}, 0, "Pop at the top level"},
		{"extra pop", cat(dirMsg("d"), popMsg, popMsg), Limits{}, 4, "Pop at the top level"},
		{"too deep default", nest(33), Limits{}, 96, `"d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d/d": directories nested more than 32 deep`},
		{"too deep", nest(3), Limits{MaxDepth: 2}, 6, `"d/d/d": directories nested more than 2 deep`},
		{"too many files", cat(fileMsg("a", ""), fileMsg("b", ""), fileMsg("c", "")), Limits{MaxFiles: 2}, 14, `"c": more than 2 entries`},
		{"too many dirs", cat(dirMsg("a"), popMsg, dirMsg("b"), popMsg), Limits{MaxFiles: 1}, 4, `"b": more than 1 entries`},
		{"file too big", fileMsg("a", "12345678901"), Limits{MaxBytes: 10}, 0, `"a": file of 11 bytes takes the content over 10 bytes`},
		{"total too big", cat(fileMsg("a", "123456"), fileMsg("b", "123456")), Limits{MaxBytes: 10}, 13, `"b": file of 6 bytes takes the content over 10 bytes`},
		{"default byte limit", []byte{tagFile, 'a', 0, 1, 0, 0, 0x04, 1}, Limits{}, 0, `"a": file of 67108865 bytes takes the content over 67108864 bytes`},
		{"duplicate file", cat(fileMsg("a", "1"), fileMsg("a", "2")), Limits{}, 8, `duplicate name "a"`},
		{"file then dir", cat(fileMsg("a", "1"), dirMsg("a"), popMsg), Limits{}, 8, `duplicate name "a"`},
		{"dir twice", cat(dirMsg("d"), popMsg, dirMsg("d"), popMsg), Limits{}, 4, `duplicate name "d"`},
		{"duplicate in subdir", cat(dirMsg("d"), fileMsg("a", ""), fileMsg("a", ""), popMsg), Limits{}, 10, `duplicate name "d/a"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := &FormatError{Offset: tt.wantOff}
			check := func(how string, err error) {
				t.Helper()
				var fe *FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("%s: error %v (%T), want a *FormatError", how, err, err)
				}
				if fe.Offset != want.Offset || !strings.Contains(fe.Msg, tt.wantMsg) {
					t.Errorf("%s: error %q at offset %d, want %q at offset %d", how, fe.Msg, fe.Offset, tt.wantMsg, want.Offset)
				}
			}
			_, err := readStream(tt.in, tt.lim)
			check("Reader", err)
			_, err = ReadAll(tt.in, tt.lim)
			check("ReadAll", err)
			err = UnpackDir(bytes.NewReader(tt.in), t.TempDir(), tt.lim)
			check("UnpackDir", err)
		})
	}
}

func TestReaderSkipsUnreadContent(t *testing.T) {
	in := cat(fileMsg("a", "hello"), fileMsg("b", "world"))
	r := NewReader(bytes.NewReader(in), Limits{})
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	e, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(r)
	if err != nil || e.Path != "b" || string(rest) != "world" {
		t.Fatalf("got %+v %q %v, want b world", e, rest, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next at end: %v, want io.EOF", err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next after end: %v, want io.EOF again", err)
	}
}

// errReader fails every read.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestReaderIOError(t *testing.T) {
	_, err := NewReader(errReader{}, Limits{}).Next()
	var fe *FormatError
	if err == nil || errors.As(err, &fe) || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("Next: %v, want the underlying error, not a FormatError", err)
	}
}

func TestDefaultLimits(t *testing.T) {
	want := Limits{MaxDepth: 32, MaxFiles: 10000, MaxBytes: 64 << 20}
	if diff := cmp.Diff(want, DefaultLimits()); diff != "" {
		t.Errorf("DefaultLimits (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, Limits{}.resolve()); diff != "" {
		t.Errorf("zero Limits resolve to (-want +got):\n%s", diff)
	}
}

func TestFormatErrorString(t *testing.T) {
	err := &FormatError{Offset: 7, Msg: "unknown message tag 0x09"}
	if got, want := err.Error(), "pearchive: malformed archive at offset 7: unknown message tag 0x09"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

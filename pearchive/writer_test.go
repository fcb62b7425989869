package pearchive

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestWriterErrors(t *testing.T) {
	tests := []struct {
		name    string
		run     func(w *Writer) error
		wantErr string
	}{
		{"empty name", func(w *Writer) error { return w.File("", 0, nil) }, `file "": empty name`},
		{"long name", func(w *Writer) error { return w.Dir(strings.Repeat("x", 256)) }, "longer than 255 bytes"},
		{"slash", func(w *Writer) error { return w.File("a/b", 0, nil) }, `contains '/'`},
		{"NUL", func(w *Writer) error { return w.File("a\x00b", 0, nil) }, `contains NUL`},
		{"dot", func(w *Writer) error { return w.Dir(".") }, `name "." is not allowed`},
		{"dotdot", func(w *Writer) error { return w.Dir("..") }, `name ".." is not allowed`},
		{"duplicate", func(w *Writer) error {
			w.Dir("d")
			w.File("a", 0, nil)
			return w.Dir("a")
		}, `directory "d/a": duplicate name`},
		{"negative size", func(w *Writer) error { return w.File("a", -1, nil) }, "size -1 out of range"},
		{"size too big", func(w *Writer) error { return w.File("a", 1<<32, nil) }, "size 4294967296 out of range"},
		{"short content", func(w *Writer) error { return w.File("a", 10, strings.NewReader("abc")) }, `file "a": content has 3 bytes, want 10: unexpected EOF`},
		{"nil reader", func(w *Writer) error { return w.File("a", 1, nil) }, "nil reader"},
		{"reader error", func(w *Writer) error { return w.File("a", 1, iotest.ErrReader(errors.New("boom"))) }, `file "a": boom`},
		{"pop at top", func(w *Writer) error { return w.Pop() }, "Pop at the top level"},
		{"unbalanced close", func(w *Writer) error {
			w.Dir("a")
			w.Dir("b")
			return w.Close()
		}, `Close with 2 directories still open (innermost "a/b")`},
		{"after close", func(w *Writer) error {
			w.Close()
			return w.File("a", 0, nil)
		}, "closed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run(NewWriter(io.Discard))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestWriterStickyError(t *testing.T) {
	w := NewWriter(io.Discard)
	first := w.File("a", 5, strings.NewReader("ab"))
	if first == nil {
		t.Fatal("short content: no error")
	}
	for _, err := range []error{w.File("b", 0, nil), w.Dir("c"), w.Pop(), w.Close()} {
		if err != first {
			t.Errorf("later call: %v, want the first error %v", err, first)
		}
	}
}

func TestWriterInvalidNameWritesNothing(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.File("a/b", 1, strings.NewReader("x")); err == nil {
		t.Fatal("no error")
	}
	if err := w.File("ok", 1, strings.NewReader("x")); err != nil {
		t.Fatalf("valid file after a refused name: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if want := fileMsg("ok", "x"); !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("wrote %x, want %x", buf.Bytes(), want)
	}
}

// failWriter fails every write.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("no space") }

func TestWriterUnderlyingError(t *testing.T) {
	w := NewWriter(failWriter{})
	if err := w.File("a", 3, strings.NewReader("abc")); err != nil {
		t.Fatalf("buffered File: %v", err)
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "no space") {
		t.Fatalf("Close: %v, want the write error", err)
	}
}

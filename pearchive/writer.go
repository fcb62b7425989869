package pearchive

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Writer writes a v1 archive message by message. Writes are buffered; call
// [Writer.Close] to flush them. A Writer refuses invalid names, duplicate
// names within a directory and unbalanced Pops, so everything it writes can
// be read back by a [Reader] (within its [Limits]). After a write or copy
// fails, every later call returns the same error.
type Writer struct {
	bw     *bufio.Writer
	path   string                // current directory, "" at the top
	names  []map[string]struct{} // names used in each open directory, the top level first
	err    error                 // sticky error
	closed bool
}

// NewWriter returns a Writer writing an archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{bw: bufio.NewWriterSize(w, 64<<10), names: []map[string]struct{}{nil}}
}

var errClosed = errors.New("pearchive: write to closed Writer")

// claim validates name and records it in the current directory.
func (w *Writer) claim(kind, name string) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errClosed
	}
	if msg := checkName(name); msg != "" {
		return fmt.Errorf("pearchive: %s %q: %s", kind, joinPath(w.path, name), msg)
	}
	top := &w.names[len(w.names)-1]
	if _, dup := (*top)[name]; dup {
		return fmt.Errorf("pearchive: %s %q: duplicate name in its directory", kind, joinPath(w.path, name))
	}
	if *top == nil {
		*top = map[string]struct{}{}
	}
	(*top)[name] = struct{}{}
	return nil
}

// header writes a tag and a NUL-terminated name.
func (w *Writer) header(tag byte, name string) {
	w.bw.WriteByte(tag)
	w.bw.WriteString(name)
	w.bw.WriteByte(0)
}

// File writes a file named name in the current directory whose content is
// exactly size bytes copied from r (r may be nil when size is 0). Size must be
// at most 1<<32 − 1. It is an error for r to hold fewer than size bytes; the
// archive is then unusable.
func (w *Writer) File(name string, size int64, r io.Reader) error {
	if size < 0 || size > maxFileSize {
		if w.err != nil {
			return w.err
		}
		return fmt.Errorf("pearchive: file %q: size %d out of range [0, %d]", joinPath(w.path, name), size, int64(maxFileSize))
	}
	if err := w.claim("file", name); err != nil {
		return err
	}
	w.header(tagFile, name)
	var sz [4]byte
	binary.LittleEndian.PutUint32(sz[:], uint32(size))
	if _, err := w.bw.Write(sz[:]); err != nil {
		w.err = fmt.Errorf("pearchive: file %q: %w", joinPath(w.path, name), err)
		return w.err
	}
	if size == 0 {
		return nil
	}
	if r == nil {
		w.err = fmt.Errorf("pearchive: file %q: nil reader for %d bytes", joinPath(w.path, name), size)
		return w.err
	}
	n, err := io.CopyN(w.bw, r, size)
	if err == io.EOF {
		err = fmt.Errorf("content has %d bytes, want %d: %w", n, size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		w.err = fmt.Errorf("pearchive: file %q: %w", joinPath(w.path, name), err)
	}
	return w.err
}

// Dir starts a directory named name in the current directory; later entries
// go inside it until the matching [Writer.Pop].
func (w *Writer) Dir(name string) error {
	if err := w.claim("directory", name); err != nil {
		return err
	}
	w.header(tagDir, name)
	w.path = joinPath(w.path, name)
	w.names = append(w.names, nil)
	return nil
}

// Pop ends the current directory. It is an error at the top level.
func (w *Writer) Pop() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errClosed
	}
	if len(w.names) == 1 {
		return errors.New("pearchive: Pop at the top level")
	}
	w.bw.WriteByte(tagPop)
	w.names = w.names[:len(w.names)-1]
	w.path = parentPath(w.path)
	return nil
}

// Close flushes the buffered data to the underlying writer, which it does not
// close. It pops nothing: it reports an error when directories are still
// open, since the archive would then be malformed.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	w.closed = true
	if err := w.bw.Flush(); err != nil {
		w.err = fmt.Errorf("pearchive: %w", err)
		return w.err
	}
	if open := len(w.names) - 1; open > 0 {
		return fmt.Errorf("pearchive: Close with %d directories still open (innermost %q)", open, w.path)
	}
	return nil
}

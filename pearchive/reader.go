package pearchive

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// Entry describes one file or directory of an archive.
type Entry struct {
	// Path is the slash-separated path from the top of the archive, such as
	// "dir/a.txt". Its components are raw bytes and need not be UTF-8.
	Path string
	// Dir reports whether the entry is a directory.
	Dir bool
	// Size is the file's content size in bytes; 0 for a directory.
	Size int64
}

// byteReader is what the Reader reads from.
type byteReader interface {
	io.Reader
	io.ByteReader
}

// Reader reads a v1 archive entry by entry, in the manner of archive/tar:
// [Reader.Next] moves to the next entry and [Reader.Read] reads the current
// file's content. Malformed data gives a [*FormatError]; errors of the
// underlying reader are returned wrapped. Errors are sticky.
type Reader struct {
	br        byteReader
	lim       Limits
	off       int64 // bytes consumed
	dirs      []dirState
	cur       string // path of the current entry, for messages
	remaining int64  // unread content of the current file
	entries   int
	bytes     int64
	err       error
}

// dirState is one open directory.
type dirState struct {
	path  string
	names map[string]struct{}
}

// NewReader returns a Reader reading an archive from r within lim. It
// buffers r unless r is already an [io.ByteReader] (such as a
// [bytes.Reader] or a [bufio.Reader]), so it may read past the archive's end.
func NewReader(r io.Reader, lim Limits) *Reader {
	br, ok := r.(byteReader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &Reader{br: br, lim: lim.resolve(), dirs: []dirState{{}}}
}

// fail records and returns a FormatError.
func (r *Reader) fail(off int64, format string, args ...any) error {
	r.err = &FormatError{Offset: off, Msg: fmt.Sprintf(format, args...)}
	return r.err
}

// ioFail records and returns an error of the underlying reader, or a
// FormatError for running out of data.
func (r *Reader) ioFail(err error, what string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return r.fail(r.off, "truncated %s", what)
	}
	r.err = fmt.Errorf("pearchive: reading %s: %w", what, err)
	return r.err
}

// Next advances to the next entry and returns it. It skips what is left of
// the current file's content. At the clean end of the archive it returns
// io.EOF.
func (r *Reader) Next() (*Entry, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.remaining > 0 {
		n, err := io.CopyN(io.Discard, r.br, r.remaining)
		r.off += n
		r.remaining -= n
		if err != nil {
			return nil, r.ioFail(err, fmt.Sprintf("content of %q (%d bytes missing)", r.cur, r.remaining))
		}
	}
	for {
		start := r.off
		tag, err := r.br.ReadByte()
		if err == io.EOF {
			if open := len(r.dirs) - 1; open > 0 {
				return nil, r.fail(start, "archive ends inside directory %q (%d directories not popped)", r.dirs[open].path, open)
			}
			r.err = io.EOF
			return nil, io.EOF
		}
		if err != nil {
			return nil, r.ioFail(err, "message tag")
		}
		r.off++
		switch tag {
		case tagPop:
			if len(r.dirs) == 1 {
				return nil, r.fail(start, "Pop at the top level")
			}
			r.dirs = r.dirs[:len(r.dirs)-1]
			continue
		case tagFile, tagDir:
		default:
			return nil, r.fail(start, "unknown message tag 0x%02x", tag)
		}
		name, err := r.readName(start)
		if err != nil {
			return nil, err
		}
		dir := &r.dirs[len(r.dirs)-1]
		p := joinPath(dir.path, name)
		r.cur = p
		if _, dup := dir.names[name]; dup {
			return nil, r.fail(start, "duplicate name %q", p)
		}
		if r.entries >= r.lim.MaxFiles {
			return nil, r.fail(start, "%q: more than %d entries", p, r.lim.MaxFiles)
		}
		e := &Entry{Path: p, Dir: tag == tagDir}
		if tag == tagFile {
			var sz [4]byte
			n, err := io.ReadFull(r.br, sz[:])
			r.off += int64(n)
			if err != nil {
				return nil, r.ioFail(err, fmt.Sprintf("size of %q", p))
			}
			e.Size = int64(binary.LittleEndian.Uint32(sz[:]))
			if e.Size > r.lim.MaxBytes-r.bytes {
				return nil, r.fail(start, "%q: file of %d bytes takes the content over %d bytes", p, e.Size, r.lim.MaxBytes)
			}
			r.bytes += e.Size
			r.remaining = e.Size
		} else if len(r.dirs) > r.lim.MaxDepth {
			return nil, r.fail(start, "%q: directories nested more than %d deep", p, r.lim.MaxDepth)
		}
		r.entries++
		if dir.names == nil {
			dir.names = map[string]struct{}{}
		}
		dir.names[name] = struct{}{}
		if e.Dir {
			r.dirs = append(r.dirs, dirState{path: p})
		}
		return e, nil
	}
}

// readName reads a NUL-terminated name and validates it.
func (r *Reader) readName(start int64) (string, error) {
	var buf [maxNameLen]byte
	n := 0
	for {
		c, err := r.br.ReadByte()
		if err != nil {
			return "", r.ioFail(err, "name")
		}
		r.off++
		if c == 0 {
			break
		}
		if n == maxNameLen {
			return "", r.fail(start, "in directory %q: name %q... is longer than %d bytes", r.dirs[len(r.dirs)-1].path, buf[:32], maxNameLen)
		}
		buf[n] = c
		n++
	}
	name := string(buf[:n])
	if msg := checkName(name); msg != "" {
		return "", r.fail(start, "in directory %q: %s", r.dirs[len(r.dirs)-1].path, msg)
	}
	return name, nil
}

// Read reads the content of the current file. It returns io.EOF at the end
// of the content, and at once for a directory or before the first
// [Reader.Next]. Data missing from the archive gives a [*FormatError].
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.br.Read(p)
	r.off += int64(n)
	r.remaining -= int64(n)
	switch {
	case err == io.EOF && r.remaining > 0:
		return n, r.ioFail(err, fmt.Sprintf("content of %q (%d bytes missing)", r.cur, r.remaining))
	case err == io.EOF:
		err = nil
	case err != nil:
		return n, r.ioFail(err, fmt.Sprintf("content of %q", r.cur))
	}
	if r.remaining == 0 && n == 0 {
		err = io.EOF
	}
	return n, err
}

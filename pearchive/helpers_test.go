package pearchive

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// vector is the original's pack_to_vec test vector: one file "file1"
// holding "data1".
var vector = []byte{0x01, 0x66, 0x69, 0x6c, 0x65, 0x31, 0x00, 0x05, 0x00, 0x00, 0x00, 0x64, 0x61, 0x74, 0x61, 0x31}

// tree returns a directory's contents keyed by slash-separated path: a
// directory as "<dir>", a symbolic link as "-> target", a file as its
// content.
func tree(t testing.TB, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			m[rel] = "-> " + target
			return err
		case d.IsDir():
			m[rel] = "<dir>"
		default:
			b, err := os.ReadFile(p)
			m[rel] = string(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// makeTree creates the entries of a tree() map under dir.
func makeTree(t testing.TB, dir string, m map[string]string) {
	t.Helper()
	for p, v := range m {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case v == "<dir>":
			err = os.MkdirAll(full, 0o755)
		case len(v) > 3 && v[:3] == "-> ":
			err = os.Symlink(v[3:], full)
		default:
			err = os.WriteFile(full, []byte(v), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// memTree converts ReadAll output to a tree() map.
func memTree(files []MemFile) map[string]string {
	m := map[string]string{}
	for _, f := range files {
		if p, ok := bytes.CutSuffix([]byte(f.Path), []byte("/")); ok {
			m[string(p)] = "<dir>"
		} else {
			m[f.Path] = string(f.Data)
		}
	}
	return m
}

// noByteReader hides any io.ByteReader of the reader it wraps, so that the
// Reader buffers it itself.
type noByteReader struct{ r io.Reader }

func (n noByteReader) Read(p []byte) (int, error) { return n.r.Read(p) }

// streamEntry is an entry with its content, as read by readStream.
type streamEntry struct {
	Entry
	Data string
}

// readStream reads a whole archive through Reader.Next and Reader.Read.
func readStream(b []byte, lim Limits) ([]streamEntry, error) {
	r := NewReader(noByteReader{bytes.NewReader(b)}, lim)
	var out []streamEntry
	for {
		e, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		data, err := io.ReadAll(r)
		if err != nil {
			return out, err
		}
		if int64(len(data)) != e.Size {
			return out, errors.New("content size differs from entry size")
		}
		out = append(out, streamEntry{*e, string(data)})
	}
}

// repack writes entries with a Writer, reconstructing Dir/Pop messages from
// the paths.
func repack(entries []streamEntry) ([]byte, error) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	var stack []string // open directory paths
	for _, e := range entries {
		parent := parentPath(e.Path)
		for len(stack) > 0 && stack[len(stack)-1] != parent {
			if err := w.Pop(); err != nil {
				return nil, err
			}
			stack = stack[:len(stack)-1]
		}
		name := e.Path[len(parent):]
		if parent != "" {
			name = name[1:]
		}
		if e.Dir {
			if err := w.Dir(name); err != nil {
				return nil, err
			}
			stack = append(stack, e.Path)
			continue
		}
		if err := w.File(name, int64(len(e.Data)), bytes.NewReader([]byte(e.Data))); err != nil {
			return nil, err
		}
	}
	for range stack {
		if err := w.Pop(); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// withParents returns a copy of a tree() map with the implicit parent
// directories of its entries added.
func withParents(m map[string]string) map[string]string {
	out := map[string]string{}
	for p, v := range m {
		out[p] = v
		for q := parentPath(p); q != ""; q = parentPath(q) {
			out[q] = "<dir>"
		}
	}
	return out
}

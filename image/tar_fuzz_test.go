package image

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"testing"

	"github.com/pe-project/pe/erofs"
)

// FuzzAddTar feeds arbitrary bytes to AddTar as a tar stream. Errors are
// fine; panics and hangs are not, and whenever AddTar accepts the input the
// image must open and walk cleanly with pe's reader. The seed corpus is in
// testdata/fuzz/FuzzAddTar.
func FuzzAddTar(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		out := new(memFile)
		w, err := erofs.NewWriter(out, erofs.WriterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := AddTar(t.Context(), w, bytes.NewReader(data), Limits{MaxUnpacked: 16 << 20, MaxEntries: 10000, MaxDepth: 64}); err != nil {
			w.Discard()
			return
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Close after a successful AddTar: %v", err)
		}
		fsys, err := erofs.Open(bytes.NewReader(out.b))
		if err != nil {
			t.Fatalf("opening the image: %v", err)
		}
		err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			fi, err := fsys.Lstat(p)
			if err != nil {
				return err
			}
			switch {
			case fi.Mode().IsRegular():
				f, err := fsys.Open(p)
				if err != nil {
					return err
				}
				n, err := io.Copy(io.Discard, f)
				f.Close()
				if err != nil {
					return err
				}
				if n != fi.Size() {
					t.Errorf("%s: read %d bytes, size %d", p, n, fi.Size())
				}
			case fi.Mode()&fs.ModeSymlink != 0:
				if _, err := fsys.ReadLink(p); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("walking the image: %v", err)
		}
	})
}

// memFile is an in-memory io.WriteSeeker, to keep the fuzz loop off the disk.
type memFile struct {
	b   []byte
	off int64
}

func (m *memFile) Write(p []byte) (int, error) {
	if end := m.off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	n := copy(m.b[m.off:], p)
	m.off += int64(n)
	return n, nil
}

func (m *memFile) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += m.off
	case io.SeekEnd:
		offset += int64(len(m.b))
	}
	if offset < 0 {
		return 0, errors.New("negative offset")
	}
	m.off = offset
	return offset, nil
}

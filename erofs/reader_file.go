package erofs

import (
	"errors"
	"io"
	"io/fs"
	"sync"
)

// fsFile is an open non-directory file.
type fsFile struct {
	f    *FS
	in   *fsInode
	name string
	info *fsFileInfo
	m    dataMapper
	size int64

	mu     sync.Mutex
	off    int64
	closed bool
}

var (
	_ fs.File        = (*fsFile)(nil)
	_ io.ReaderAt    = (*fsFile)(nil)
	_ io.Seeker      = (*fsFile)(nil)
	_ fs.ReadDirFile = (*fsDir)(nil)
)

// Stat describes the file, as it was when opened.
func (fl *fsFile) Stat() (fs.FileInfo, error) {
	if fl.isClosed() {
		return nil, &fs.PathError{Op: "stat", Path: fl.name, Err: fs.ErrClosed}
	}
	return fl.info, nil
}

func (fl *fsFile) isClosed() bool {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.closed
}

// Read reads from the current offset.
func (fl *fsFile) Read(p []byte) (int, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.closed {
		return 0, &fs.PathError{Op: "read", Path: fl.name, Err: fs.ErrClosed}
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := fl.f.readData(fl.in, fl.m, fl.size, p, fl.off)
	fl.off += int64(n)
	if err == io.EOF {
		if n > 0 {
			return n, nil
		}
		return 0, io.EOF
	}
	if err != nil {
		return n, &fs.PathError{Op: "read", Path: fl.name, Err: err}
	}
	return n, nil
}

// ReadAt reads len(p) bytes at off, as io.ReaderAt specifies; it may be
// called concurrently with itself and Read.
func (fl *fsFile) ReadAt(p []byte, off int64) (int, error) {
	if fl.isClosed() {
		return 0, &fs.PathError{Op: "read", Path: fl.name, Err: fs.ErrClosed}
	}
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: fl.name, Err: errors.New("negative offset")}
	}
	n, err := fl.f.readData(fl.in, fl.m, fl.size, p, off)
	if err != nil && err != io.EOF {
		err = &fs.PathError{Op: "read", Path: fl.name, Err: err}
	}
	return n, err
}

// Seek sets the offset of the next Read; offsets past the end are allowed
// and read as end of file.
func (fl *fsFile) Seek(offset int64, whence int) (int64, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.closed {
		return 0, &fs.PathError{Op: "seek", Path: fl.name, Err: fs.ErrClosed}
	}
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += fl.off
	case io.SeekEnd:
		offset += fl.size
	default:
		return 0, &fs.PathError{Op: "seek", Path: fl.name, Err: fs.ErrInvalid}
	}
	if offset < 0 {
		return 0, &fs.PathError{Op: "seek", Path: fl.name, Err: fs.ErrInvalid}
	}
	fl.off = offset
	return offset, nil
}

// Close marks the file closed; it holds no resources.
func (fl *fsFile) Close() error {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.closed {
		return &fs.PathError{Op: "close", Path: fl.name, Err: fs.ErrClosed}
	}
	fl.closed = true
	return nil
}

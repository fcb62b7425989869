// Package atomicfile writes files so that readers see the whole new
// content or the old one, never a part: through a temporary file in the
// same directory, renamed over the file once complete. It is the one home
// of that pattern (the image cache's blobs and records, built EROFS
// images, initramfs files, the gist cache, the vmm's caches), so that its
// details (the mode, the fsync before the rename, cleaning up after a
// failure) are written once.
package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Options say how a file is written.
type Options struct {
	// Pattern names the temporary file, as os.CreateTemp's pattern ("*"
	// is replaced by a random string). Callers that clean up after a
	// crashed writer match their own pattern. "" is ".tmp-*".
	Pattern string
	// Perm is the file's mode. 0 keeps the temporary file's, 0600.
	Perm fs.FileMode
	// Sync flushes the file to the disk before the rename, so that after
	// a crash the path holds the old content or the whole new one. Without
	// it, a crash may leave the new name on an empty or partial file: fine
	// for a cache whose reader checks what it reads or recomputes it.
	Sync bool
	// SyncDir flushes the directory after the rename, so that the rename
	// itself survives a crash.
	SyncDir bool
}

// File is a file being written in place of a path. Write to it (it is an
// *os.File), then Commit to put it in place or Abort to drop it. Abort
// after Commit does nothing, so a deferred Abort cleans up every early
// return.
type File struct {
	*os.File
	path string
	o    Options
	done bool
}

// Create starts writing path: it creates the temporary file in path's
// directory, which must exist.
func Create(path string, o Options) (*File, error) {
	if o.Pattern == "" {
		o.Pattern = ".tmp-*"
	}
	f, err := os.CreateTemp(filepath.Dir(path), o.Pattern)
	if err != nil {
		return nil, err
	}
	return &File{File: f, path: path, o: o}, nil
}

// Commit sets the mode, syncs (Options.Sync), closes the temporary file
// and renames it over the path. On an error the temporary file is removed
// and the path is left as it was.
func (f *File) Commit() error {
	if f.done {
		return fmt.Errorf("atomicfile: %s: committed or aborted already", f.path)
	}
	f.done = true
	err := f.commit()
	if err != nil {
		f.File.Close()
		os.Remove(f.Name())
	}
	return err
}

func (f *File) commit() error {
	if f.o.Perm != 0 {
		if err := f.Chmod(f.o.Perm); err != nil {
			return err
		}
	}
	if f.o.Sync {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if err := f.File.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), f.path); err != nil {
		return err
	}
	if f.o.SyncDir {
		SyncDir(filepath.Dir(f.path))
	}
	return nil
}

// Abort closes and removes the temporary file, unless Commit or Abort
// came first.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.Name())
}

// Write writes data to path atomically.
func Write(path string, data []byte, o Options) error {
	f, err := Create(path, o)
	if err != nil {
		return err
	}
	if _, err := f.File.Write(data); err != nil {
		f.Abort()
		return err
	}
	return f.Commit()
}

// SyncDir flushes a directory's entries to the disk, so that a rename or
// a new file in it survives a crash. Errors are ignored: some file
// systems cannot sync a directory, and the data is written either way.
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"time"

	"github.com/pe-project/pe/erofs"
)

// carriedFiles are the files of an image that pe image push copies into
// its index (blockstore.Index.Files): the user database a run consults
// (engine.MergeConfig) before its VM starts. A run of a lazy image reads
// them from the index it already holds instead of waiting for the image's
// chunks, which would cost round trips to the bucket on the run's
// critical path.
var carriedFiles = []string{"etc/passwd", "etc/group"}

// maxCarriedFile bounds each carried file: a larger one is left out of
// the index, and runs read it from the image.
const maxCarriedFile = 64 << 10

// indexFiles returns the JSON the index of the EROFS image at p carries
// in Files: an object mapping each of carriedFiles to its bytes (base64),
// or to null when the image has no such file. A file that is not a
// regular file, is larger than maxCarriedFile or cannot be read is left
// out, as are all of them when the image cannot be opened: a reader then
// reads the image.
func indexFiles(p string) (json.RawMessage, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	root, err := erofs.Open(f)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", p, err)
	}
	files := map[string][]byte{}
	for _, name := range carriedFiles {
		b, err := readCarried(root, name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			files[name] = nil
		case err == nil:
			files[name] = b
		}
	}
	return json.Marshal(files)
}

// readCarried reads the regular file name of root, at most maxCarriedFile
// bytes of it.
func readCarried(root fs.FS, name string) ([]byte, error) {
	f, err := root.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxCarriedFile {
		return nil, fmt.Errorf("/%s: not a regular file of at most %d bytes", name, maxCarriedFile)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxCarriedFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxCarriedFile {
		return nil, fmt.Errorf("/%s: more than %d bytes", name, maxCarriedFile)
	}
	if b == nil {
		// An empty file, not an absent one (nil encodes as null).
		b = []byte{}
	}
	return b, nil
}

// carriedFS is an image's carried files as a file system holding them
// only: a name mapped to nil is a file the image does not have.
type carriedFS map[string][]byte

// decodeCarried returns the carried files of an index's Files, nil when
// it lacks any of carriedFiles (an index written before them, or a file
// left out) or cannot be decoded: the caller then reads the image.
func decodeCarried(raw json.RawMessage) fs.FS {
	if len(raw) == 0 {
		return nil
	}
	var m map[string][]byte
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil
	}
	for _, name := range carriedFiles {
		if b, ok := m[name]; !ok || len(b) > maxCarriedFile {
			return nil
		}
	}
	return carriedFS(m)
}

// Open implements fs.FS.
func (c carriedFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	b, ok := c[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("not among the files the image's index carries")}
	}
	if b == nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &carriedFile{name: path.Base(name), Reader: bytes.NewReader(b), size: int64(len(b))}, nil
}

// carriedFile is an open carried file.
type carriedFile struct {
	*bytes.Reader
	name string
	size int64
}

func (f *carriedFile) Stat() (fs.FileInfo, error) { return carriedInfo{f.name, f.size}, nil }
func (f *carriedFile) Close() error               { return nil }

// carriedInfo describes a carried file: a regular file, read-only.
type carriedInfo struct {
	name string
	size int64
}

func (i carriedInfo) Name() string       { return i.name }
func (i carriedInfo) Size() int64        { return i.size }
func (i carriedInfo) Mode() fs.FileMode  { return 0o444 }
func (i carriedInfo) ModTime() time.Time { return time.Time{} }
func (i carriedInfo) IsDir() bool        { return false }
func (i carriedInfo) Sys() any           { return nil }

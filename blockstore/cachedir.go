package blockstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ChunkPath returns where a Store whose Options.Dir is dir keeps the chunk
// with this sha256 (64 lowercase hex digits): dir/chunks/<digest>.
// Tools that inspect or trim the cache without opening a Store (which
// would evict to its own bound) use it.
func ChunkPath(dir, digest string) string {
	return filepath.Join(dir, "chunks", digest)
}

// CachedBytes returns how many of the bytes of the image ix describes the
// chunk cache in dir holds: the total length of its chunks whose file is
// there with the chunk's length (a file of another length is refetched
// before use, so it does not count). A chunk the image holds at several
// offsets counts at each. ix must be valid.
func CachedBytes(dir string, ix *Index) int64 {
	have := map[string]int64{} // a chunk file's size, -1 when absent
	var n int64
	for i, d := range ix.Chunks {
		size, ok := have[d]
		if !ok {
			size = -1
			if fi, err := os.Stat(ChunkPath(dir, d)); err == nil && fi.Mode().IsRegular() {
				size = fi.Size()
			}
			have[d] = size
		}
		if _, length := ix.ChunkRange(i); size == length {
			n += length
		}
	}
	return n
}

// RemoveChunks removes from the chunk cache in dir the files of the chunks
// ix lists that none of keep lists, so that chunks shared with images kept
// stay. It returns how many files it removed and their bytes. A process
// reading ix's image at the same time fetches what it needs again.
func RemoveChunks(dir string, ix *Index, keep []*Index) (files int, bytes int64, err error) {
	kept := map[string]bool{}
	for _, k := range keep {
		for _, d := range k.Chunks {
			kept[d] = true
		}
	}
	done := map[string]bool{}
	for _, d := range ix.Chunks {
		if kept[d] || done[d] {
			continue
		}
		done[d] = true
		p := ChunkPath(dir, d)
		fi, err := os.Lstat(p)
		if err != nil {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return files, bytes, fmt.Errorf("blockstore: removing cached chunk: %w", err)
		}
		files++
		bytes += fi.Size()
	}
	return files, bytes, nil
}

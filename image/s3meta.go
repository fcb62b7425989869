package image

import (
	"fmt"
	"os"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/erofs"
)

// metadataChunks returns the chunks of ix (the index of the EROFS image at
// path) that hold the image's metadata, as erofs.MetadataRanges finds it
// by walking the image: what every run prefetches first.
func metadataChunks(path string, ix *blockstore.Index) ([]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rs, err := erofs.MetadataRanges(f, ix.Size)
	if err != nil {
		return nil, fmt.Errorf("walking the metadata of %s: %w", path, err)
	}
	return chunksOfRanges(rs, ix), nil
}

// chunksOfRanges lists, in increasing order, the chunks of ix that hold
// any byte of the sorted ranges rs.
func chunksOfRanges(rs []erofs.ByteRange, ix *blockstore.Index) []int {
	var out []int
	for _, r := range rs {
		if r.Len <= 0 || r.Off >= ix.Size {
			continue
		}
		first := int(r.Off / ix.ChunkSize)
		last := int((min(r.Off+r.Len, ix.Size) - 1) / ix.ChunkSize)
		for i := first; i <= last; i++ {
			if n := len(out); n == 0 || out[n-1] < i {
				out = append(out, i)
			}
		}
	}
	return out
}

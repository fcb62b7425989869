package blockstore_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/pe-project/pe/blockstore"
)

// An image read through the store: the index is built from the image
// (pe image push does this and stores it beside the image), and the
// fetcher reads the image's object (blockstore/s3 for a bucket; here the
// file itself).
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "blockstore-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "image.erofs")
	if err := os.WriteFile(path, bytes.Repeat([]byte("pe"), 300_000), 0o644); err != nil {
		log.Fatal(err)
	}

	ix, err := blockstore.BuildIndexFile(ctx, path, 0)
	if err != nil {
		log.Fatal(err)
	}
	store, err := blockstore.NewStore(blockstore.Options{Dir: filepath.Join(dir, "cache"), MaxBytes: 1 << 30})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	f, err := os.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	im, err := store.Open(ix, blockstore.FileFetcher{R: f})
	if err != nil {
		log.Fatal(err)
	}
	defer im.Close()

	p := make([]byte, 6)
	if _, err := im.ReadAtContext(ctx, p, 524_286); err != nil { // across chunks 0 and 1
		log.Fatal(err)
	}
	st := im.Stats()
	fmt.Printf("%q from %d chunks of %d bytes: %d GETs, %d bytes fetched\n", p, len(ix.Chunks), ix.ChunkSize, st.Gets, st.BytesFetched)
	// Output: "pepepe" from 2 chunks of 524288 bytes: 2 GETs, 600000 bytes fetched
}

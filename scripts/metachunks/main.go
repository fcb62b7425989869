// Command metachunks reports where an EROFS image's metadata lies, in the
// chunks of a lazy (s3://) image: how many chunks a run prefetches before
// the mount and the first lookups. With -build DIR it first builds DIR with
// pe's writer twice, metadata first (the default for a file) and with
// WriterOptions.MetadataAtEnd (the layout before issue 16), timing each
// build; the metadata benchmark (scripts/bench-metadata.sh) uses it.
//
//	go run ./scripts/metachunks [-chunk 524288] [-build DIR -o OUTDIR] [IMAGE...]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/image"
)

func main() {
	chunk := flag.Int64("chunk", blockstore.DefaultChunkSize, "chunk size in bytes")
	build := flag.String("build", "", "a directory to build into two images first")
	out := flag.String("o", "", "where -build writes its images")
	rounds := flag.Int("rounds", 1, "builds of each layout; the median time is reported")
	flag.Parse()
	imgs := flag.Args()
	if *build != "" {
		built, err := buildBoth(*build, *out, *rounds)
		if err != nil {
			fmt.Fprintln(os.Stderr, "metachunks:", err)
			os.Exit(1)
		}
		imgs = append(built, imgs...)
	}
	fmt.Printf("| image | bytes | metadata bytes | metadata ranges | chunks of %d KiB | metadata chunks | runs of chunks |\n|---|---|---|---|---|---|---|\n", *chunk>>10)
	for _, p := range imgs {
		if err := report(p, *chunk); err != nil {
			fmt.Fprintln(os.Stderr, "metachunks:", err)
			os.Exit(1)
		}
	}
}

func buildBoth(dir, out string, rounds int) ([]string, error) {
	var paths []string
	for _, atEnd := range []bool{false, true} {
		name := "metadata-first.erofs"
		if atEnd {
			name = "metadata-at-end.erofs"
		}
		path := filepath.Join(out, name)
		var times []time.Duration
		for range rounds {
			start := time.Now()
			err := image.BuildEROFS(context.Background(), dir, path, image.BuildOptions{Writer: erofs.WriterOptions{MetadataAtEnd: atEnd}})
			if err != nil {
				return nil, err
			}
			times = append(times, time.Since(start))
		}
		slices.Sort(times)
		fmt.Printf("build %s: median %.2f s of %d (%v)\n", name, times[len(times)/2].Seconds(), rounds, times)
		paths = append(paths, path)
	}
	return paths, nil
}

func report(path string, chunk int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	rs, err := erofs.MetadataRanges(f, fi.Size())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var bytes int64
	chunks := map[int64]bool{}
	for _, r := range rs {
		bytes += r.Len
		for c := r.Off / chunk; c*chunk < r.Off+r.Len; c++ {
			chunks[c] = true
		}
	}
	runs, prev := 0, int64(-2)
	for c := int64(0); c*chunk < fi.Size(); c++ {
		if chunks[c] {
			if c != prev+1 {
				runs++
			}
			prev = c
		}
	}
	fmt.Printf("| %s | %d | %d | %d | %d | %d | %d |\n", filepath.Base(path), fi.Size(), bytes, len(rs),
		(fi.Size()+chunk-1)/chunk, len(chunks), runs)
	return nil
}

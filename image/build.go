package image

import (
	"context"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/pe-project/pe/erofs"
)

// BuildOptions configures BuildEROFS.
type BuildOptions struct {
	// Writer configures the EROFS writer: block size, reproducible
	// modification times, where file tails are spooled.
	Writer erofs.WriterOptions
	// Stdin is the tar stream read when the source is "-"; nil means
	// os.Stdin.
	Stdin io.Reader
	// Durable syncs the image to disk before renaming it into place, so it
	// survives a power loss, not just a crash of pe. Caches that trust their
	// entries want it; a one-off output file, like mkfs.erofs's, does not
	// pay for it.
	Durable bool
	// Limits bound what a tar source may unpack to (zero: no limits). A
	// directory on the host is taken as it is.
	Limits Limits
}

// BuildEROFS builds the EROFS image out from source: a directory (see
// AddDir), a tar file, plain or compressed with gzip, zstd or xz (see
// AddTar), or "-" for a tar stream on opts.Stdin.
//
// The image is written to a temporary file next to out and renamed over
// out only when complete, so out is either the whole new image or
// untouched: on any error or cancellation of ctx the temporary file is
// removed. The new file has mode 0644.
func BuildEROFS(ctx context.Context, source, out string, opts BuildOptions) error {
	from := source
	if source == "-" {
		from = "standard input"
	}
	if err := buildEROFS(ctx, source, out, opts); err != nil {
		return fmt.Errorf("building %s from %s: %w", out, from, err)
	}
	return nil
}

func buildEROFS(ctx context.Context, source, out string, opts BuildOptions) error {
	// Settle what the source is before creating anything.
	var tarStream io.Reader
	var srcDir string
	if source == "-" {
		tarStream = opts.Stdin
		if tarStream == nil {
			tarStream = os.Stdin
		}
	} else {
		fi, err := os.Stat(source)
		if err != nil {
			return err
		}
		if fi.IsDir() {
			srcDir = source
		} else {
			f, err := os.Open(source)
			if err != nil {
				return err
			}
			defer f.Close()
			tarStream = f
		}
	}

	return writeEROFSFile(ctx, out, opts, func(w *erofs.Writer, tmp *os.File) error {
		if srcDir == "" {
			return AddTar(ctx, w, tarStream, opts.Limits)
		}
		var skip map[fileID]bool
		if fi, err := tmp.Stat(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				// The output may be inside the source tree: leave it out.
				skip = map[fileID]bool{{dev: uint64(st.Dev), ino: st.Ino}: true}
			}
		}
		return addDir(ctx, w, srcDir, skip)
	})
}

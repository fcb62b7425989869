package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/internal/atomicfile"
)

// ExportEROFS writes the EROFS image of ref to the file out, taking it
// from the cache (converting it into the cache first when needed, as Get
// does). The copy is a reflink where the file system can share blocks
// (btrfs, XFS), else an in-kernel copy; out appears complete or not at
// all.
func (c *Cache) ExportEROFS(ctx context.Context, ref Reference, out string, opts PullOptions) (*CachedImage, error) {
	if out == "" {
		return nil, errors.New("no output file given")
	}
	img, err := c.Get(ctx, ref, opts)
	if err != nil {
		return nil, err
	}
	if err := copyFileAtomic(ctx, img.EROFSPath, out); err != nil {
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	return img, nil
}

// BuildImageEROFS converts ref straight into the file out with build's
// writer options (block size, modification times), without storing the
// image in the cache; registry layers still go through blobs/. Use it when
// the options differ from the cache's defaults; otherwise ExportEROFS is
// as good and leaves the image cached.
func (c *Cache) BuildImageEROFS(ctx context.Context, ref Reference, out string, opts PullOptions, build BuildOptions) error {
	o, gc, err := c.configAndShare(ctx, opts)
	if err != nil {
		return err
	}
	defer gc.unlock()
	res, err := c.resolveRef(ctx, ref, o)
	if err != nil {
		return err
	}
	if res.local {
		return kindErrorf(ErrUnsupported, "%s is an imported image: it can only be exported as it was built (without --mtime or --block-size)", ref.Familiar())
	}
	src := res.src
	if src == nil {
		if src, err = c.cachedSource(ctx, ref, res.digest, o); err != nil {
			return err
		}
	}
	if o.MaxSize > 0 && src.size > o.MaxSize {
		return kindErrorf(ErrTooLarge, "%s is too large: %d bytes of layers, over the limit of %d bytes (--max-image-size)",
			ref.Familiar(), src.size, o.MaxSize)
	}
	if err := c.fetchBlobs(ctx, src, o); err != nil {
		return err
	}
	if err := c.recordRef(ref, o.platform.String(), src); err != nil {
		return err
	}
	return writeEROFSFile(ctx, out, build, func(w *erofs.Writer, _ *os.File) error {
		return flattenSource(ctx, w, src, o)
	})
}

// writeEROFSFile writes the EROFS image fill makes to out through a
// temporary file next to it, renamed over out once complete; on any error the
// temporary file is removed. fill also gets the temporary file, so a source
// that could contain it can leave it out.
func writeEROFSFile(ctx context.Context, out string, build BuildOptions, fill func(w *erofs.Writer, tmp *os.File) error) (err error) {
	if out == "" {
		return errors.New("no output file given")
	}
	if err := checkOutput(out); err != nil {
		return err
	}
	tmp, err := createOutput(out, build.Durable)
	if err != nil {
		return err
	}
	defer tmp.Abort()
	var w *erofs.Writer
	defer func() {
		if err != nil && w != nil {
			w.Discard()
		}
	}()
	if w, err = erofs.NewWriter(tmp, build.Writer); err != nil {
		return err
	}
	if err := fill(w, tmp.File); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	return finishFile(ctx, tmp)
}

// checkOutput refuses an output path that is an existing directory before
// any work is done; otherwise the rename at the end would fail only after
// the whole image was built, with a less helpful message.
func checkOutput(out string) error {
	if fi, err := os.Stat(out); err == nil && fi.IsDir() {
		return fmt.Errorf("output %s: %w", out, unix.EISDIR)
	}
	return nil
}

// createOutput starts writing the file out: 0644, synced before it
// replaces out when durable, its directory synced after.
func createOutput(out string, durable bool) (*atomicfile.File, error) {
	return atomicfile.Create(out, atomicfile.Options{Pattern: ".pe-build-*", Perm: 0o644, Sync: durable, SyncDir: true})
}

// finishFile puts the complete file tmp in place, unless ctx is done.
func finishFile(ctx context.Context, tmp *atomicfile.File) error {
	if err := ctx.Err(); err != nil {
		tmp.Abort()
		return err
	}
	return tmp.Commit()
}

// copyFileAtomic copies src to dst through a temporary file.
func copyFileAtomic(ctx context.Context, src, dst string) (err error) {
	if err := checkOutput(dst); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := createOutput(dst, false)
	if err != nil {
		return err
	}
	defer tmp.Abort()
	// A reflink shares the blocks: instant, and no extra space.
	if unix.IoctlFileClone(int(tmp.Fd()), int(in.Fd())) != nil {
		// io.Copy between two files uses copy_file_range: the kernel
		// copies, without a round trip through user space.
		if _, err := io.Copy(tmp, in); err != nil {
			return err
		}
	}
	return finishFile(ctx, tmp)
}

package engine

import (
	"context"
	"fmt"
	"io/fs"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/image"
)

// ResolvedImage is an image ready to boot: its EROFS root file system and
// its config.
type ResolvedImage struct {
	// Reference is the canonical reference (or the file path) it was
	// resolved from.
	Reference string
	// Digest is the manifest digest ("sha256:..."), "" when there is none
	// (a bare EROFS file).
	Digest string
	// EROFSPath is the root file system image; "" for a lazy image.
	EROFSPath string
	// Lazy, when set, is the root file system read on demand through the
	// chunk store (an s3:// image the cache does not hold whole): the
	// engine serves it to the VM over NBD. Whoever resolved the image
	// closes it (Release).
	Lazy *blockstore.Image
	// Traces, when set, keeps the lazy image's prefetch traces (beside
	// the image in its bucket).
	Traces TraceStore
	// UserFiles, when set, holds a lazy image's /etc/passwd and
	// /etc/group (carried with its index), which the run's user is
	// looked up in instead of the image: no wait for the image's chunks.
	UserFiles fs.FS
	// Config is the image config (entrypoint, cmd, env, working dir,
	// user); nil when there is none.
	Config *v1.ConfigFile
	// Converted is set when resolving it pulled and converted the image
	// (a cache miss).
	Converted bool
	// Release, when set, ends the hold the source keeps on the image
	// (see image.Lease) so that the cache does not evict it while it is
	// used: whoever resolved the image calls it once done with it.
	Release func()
}

// TraceStore keeps the prefetch traces of a lazy image, one per command
// (a key made with image.TraceKey): the order in which a run first read
// the image's chunks, which later runs of the command prefetch.
type TraceStore interface {
	// LoadTrace returns the command's trace, nil when there is none.
	LoadTrace(ctx context.Context, key string) (*blockstore.Trace, error)
	// SaveTrace stores t as the command's trace unless it has one, and
	// says whether it did.
	SaveTrace(ctx context.Context, key string, t *blockstore.Trace) (bool, error)
}

// release calls img.Release if there is one.
func (img *ResolvedImage) release() {
	if img != nil && img.Release != nil {
		img.Release()
	}
}

// ImageSource resolves the IMAGE argument of a run.
type ImageSource interface {
	Resolve(ctx context.Context, ref string) (*ResolvedImage, error)
}

// CacheSource resolves references with pe's image cache, pulling and
// converting images it lacks (image.Cache.Get). s3:// images the cache
// does not hold whole are not downloaded: they resolve to lazy images
// (image.Cache.OpenS3), read through the cache's chunk store.
type CacheSource struct {
	Cache   *image.Cache
	Options image.PullOptions
	// ChunkCacheSize bounds the chunk store of lazy images when this
	// process opens it first (0: image.DefaultChunkCacheSize).
	ChunkCacheSize int64
}

// Resolve implements ImageSource.
func (s *CacheSource) Resolve(ctx context.Context, ref string) (*ResolvedImage, error) {
	r, err := image.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	if r.Transport() == image.TransportS3 {
		return resolveS3(ctx, s.Cache, r, s.Options, s.ChunkCacheSize)
	}
	img, lease, err := s.Cache.Acquire(ctx, r, s.Options)
	if err != nil {
		return nil, err
	}
	return resolvedImage(img, lease), nil
}

func resolvedImage(img *image.CachedImage, lease *image.Lease) *ResolvedImage {
	return &ResolvedImage{
		Reference: img.Reference,
		Digest:    img.Digest.String(),
		EROFSPath: img.EROFSPath,
		Config:    img.Config,
		Converted: img.Converted,
		Release:   lease.Release,
	}
}

// resolveS3 opens the s3:// image r: the cache's file when it holds the
// image whole, else a lazy image.
func resolveS3(ctx context.Context, c *image.Cache, r image.Reference, opts image.PullOptions, chunkCacheSize int64) (*ResolvedImage, error) {
	store, err := c.ChunkStore(chunkCacheSize)
	if err != nil {
		return nil, err
	}
	img, err := c.OpenS3(ctx, r, opts, store)
	if err != nil {
		return nil, err
	}
	res := &ResolvedImage{
		Reference: img.Reference,
		Digest:    img.Digest.String(),
		Config:    img.Config,
		Lazy:      img.Lazy,
		UserFiles: img.UserFiles,
		Release:   func() { img.Close() },
	}
	if img.Lazy != nil {
		res.Traces = img
	}
	if img.Cached != nil {
		res.EROFSPath = img.Cached.EROFSPath
	}
	return res, nil
}

// FileSource resolves references that name an existing EROFS file
// ("./rootfs.erofs", a path ending in .erofs, erofs:PATH: image.EROFSFile)
// to that file, with no image config, and hands every other reference to
// Next (nil: an error).
type FileSource struct {
	Next ImageSource
}

// Resolve implements ImageSource.
func (s *FileSource) Resolve(ctx context.Context, ref string) (*ResolvedImage, error) {
	if p, ok := image.EROFSFile(ref); ok {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", ref, err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("image %s: not a regular file", ref)
		}
		return &ResolvedImage{Reference: p, EROFSPath: p}, nil
	}
	if s.Next == nil {
		return nil, fmt.Errorf("image %s: only EROFS files (*.erofs) can be run without an image cache", ref)
	}
	return s.Next.Resolve(ctx, ref)
}

// StaticSource resolves the references it holds, for tests and callers
// that built their images themselves.
type StaticSource map[string]*ResolvedImage

// Resolve implements ImageSource.
func (s StaticSource) Resolve(ctx context.Context, ref string) (*ResolvedImage, error) {
	img, ok := s[ref]
	if !ok {
		return nil, fmt.Errorf("image %s: %w", ref, image.ErrNotFound)
	}
	return img, nil
}

package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/internal/atomicfile"
)

// Cache is pe's content-addressed image cache, a directory laid out as:
//
//	blobs/sha256/<hex>             layer blobs fetched from registries
//	images/sha256/<hex>/           one converted image per manifest digest:
//	    rootfs.erofs               the flattened root file system
//	    config.json                the image config (OCI/docker JSON)
//	    manifest.json              the manifest it was built from
//	    meta.json                  references, platform, size, times
//	images/sha256/<hex>.lock       held while the image is converted or used
//	refs/<sha256 of name>.json     reference → digest records per platform
//	gc.lock                        shared by users, exclusive for rm/prune
//
// Every file appears by rename once complete, so an interrupted pe leaves
// at worst a ".tmp-*" file that is never read and that prune removes. An
// image directory is renamed into place with all its files; one without a
// valid rootfs.erofs is never used. Two processes (or goroutines) that need
// the same image wait for one another on its lock file, and the second
// finds the first's result.
//
// A Cache is safe for concurrent use, and several processes may share its
// directory.
type Cache struct {
	dir string
	// now is the clock, replaced in tests.
	now func() time.Time
	// compression holds the EROFS writer's compression settings for new
	// conversions.
	compression erofs.WriterOptions
}

// SetCompression makes the images converted into the cache from now on
// compressed as o's Compression, CompressionLevel, PclusterSize and
// CompressIndex say (the rest of o is ignored). Images already in the cache
// keep the form they were written in: an entry is keyed by the image's
// digest, not by how it was converted.
func (c *Cache) SetCompression(o erofs.WriterOptions) {
	c.compression = erofs.WriterOptions{
		Compression:      o.Compression,
		CompressionLevel: o.CompressionLevel,
		PclusterSize:     o.PclusterSize,
		CompressIndex:    o.CompressIndex,
	}
}

// The cache's subdirectories and lock files.
const (
	blobsDir   = "blobs/sha256"
	imagesDir  = "images/sha256"
	refsDir    = "refs"
	gcLockName = "gc.lock"
	refsLock   = "refs.lock"
	erofsName  = "rootfs.erofs"
	tmpPrefix  = ".tmp-"
)

// DefaultCacheDir returns where the cache lives unless told otherwise:
// $XDG_CACHE_HOME/pe, or ~/.cache/pe.
func DefaultCacheDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding the cache directory: %w (set --cache-dir or PE_CACHE_DIR)", err)
	}
	return filepath.Join(d, "pe"), nil
}

// OpenCache opens the cache in dir, creating it if needed; "" means
// DefaultCacheDir().
func OpenCache(dir string) (*Cache, error) {
	if dir == "" {
		d, err := DefaultCacheDir()
		if err != nil {
			return nil, err
		}
		dir = d
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{blobsDir, imagesDir, refsDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("opening image cache: %w", err)
		}
	}
	return &Cache{dir: dir, now: time.Now}, nil
}

// Dir returns the cache's directory.
func (c *Cache) Dir() string { return c.dir }

// CachedImage is an image converted into the cache.
type CachedImage struct {
	// Reference is the canonical reference the image was asked for (or,
	// from List, a reference recorded for it; "" if none is).
	Reference string
	// Digest keys the image: its manifest digest; for a docker archive
	// its image ID (config digest); for an import the digest of the
	// manifest pe synthesizes (see ImportOptions).
	Digest v1.Hash
	// Platform is the image's os/arch[/variant].
	Platform string
	// Config is the image config: entrypoint, cmd, env, working dir, user.
	Config *v1.ConfigFile
	// EROFSPath is the flattened root file system. Open it promptly: a
	// later rm or prune may remove it (an open file stays readable).
	EROFSPath string
	// Size is the size of the EROFS image in bytes.
	Size int64
	// Created is when the image entered the cache; LastUsed when it was
	// last asked for.
	Created, LastUsed time.Time
	// Local marks an image made by Import, which is never pulled.
	Local bool
	// Converted is set when this call pulled and converted the image; it
	// is false when the cache already held it (a cache hit).
	Converted bool
	// Lazy marks, from List, an s3:// image a run read lazily (OpenS3):
	// the cache holds its index and CachedBytes of its Size in the chunk
	// store, EROFSPath and Created are empty, and LastUsed is when a run
	// last opened it or resolved its tag.
	Lazy bool
	// CachedBytes is, for a Lazy image, how many of its bytes the chunk
	// store holds.
	CachedBytes int64
}

// imageMeta is an image directory's meta.json.
type imageMeta struct {
	// References are the references that resolved to the image.
	References []string  `json:"references,omitempty"`
	Platform   string    `json:"platform,omitempty"`
	Size       int64     `json:"size"`
	Created    time.Time `json:"created"`
	LastUsed   time.Time `json:"last_used"`
	Local      bool      `json:"local,omitempty"`
	// Blobs are the blobs/ entries the image was made from, kept while
	// an image uses them.
	Blobs []string `json:"blobs,omitempty"`
}

// refRecord is a refs/ file: what one reference resolved to.
type refRecord struct {
	Name string `json:"name"`
	// Local is set for an imported image, which is never looked up in a
	// registry, whatever the platform.
	Local *refTarget `json:"local,omitempty"`
	// Platforms maps "os/arch[/variant]" to the image chosen for it.
	Platforms map[string]refTarget `json:"platforms,omitempty"`
}

// refTarget is one resolution of a reference.
type refTarget struct {
	Digest v1.Hash `json:"digest"`
	// Top is what the registry answered for the reference (an index or
	// the manifest), compared with a HEAD request when the record ages.
	Top     *v1.Hash  `json:"top,omitempty"`
	Fetched time.Time `json:"fetched"`
}

func (c *Cache) path(elem ...string) string {
	return filepath.Join(append([]string{c.dir}, elem...)...)
}

func (c *Cache) imageDir(h v1.Hash) string { return c.path(imagesDir, h.Hex) }

func (c *Cache) blobPath(h v1.Hash) string { return c.path(blobsDir, h.Hex) }

func (c *Cache) refPath(name string) string {
	sum := sha256.Sum256([]byte(name))
	return c.path(refsDir, hex.EncodeToString(sum[:])+".json")
}

// lockGC takes the cache-wide lock: shared by everything that reads or
// adds images, exclusive for rm and prune, which delete.
func (c *Cache) lockGC(ctx context.Context, shared bool, o *pullConfig) (*fileLock, error) {
	return lockFile(ctx, c.path(gcLockName), shared, func() {
		if o != nil {
			o.Log.Info("waiting for another pe using the image cache", "cache", c.dir)
		}
	})
}

// configAndShare completes opts and takes the cache's collection lock
// shared, as every reader and writer of images does (prune takes it
// exclusive); the caller unlocks it.
func (c *Cache) configAndShare(ctx context.Context, opts PullOptions) (*pullConfig, *fileLock, error) {
	o, err := opts.config()
	if err != nil {
		return nil, nil, err
	}
	gc, err := c.lockGC(ctx, true, o)
	if err != nil {
		return nil, nil, err
	}
	return o, gc, nil
}

// Pull resolves ref in its registry (or layout, or archive) even when the
// cache has a record of it, fetches what the cache lacks and converts the
// image into the cache, as `pe image pull` does. It is Get with
// PullAlways.
func (c *Cache) Pull(ctx context.Context, ref Reference, opts PullOptions) (*CachedImage, error) {
	opts.Policy = PullAlways
	return c.Get(ctx, ref, opts)
}

// Get returns the cached image ref names, fetching and converting it first
// when needed. What "needed" means is opts.Policy: by default a cached
// image is used without going to the network while its tag record is
// younger than opts.TagTTL. Imported images are always taken from the
// cache. Get is what `pe run` calls.
func (c *Cache) Get(ctx context.Context, ref Reference, opts PullOptions) (*CachedImage, error) {
	return c.get(ctx, ref, opts, nil)
}

// get is Get; hold, when set, is called with the image before the cache
// lock is released, and its error is get's.
func (c *Cache) get(ctx context.Context, ref Reference, opts PullOptions, hold func(*CachedImage) error) (*CachedImage, error) {
	o, gc, err := c.configAndShare(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer gc.unlock()
	var img *CachedImage
	if ref.transport == TransportS3 {
		img, err = c.getS3(ctx, ref, o)
	} else {
		img, err = c.getResolved(ctx, ref, o)
	}
	if err == nil && hold != nil {
		err = hold(img)
	}
	if err != nil {
		return nil, err
	}
	return img, nil
}

// getResolved is get for the references resolveRef resolves (all but
// s3://).
func (c *Cache) getResolved(ctx context.Context, ref Reference, o *pullConfig) (*CachedImage, error) {
	res, err := c.resolveRef(ctx, ref, o)
	if err != nil {
		return nil, err
	}
	var img *CachedImage
	if res.src == nil {
		img, err = c.use(ctx, ref, res.digest, o)
	} else if img, err = c.ensure(ctx, res.src, o); err == nil {
		err = c.recordRef(ref, o.platform.String(), res.src)
	}
	if err != nil {
		return nil, err
	}
	return img, nil
}

// resolution is what a reference names now.
type resolution struct {
	digest v1.Hash
	// src is set when the reference was looked up in its source; nil
	// when the cache's records answered.
	src *source
	// local marks an imported image.
	local bool
}

// resolveRef finds which image ref names, from the records when the pull
// policy allows it and the image is in the cache, else from its source.
func (c *Cache) resolveRef(ctx context.Context, ref Reference, o *pullConfig) (resolution, error) {
	if ref.IsZero() {
		return resolution{}, errors.New("no image reference given")
	}
	plat := o.platform.String()
	rec, err := c.readRef(ref.String())
	if err != nil {
		o.Log.Warn("ignoring an unreadable reference record", "reference", ref, "error", err)
	}
	if rec != nil && rec.Local != nil {
		if o.Policy == PullAlways {
			return resolution{}, kindErrorf(ErrUnsupported, "%s is an imported image: it is never pulled from a registry", ref.Familiar())
		}
		if !c.complete(rec.Local.Digest) {
			return resolution{}, kindErrorf(ErrNotCached, "%s is an imported image whose cache entry is gone; import it again", ref.Familiar())
		}
		return resolution{digest: rec.Local.Digest, local: true}, nil
	}
	var t refTarget
	have := false
	if rec != nil {
		t, have = rec.Platforms[plat]
		have = have && c.complete(t.Digest)
	}
	if !have && ref.IsDigest() && ref.transport == TransportRegistry {
		// A pinned manifest the cache has under another name: no need
		// to ask the registry. (An index digest has no image directory
		// of its own, so it goes on to be resolved.)
		if h, err := v1.NewHash(ref.name.Identifier()); err == nil && c.complete(h) {
			return resolution{digest: h}, nil
		}
	}
	if !have && o.Policy == PullNever {
		return resolution{}, kindErrorf(ErrNotCached, "%s (%s) is not in the image cache, and the pull policy is never", ref.Familiar(), plat)
	}
	if have {
		cached := resolution{digest: t.Digest}
		switch {
		case o.Policy == PullNever:
			return cached, nil
		case ref.transport != TransportRegistry:
			// Layouts and archives are local and may change in place:
			// read them again, it is cheap.
		case ref.IsDigest():
			return cached, nil
		case o.Policy == PullMissing && c.now().Sub(t.Fetched) < o.TagTTL:
			return cached, nil
		default:
			top, err := headRemote(ctx, ref, o)
			if err == nil && t.Top != nil && top == *t.Top {
				o.Log.Debug("tag has not moved", "reference", ref, "digest", top)
				if err := c.touchRef(ref.String(), plat); err != nil {
					return resolution{}, err
				}
				return cached, nil
			}
			if err != nil && o.Policy == PullMissing {
				o.Log.Warn("using the cached image: could not check its tag", "reference", ref.Familiar(), "error", err)
				return cached, nil
			}
		}
	}
	src, err := resolve(ctx, ref, o)
	if err != nil {
		// A registry out of reach (or a tag deleted upstream) leaves the
		// cached image usable, as docker would use it without asking. A
		// layout or archive on disk that no longer resolves is an error
		// the user should see.
		if have && o.Policy == PullMissing && ref.transport == TransportRegistry {
			o.Log.Warn("using the cached image", "reference", ref.Familiar(), "error", err)
			return resolution{digest: t.Digest}, nil
		}
		return resolution{}, err
	}
	return resolution{digest: src.digest, src: src}, nil
}

// use returns a cached image and records that it was used.
func (c *Cache) use(ctx context.Context, ref Reference, h v1.Hash, o *pullConfig) (*CachedImage, error) {
	lock, err := c.lockImage(ctx, h, o)
	if err != nil {
		return nil, err
	}
	defer lock.unlockRemove()
	return c.useLocked(ref.String(), h)
}

// useLocked is use for a caller holding the image's lock.
func (c *Cache) useLocked(ref string, h v1.Hash) (*CachedImage, error) {
	img, meta, err := c.loadImage(h)
	if err != nil {
		return nil, err
	}
	meta.LastUsed = c.now().UTC()
	if ref != "" && !slices.Contains(meta.References, ref) {
		meta.References = append(meta.References, ref)
	}
	if err := c.writeJSON(filepath.Join(c.imageDir(h), "meta.json"), meta, false); err != nil {
		return nil, err
	}
	img.Reference = ref
	img.LastUsed = meta.LastUsed
	return img, nil
}

func (c *Cache) lockImage(ctx context.Context, h v1.Hash, o *pullConfig) (*fileLock, error) {
	return lockFile(ctx, c.imageDir(h)+".lock", false, func() {
		o.Log.Info("waiting for another pe converting the same image", "digest", h)
	})
}

// complete reports whether the cache has a usable image h.
func (c *Cache) complete(h v1.Hash) bool {
	_, _, err := c.loadImage(h)
	return err == nil
}

// loadImage reads a cached image. An entry without a valid EROFS image or
// config is an error (ErrNotCached): it is never used.
func (c *Cache) loadImage(h v1.Hash) (*CachedImage, *imageMeta, error) {
	dir := c.imageDir(h)
	notCached := func(err error) error {
		return &kindError{kind: ErrNotCached, msg: "image " + h.String() + " is not in the cache", err: err}
	}
	size, err := checkEROFS(filepath.Join(dir, erofsName))
	if err != nil {
		return nil, nil, notCached(err)
	}
	b, err := readSmall(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, nil, notCached(err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(b))
	if err != nil {
		return nil, nil, notCached(fmt.Errorf("config.json: %w", err))
	}
	var meta imageMeta
	if b, err := readSmall(filepath.Join(dir, "meta.json")); err != nil || json.Unmarshal(b, &meta) != nil {
		// meta.json only informs: rebuild what it can.
		fi, _ := os.Stat(filepath.Join(dir, erofsName))
		meta = imageMeta{Size: size, Created: fi.ModTime().UTC(), LastUsed: fi.ModTime().UTC()}
	}
	return &CachedImage{
		Digest:    h,
		Platform:  meta.Platform,
		Config:    cfg,
		EROFSPath: filepath.Join(dir, erofsName),
		Size:      size,
		Created:   meta.Created,
		LastUsed:  meta.LastUsed,
		Local:     meta.Local,
	}, &meta, nil
}

// checkEROFS checks that path is a whole EROFS image, as far as the
// superblock's magic number tells, and returns its size.
func checkEROFS(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var magic [4]byte
	if _, err := f.ReadAt(magic[:], 1024); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if binary.LittleEndian.Uint32(magic[:]) != 0xE0F5E1E2 {
		return 0, fmt.Errorf("%s is not an EROFS image", path)
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// ensure returns the cached image for src, converting it first if the
// cache lacks it.
func (c *Cache) ensure(ctx context.Context, src *source, o *pullConfig) (*CachedImage, error) {
	ref := src.ref.String()
	if c.complete(src.digest) {
		return c.use(ctx, src.ref, src.digest, o)
	}
	// Refuse before downloading anything.
	if o.MaxSize > 0 && src.size > o.MaxSize {
		return nil, kindErrorf(ErrTooLarge, "%s is too large: %d bytes of layers, over the limit of %d bytes (--max-image-size)",
			src.ref.Familiar(), src.size, o.MaxSize)
	}
	if o.Convert != nil {
		done, err := o.Convert(ctx)
		if err != nil {
			return nil, err
		}
		defer done()
	}
	lock, err := c.lockImage(ctx, src.digest, o)
	if err != nil {
		return nil, err
	}
	defer lock.unlockRemove()
	if c.complete(src.digest) {
		// Another process or goroutine converted it while we waited.
		return c.useLocked(ref, src.digest)
	}
	if err := c.fetchBlobs(ctx, src, o); err != nil {
		return nil, err
	}
	start := time.Now()
	meta := imageMeta{References: []string{ref}, Platform: src.platform}
	for _, l := range src.layers {
		if l.fetch != nil {
			meta.Blobs = append(meta.Blobs, l.digest.String())
		}
	}
	err = c.writeImage(ctx, src.digest, src.config, src.manifest, &meta, func(w *erofs.Writer) error {
		return flattenSource(ctx, w, src, o)
	})
	if err != nil {
		return nil, err
	}
	o.Log.Info("converted image", "reference", src.ref.Familiar(), "digest", src.digest, "bytes", meta.Size,
		"duration", time.Since(start).Round(time.Millisecond))
	img, err := c.useLocked(ref, src.digest)
	if err != nil {
		return nil, err
	}
	img.Converted = true
	return img, nil
}

// flattenSource flattens the layers of src into w, verifying each layer's
// digest as Flatten reads it.
func flattenSource(ctx context.Context, w *erofs.Writer, src *source, o *pullConfig) error {
	layers, _, check := src.flattenLayers(o, src.ref.Familiar(), 0)
	err := Flatten(ctx, w, layers, o.Limits)
	if err != nil {
		err = fmt.Errorf("converting %s: %w", src.ref.Familiar(), err)
	} else if err = check(); err == nil {
		return nil
	}
	if ctx.Err() == nil {
		if bad := src.findCorrupt(); bad != nil {
			return bad
		}
	}
	return err
}

// findCorrupt reads every layer of src again and returns an
// ErrDigestMismatch error for the first whose content does not match its
// digest. A corrupt compressed blob usually makes the decompressor or the
// tar reader fail before the end of the stream, where the digest is
// checked; this turns that confusing error into the real cause. A corrupt
// cached copy of a registry blob (damaged on disk after it was verified)
// is removed, so that the next pull downloads it again instead of failing
// the same way for ever.
func (src *source) findCorrupt() error {
	for _, l := range src.layers {
		if l.open == nil {
			continue
		}
		rc, err := l.open()
		if err != nil {
			continue
		}
		vr, err := newVerifyReader(rc, fmt.Sprintf("layer %s of %s", l.digest, src.ref.Familiar()), l.digest, l.size)
		if err != nil {
			continue
		}
		_, err = io.Copy(io.Discard, vr)
		vr.Close()
		if errors.Is(err, ErrDigestMismatch) {
			if l.cached != "" {
				if rerr := os.Remove(l.cached); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
					return fmt.Errorf("%w (removing the corrupt cached copy %s: %v)", err, l.cached, rerr)
				}
				return fmt.Errorf("%w (the cached copy was corrupt and is removed: pull again to download it)", err)
			}
			return err
		}
	}
	return nil
}

// flattenLayers returns src's layers for Flatten, base first, a function
// that reports progress of bytes read (for layers the caller adds, which
// are extra bytes more in all), and a check to run after Flatten that
// every layer was read to its end and verified. ref names the image in
// messages.
func (src *source) flattenLayers(o *pullConfig, ref string, extra int64) ([]FlattenLayer, func(int64), func() error) {
	total := extra
	for _, l := range src.layers {
		if l.size < 0 {
			total = -1
			break
		}
		total += l.size
	}
	counter := o.newProgressCounter(ref, PhaseConvert, total)
	add := counter.add
	// Flatten may open a layer twice (see FlattenLayer.Open): every
	// stream it opens must have been read to its end and verified.
	readers := make([][]*verifyReader, len(src.layers))
	layers := make([]FlattenLayer, len(src.layers))
	for i, l := range src.layers {
		what := fmt.Sprintf("layer %s of %s", l.digest, ref)
		layers[i] = FlattenLayer{
			Name:      what,
			Whiteouts: true,
			Open: func() (io.ReadCloser, error) {
				rc, err := l.open()
				if err != nil {
					return nil, fmt.Errorf("opening %s: %w", what, err)
				}
				vr, err := newVerifyReader(rc, what, l.digest, l.size)
				if err != nil {
					return nil, err
				}
				readers[i] = append(readers[i], vr)
				return fastGunzip(readCloser{countReader{vr, add}, vr})
			},
		}
	}
	check := func() error {
		for i, vrs := range readers {
			if len(vrs) == 0 {
				return fmt.Errorf("layer %s of %s was never read", src.layers[i].digest, ref)
			}
			for _, vr := range vrs {
				if err := vr.checkDone(); err != nil {
					return err
				}
			}
		}
		o.progress(Progress{Reference: ref, Phase: PhaseConvert, Complete: max(total, counter.done()), Total: total, Done: true})
		return nil
	}
	return layers, add, check
}

type readCloser struct {
	io.Reader
	io.Closer
}

// writeImage writes an image directory for h: the EROFS image fill
// writes, config.json, manifest.json and meta.json (meta.Size, Created and
// LastUsed are set here). Everything is written and synced in a temporary
// directory renamed into place last. The caller holds the image's lock.
func (c *Cache) writeImage(ctx context.Context, h v1.Hash, config, manifest []byte, meta *imageMeta, fill func(*erofs.Writer) error) error {
	return c.writeImageFile(ctx, h, config, manifest, meta, c.fillEROFS(fill))
}

// fillEROFS adapts fill, which adds the files of an image to a writer, to
// writeImageFile and stageImage: it writes the EROFS file with the cache's
// writer options.
func (c *Cache) fillEROFS(fill func(*erofs.Writer) error) func(f *os.File, tmp string) error {
	return func(f *os.File, tmp string) error {
		opts := c.compression
		opts.TempDir = tmp
		w, err := erofs.NewWriter(f, opts)
		if err != nil {
			return err
		}
		if err := fill(w); err != nil {
			w.Discard()
			return err
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("writing EROFS image: %w", err)
		}
		return nil
	}
}

// writeImageFile is writeImage for a caller that writes the EROFS file f
// itself (tmp is the temporary image directory holding f).
func (c *Cache) writeImageFile(ctx context.Context, h v1.Hash, config, manifest []byte, meta *imageMeta, fill func(f *os.File, tmp string) error) error {
	tmp, err := c.stageImage(ctx, h.Hex, fill)
	if err != nil {
		return err
	}
	return c.commitImage(tmp, h, config, manifest, meta)
}

// stageImage writes and syncs the EROFS file of an image, which fill
// writes, in a new temporary image directory (its name starting with
// label) and returns the directory, for commitImage. On error nothing is
// left.
func (c *Cache) stageImage(ctx context.Context, label string, fill func(f *os.File, tmp string) error) (dir string, err error) {
	tmp, err := os.MkdirTemp(c.path(imagesDir), tmpPrefix+label+"-")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	f, err := os.OpenFile(filepath.Join(tmp, erofsName), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := fill(f, tmp); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return tmp, f.Close()
}

// commitImage completes the image directory tmp that stageImage wrote with
// config.json, manifest.json and meta.json, and renames it into place as
// the image h; on error it removes tmp. The caller holds the image's lock.
func (c *Cache) commitImage(tmp string, h v1.Hash, config, manifest []byte, meta *imageMeta) (err error) {
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	fi, err := os.Stat(filepath.Join(tmp, erofsName))
	if err != nil {
		return err
	}
	now := c.now().UTC()
	meta.Size, meta.Created, meta.LastUsed = fi.Size(), now, now
	for name, b := range map[string][]byte{"config.json": config, "manifest.json": manifest} {
		if err := writeFileSync(filepath.Join(tmp, name), b); err != nil {
			return err
		}
	}
	mb, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileSync(filepath.Join(tmp, "meta.json"), mb); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	atomicfile.SyncDir(tmp)
	final := c.imageDir(h)
	// A directory left without a valid image (someone deleted files in
	// it) is replaced.
	if err := os.RemoveAll(final); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		return err
	}
	atomicfile.SyncDir(c.path(imagesDir))
	return nil
}

// fetchBlobs downloads the registry layers of src the cache lacks into
// blobs/, a few at a time, and points every layer's open at its cached
// blob.
func (c *Cache) fetchBlobs(ctx context.Context, src *source, o *pullConfig) error {
	var missing []*layer
	var total int64
	for _, l := range src.layers {
		if l.fetch == nil {
			continue
		}
		path := c.blobPath(l.digest)
		l.open = func() (io.ReadCloser, error) { return os.Open(path) }
		l.cached = path
		if fi, err := os.Stat(path); err == nil && fi.Size() == l.size {
			continue
		}
		missing = append(missing, l)
		total += l.size
	}
	if len(missing) == 0 {
		return nil
	}
	ref := src.ref.Familiar()
	o.Log.Info("downloading layers", "reference", ref, "layers", len(missing), "bytes", total)
	counter := o.newProgressCounter(ref, PhaseDownload, total)
	add := counter.add
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, 3)
	var wg sync.WaitGroup
	for _, l := range missing {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := c.downloadBlob(ctx, l, fmt.Sprintf("layer %s of %s", l.digest, ref), add); err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	o.progress(Progress{Reference: ref, Phase: PhaseDownload, Complete: counter.done(), Total: total, Done: true})
	return nil
}

// downloadBlob streams one layer into blobs/, verifying its digest and
// size before renaming it into place.
func (c *Cache) downloadBlob(ctx context.Context, l *layer, what string, add func(int64)) (err error) {
	// The cache's other files are 0644.
	tmp, err := atomicfile.Create(c.blobPath(l.digest), atomicfile.Options{Pattern: tmpPrefix + l.digest.Hex + "-*", Perm: 0o644, Sync: true})
	if err != nil {
		return err
	}
	defer tmp.Abort()
	rc, err := l.fetch()
	if err != nil {
		return registryError("fetching", what, err)
	}
	vr, err := newVerifyReader(rc, what, l.digest, l.size)
	if err != nil {
		return err
	}
	_, err = io.Copy(tmp, countReader{ctxReader{ctx, vr}, add})
	vr.Close()
	if err == nil {
		err = vr.checkDone()
	}
	if err != nil {
		if ctxErr := context.Cause(ctx); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("fetching %s: %w", what, blobError(err))
	}
	return tmp.Commit()
}

// blobError marks ggcr's own digest and size checks, which it makes before
// pe's and reports as plain errors, as ErrDigestMismatch.
func blobError(err error) error {
	if errors.Is(err, ErrDigestMismatch) {
		return err
	}
	msg := err.Error()
	if strings.Contains(msg, "error verifying") || strings.Contains(msg, "does not match expected size") ||
		errors.Is(err, io.ErrUnexpectedEOF) {
		return &kindError{kind: ErrDigestMismatch, msg: "the blob is corrupt or truncated", err: err}
	}
	return err
}

// readRef reads the record of a reference; nil if there is none.
func (c *Cache) readRef(name string) (*refRecord, error) {
	b, err := readSmall(c.refPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec refRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%s: %w", c.refPath(name), err)
	}
	if rec.Name != name {
		return nil, fmt.Errorf("%s records %q, not %q", c.refPath(name), rec.Name, name)
	}
	return &rec, nil
}

// updateRef changes the record of a reference under the refs lock;
// update returns false to delete the record.
func (c *Cache) updateRef(name string, update func(*refRecord) bool) error {
	l, err := lockFile(context.Background(), c.path(refsLock), false, nil)
	if err != nil {
		return err
	}
	defer l.unlock()
	rec, err := c.readRef(name)
	if err != nil || rec == nil {
		rec = &refRecord{Name: name}
	}
	if !update(rec) {
		err := os.Remove(c.refPath(name))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	return c.writeJSON(c.refPath(name), rec, true)
}

// recordRef records that ref resolved to src for the platform.
func (c *Cache) recordRef(ref Reference, plat string, src *source) error {
	t := refTarget{Digest: src.digest, Fetched: c.now().UTC()}
	if src.top != (v1.Hash{}) {
		top := src.top
		t.Top = &top
	}
	return c.updateRef(ref.String(), func(rec *refRecord) bool {
		rec.Local = nil
		if rec.Platforms == nil {
			rec.Platforms = map[string]refTarget{}
		}
		rec.Platforms[plat] = t
		return true
	})
}

// touchRef marks a reference's record for plat as checked now.
func (c *Cache) touchRef(name, plat string) error {
	return c.updateRef(name, func(rec *refRecord) bool {
		if t, ok := rec.Platforms[plat]; ok {
			t.Fetched = c.now().UTC()
			rec.Platforms[plat] = t
		}
		return rec.Local != nil || len(rec.Platforms) > 0
	})
}

// writeJSON writes v as indented JSON to path atomically; sync makes it
// durable too.
func (c *Cache) writeJSON(path string, v any, sync bool) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, atomicfile.Options{Pattern: tmpPrefix + "*", Perm: 0o644, Sync: sync})
}

// writeFileSync creates path with b and syncs it.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

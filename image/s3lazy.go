package image

// Running s3:// images without downloading them (issue 16). OpenS3 gives a
// run the image as a blockstore.Image: the chunks the guest touches are
// fetched from the bucket, verified and kept in a chunk cache shared by
// every image and every pe using the cache directory:
//
//	s3/chunks/<sha256>              verified chunks (blockstore.Store)
//	s3/tmp/                         the store's temporary files
//	s3/indexes/sha256/<hex>.json    the index of every image opened, named by
//	                                its sha256, which is the image's digest
//	s3/refs/<sha256 of name>.json   what a tag resolved to, and when (or
//	                                a pinned digest a run opened)
//
// The local index lets a later run of a pinned digest start without the
// bucket; with every chunk it touches cached, it needs no bucket at all.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/internal/atomicfile"
)

// DefaultChunkCacheSize bounds the chunk cache of lazily read s3:// images
// unless told otherwise (--chunk-cache-size).
const DefaultChunkCacheSize = 20 << 30

// s3LazyDir holds the lazy images' chunks, indexes and tag records.
const s3LazyDir = "s3"

// chunkStores holds the one Store per cache directory of this process:
// two Stores on one directory would work (the directory needs no locks)
// but count and bound separately.
var chunkStores = struct {
	sync.Mutex
	m map[string]*blockstore.Store
}{m: map[string]*blockstore.Store{}}

// ChunkStore returns this process's chunk store for the cache's lazily
// read s3:// images, opening it the first time with a size limit of
// maxBytes (0: DefaultChunkCacheSize); later calls get the same store
// whatever their maxBytes.
func (c *Cache) ChunkStore(maxBytes int64) (*blockstore.Store, error) {
	chunkStores.Lock()
	defer chunkStores.Unlock()
	dir := c.path(s3LazyDir)
	if s := chunkStores.m[dir]; s != nil {
		return s, nil
	}
	if maxBytes <= 0 {
		maxBytes = DefaultChunkCacheSize
	}
	s, err := blockstore.NewStore(blockstore.Options{Dir: dir, MaxBytes: maxBytes})
	if err != nil {
		return nil, fmt.Errorf("opening the chunk cache: %w", err)
	}
	chunkStores.m[dir] = s
	return s, nil
}

// FlushChunkStore waits for the chunk store's fetches in progress and
// writes the fetched chunks still held in memory to the cache, if this
// process opened the store: a process calls it before it exits, so that
// the chunks its runs fetched are there for the next one.
func (c *Cache) FlushChunkStore() {
	chunkStores.Lock()
	s := chunkStores.m[c.path(s3LazyDir)]
	chunkStores.Unlock()
	if s != nil {
		s.Close()
	}
}

// S3Image is an s3:// image opened for runs by OpenS3: read lazily through
// the chunk store (Lazy), or, when the cache holds it whole (pe image
// pull), that file (Cached).
type S3Image struct {
	// Reference is the canonical reference it was opened by.
	Reference string
	// Digest is the image's digest: its index's sha256.
	Digest v1.Hash
	// Config is the image config.
	Config *v1.ConfigFile
	// Size is the EROFS image's size in bytes.
	Size int64
	// Lazy reads the image, fetching missing chunks from the bucket; nil
	// when Cached is set.
	Lazy *blockstore.Image
	// Cached is the whole image in the cache, held until Close; nil when
	// Lazy is set.
	Cached *CachedImage
	// UserFiles holds the lazy image's /etc/passwd and /etc/group as its
	// index carries them (pe image push copies them there), so that a
	// run reads them without waiting for the image's chunks; nil when the
	// index does not carry both (read them from Lazy).
	UserFiles fs.FS

	lease *Lease
	once  sync.Once
	// client and ref reach the bucket for the image's traces.
	client *s3.Client
	ref    Reference
}

// LoadTrace returns the prefetch trace a run of the command key (TraceKey)
// left beside the lazy image in its bucket, nil when there is none.
func (s *S3Image) LoadTrace(ctx context.Context, key string) (*blockstore.Trace, error) {
	if s.Lazy == nil || s.client == nil {
		return nil, nil
	}
	return LoadS3Trace(ctx, s.client, s.ref, s.Digest, s.Lazy.Index(), key)
}

// SaveTrace stores t as the trace of the command key beside the lazy
// image, unless one is there already (the first trace stays); it says
// whether it wrote one.
func (s *S3Image) SaveTrace(ctx context.Context, key string, t *blockstore.Trace) (bool, error) {
	if s.Lazy == nil || s.client == nil {
		return false, nil
	}
	return SaveS3Trace(ctx, s.client, s.ref, s.Digest, s.Lazy.Index(), key, t)
}

// Close ends the lazy image's reads or releases the cached image's lease.
// It may be called more than once.
func (s *S3Image) Close() error {
	s.once.Do(func() {
		if s.Lazy != nil {
			s.Lazy.Close()
		}
		s.lease.Release()
	})
	return nil
}

// PinS3 returns the s3:// reference ref (any form) pinned to digest:
// s3://BUCKET/PREFIX/NAME@DIGEST, which OpenS3 opens from the cache's copy
// of the index without asking the bucket.
func PinS3(ref, digest string) (string, error) {
	r, err := ParseReference(ref)
	if err != nil {
		return "", err
	}
	if r.transport != TransportS3 {
		return "", fmt.Errorf("%s is not an s3:// reference", ref)
	}
	h, err := v1.NewHash(digest)
	if err != nil || h.Algorithm != "sha256" {
		return "", fmt.Errorf("digest %q: want sha256:<64 hex>", digest)
	}
	return r.s3.String() + "@" + h.String(), nil
}

// s3Ref is a lazy tag record: what a tag resolved to, and when.
type s3Ref struct {
	Name    string  `json:"name"`
	Digest  v1.Hash `json:"digest"`
	Fetched int64   `json:"fetched_unix"`
}

func (c *Cache) s3IndexPath(h v1.Hash) string {
	return c.path(s3LazyDir, "indexes", "sha256", h.Hex+".json")
}

func (c *Cache) s3RefPath(name string) string {
	sum := sha256.Sum256([]byte(name))
	return c.path(s3LazyDir, "refs", hex.EncodeToString(sum[:])+".json")
}

// OpenS3 opens the s3:// image ref names for runs without downloading
// it. The tag is resolved as Get resolves it under opts.Policy (a pinned
// digest never asks the bucket for the tag). When the cache holds the
// whole image, that is what the S3Image holds; otherwise its index comes
// from the cache's copy or the bucket (checked against the digest, and
// kept), and its chunks are read through store from the bucket's blob.
// opts.MaxSize does not apply: it bounds what is downloaded and converted,
// and a lazy image is neither (the chunk store has its own bound). The
// caller closes the S3Image once done.
func (c *Cache) OpenS3(ctx context.Context, ref Reference, opts PullOptions, store *blockstore.Store) (*S3Image, error) {
	if ref.transport != TransportS3 {
		return nil, fmt.Errorf("%s is not an s3:// reference", ref.Familiar())
	}
	if store == nil {
		return nil, errors.New("opening an s3:// image lazily: no chunk store")
	}
	o, gc, err := c.configAndShare(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer gc.unlock()
	h, inline, err := c.resolveS3Lazy(ctx, ref, o)
	if err != nil {
		return nil, err
	}
	if c.complete(h) {
		img, err := c.use(ctx, ref, h, o)
		if err != nil {
			return nil, err
		}
		lease, err := c.lease(h)
		if err != nil {
			return nil, err
		}
		return &S3Image{Reference: ref.String(), Digest: h, Config: img.Config, Size: img.Size, Cached: img, lease: lease}, nil
	}
	ix, err := c.s3Index(ctx, ref, h, o, inline)
	if err != nil {
		return nil, err
	}
	what := ref.Familiar()
	if len(ix.Config) == 0 {
		return nil, fmt.Errorf("the index of %s has no image config", what)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(ix.Config))
	if err != nil {
		return nil, fmt.Errorf("the config in the index of %s: %w", what, err)
	}
	if _, err := checkConfigPlatform(cfg, o.platform, what); err != nil {
		return nil, err
	}
	client, err := o.s3Client()
	if err != nil {
		return nil, err
	}
	obj := client.Object(ref.s3.bucket, ref.s3.blobKey(lazyBlobHex(ix)))
	im, err := store.Open(ix, s3Fetcher{obj})
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", what, err)
	}
	c.noteLazyUse(ref, h)
	o.Log.Debug("opened s3 image lazily", "reference", what, "digest", h, "bytes", ix.Size, "chunks", len(ix.Chunks))
	return &S3Image{Reference: ref.String(), Digest: h, Config: cfg, Size: ix.Size, Lazy: im, UserFiles: decodeCarried(ix.Files), client: client, ref: ref}, nil
}

// noteLazyUse marks the lazy image h as used now, for pe image ls and
// prune --older-than: it sets its index file's mtime, and records a pinned
// reference (a tag has its record already) so that ls can name it. Both
// are best effort: a read-only cache still runs.
func (c *Cache) noteLazyUse(ref Reference, h v1.Hash) {
	now := c.now()
	os.Chtimes(c.s3IndexPath(h), now, now)
	if ref.digest == "" || exists(c.s3RefPath(ref.String())) {
		return
	}
	if os.MkdirAll(filepath.Dir(c.s3RefPath(ref.String())), 0o755) == nil {
		c.writeJSON(c.s3RefPath(ref.String()), s3Ref{Name: ref.String(), Digest: h, Fetched: now.Unix()}, false)
	}
}

// resolveS3Lazy returns the digest ref names: its own, or its tag's, from
// the lazy tag record when the pull policy allows and the cache has the
// index or the image, else from the bucket; and the index's bytes when
// the tag object carried them (checked against the digest).
func (c *Cache) resolveS3Lazy(ctx context.Context, ref Reference, o *pullConfig) (v1.Hash, []byte, error) {
	if ref.digest != "" {
		h, err := v1.NewHash(ref.digest)
		return h, nil, err
	}
	name := ref.String()
	var rec s3Ref
	have := false
	if b, err := readSmall(c.s3RefPath(name)); err == nil && json.Unmarshal(b, &rec) == nil && rec.Name == name {
		have = c.complete(rec.Digest) || exists(c.s3IndexPath(rec.Digest))
	}
	// pe image pull records the tag as Get does: use that record too.
	if !have {
		if r, err := c.readRef(name); err == nil && r != nil {
			if t, ok := r.Platforms[o.platform.String()]; ok && c.complete(t.Digest) {
				rec, have = s3Ref{Name: name, Digest: t.Digest, Fetched: t.Fetched.Unix()}, true
			}
		}
	}
	fresh := have && c.now().Unix()-rec.Fetched < int64(o.TagTTL.Seconds())
	if have && (o.Policy == PullNever || (o.Policy == PullMissing && fresh)) {
		return rec.Digest, nil, nil
	}
	if !have && o.Policy == PullNever {
		return v1.Hash{}, nil, kindErrorf(ErrNotCached, "%s is not in the image cache, and the pull policy is never", ref.Familiar())
	}
	client, err := o.s3Client()
	if err != nil {
		return v1.Hash{}, nil, err
	}
	h, inline, err := resolveS3Tag(ctx, client, ref, o.Log)
	if err != nil {
		if have && o.Policy == PullMissing {
			o.Log.Warn("using the cached image", "reference", ref.Familiar(), "error", err)
			return rec.Digest, nil, nil
		}
		return v1.Hash{}, nil, err
	}
	if err := os.MkdirAll(filepath.Dir(c.s3RefPath(name)), 0o755); err != nil {
		return v1.Hash{}, nil, err
	}
	if err := c.writeJSON(c.s3RefPath(name), s3Ref{Name: name, Digest: h, Fetched: c.now().Unix()}, false); err != nil {
		return v1.Hash{}, nil, err
	}
	return h, inline, nil
}

// s3Index returns the index h from the cache's copy, or the one the tag
// carried (inline, checked against h), or fetches it from ref's bucket and
// checks it against h; it keeps a copy of one it did not have.
func (c *Cache) s3Index(ctx context.Context, ref Reference, h v1.Hash, o *pullConfig, inline []byte) (*blockstore.Index, error) {
	path := c.s3IndexPath(h)
	if b, err := os.ReadFile(path); err == nil {
		if checkDigest(b, h, path) == nil {
			if ix, err := blockstore.DecodeIndex(b); err == nil {
				return ix, nil
			}
		}
		// A damaged copy: fetch it again.
		o.Log.Warn("dropping a damaged copy of an image index", "path", path)
		os.Remove(path)
	}
	bucket, key := ref.s3.bucket, ref.s3.indexKey(h)
	b := inline
	if b == nil {
		client, err := o.s3Client()
		if err != nil {
			return nil, err
		}
		if b, err = fetchS3Index(ctx, client, ref, h); err != nil {
			return nil, err
		}
	}
	ix, err := blockstore.DecodeIndex(b)
	if err != nil {
		return nil, fmt.Errorf("index s3://%s/%s: %w", bucket, key, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	// Not synced: the copy is checked against its digest when read, and a
	// damaged one is fetched again. A sync here is on the run's critical
	// path.
	if err := atomicfile.Write(path, b, atomicfile.Options{Pattern: tmpPrefix + "*", Perm: 0o644}); err != nil {
		return nil, fmt.Errorf("keeping the index of %s: %w", ref.Familiar(), err)
	}
	return ix, nil
}

// lazyBlobHex returns the hex digest of the blob a lazy reader of ix
// fetches chunks from: the packed chunks' when the push stored them (the
// smaller object), else the image's.
func lazyBlobHex(ix *blockstore.Index) string {
	if ix.Packed != nil {
		return strings.TrimPrefix(ix.Packed.Digest, "sha256:")
	}
	return strings.TrimPrefix(ix.Digest, "sha256:")
}

// s3Fetcher is an S3 object as a blockstore.Fetcher: answers retrying
// cannot change (access denied, object gone) are permanent, so a read
// fails at once with the bucket's word.
type s3Fetcher struct{ obj *s3.Object }

func (f s3Fetcher) Fetch(ctx context.Context, off, length int64) ([]byte, error) {
	b, err := f.obj.Fetch(ctx, off, length)
	if err != nil && s3.IsPermanent(err) {
		return nil, blockstore.Permanent(err)
	}
	return b, err
}

// FetchStream is Fetch as the bytes arrive (blockstore.StreamFetcher).
func (f s3Fetcher) FetchStream(ctx context.Context, off, length int64) (io.ReadCloser, error) {
	r, err := f.obj.FetchStream(ctx, off, length)
	if err != nil && s3.IsPermanent(err) {
		return nil, blockstore.Permanent(err)
	}
	return r, err
}

// CheckS3 asks the bucket of the s3:// image ref whether it can serve the
// image now: the tag object (unless ref pins a digest) and the index are
// read with a HEAD or a small GET, and nothing is kept. It is a server's
// readiness check of its s3:// presets (pe serve /healthz): OpenS3 itself
// may answer from the cache without the bucket. The error names the
// object and the bucket's answer. opts.S3, when nil, is set to a client
// from the environment, to be reused by the next call.
func CheckS3(ctx context.Context, ref Reference, opts *PullOptions) error {
	if ref.transport != TransportS3 {
		return fmt.Errorf("%s is not an s3:// reference", ref.Familiar())
	}
	client, err := opts.s3Client()
	if err != nil {
		return err
	}
	var h v1.Hash
	if ref.digest != "" {
		if h, err = v1.NewHash(ref.digest); err != nil {
			return err
		}
	} else {
		if h, err = readS3TagDigest(ctx, client, ref); err != nil {
			return err
		}
	}
	key := ref.s3.indexKey(h)
	if _, err := client.HeadObject(ctx, ref.s3.bucket, key); err != nil {
		return s3Error(err, fmt.Sprintf("reading s3://%s/%s (the index of %s)", ref.s3.bucket, key, ref.Familiar()))
	}
	return nil
}

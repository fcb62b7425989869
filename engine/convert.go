package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pe-project/pe/image"
)

// Converter defaults.
const (
	DefaultMaxConversions = 2
	DefaultPullTimeout    = 5 * time.Minute
)

// ErrConversionsBusy is Converter.Resolve's answer when an image must be
// pulled and converted and all the conversion slots are taken: try again
// later.
var ErrConversionsBusy = errors.New("every image conversion slot is busy")

// ErrPullTimeout is Converter.Resolve's answer when pulling and
// converting an image took longer than Converter.Timeout.
var ErrPullTimeout = errors.New("pulling and converting the image took too long")

// Converter is an ImageSource for a server: images the cache has are
// resolved at once; images it must pull and convert take one of a few
// conversion slots (none free: ErrConversionsBusy at once, never a wait),
// within a deadline. A server resolves with it before it takes a run
// slot, so slow pulls never hold a VM slot, and hands the result to the
// run (RunRequest.Resolved). After each conversion, it evicts the least
// recently used images over CacheMaxSize, never one in use (a run holds
// its image, see image.Lease, in this process or another).
type Converter struct {
	Cache   *image.Cache
	Options image.PullOptions
	// MaxConversions bounds the conversions at once (default
	// DefaultMaxConversions).
	MaxConversions int
	// Timeout bounds each resolution that pulls or converts (default
	// DefaultPullTimeout).
	Timeout time.Duration
	// CacheMaxSize, when positive, is the most the image cache may take
	// on disk; eviction runs after each conversion.
	CacheMaxSize int64
	// Log receives evictions; nil discards.
	Log *slog.Logger
	// ChunkCacheSize bounds the chunk store of lazy images (s3://
	// images read on demand, which need no conversion slot; see
	// CacheSource) when this process opens it first.
	ChunkCacheSize int64

	once     sync.Once
	slots    chan struct{}
	evicting atomic.Bool
	evictWG  sync.WaitGroup
}

func (c *Converter) init() {
	c.once.Do(func() {
		n := c.MaxConversions
		if n <= 0 {
			n = DefaultMaxConversions
		}
		c.slots = make(chan struct{}, n)
		if c.Timeout <= 0 {
			c.Timeout = DefaultPullTimeout
		}
		if c.Log == nil {
			c.Log = slog.New(slog.DiscardHandler)
		}
	})
}

// Resolve implements ImageSource. The image is held (see
// ResolvedImage.Release) until the caller releases it.
func (c *Converter) Resolve(ctx context.Context, ref string) (*ResolvedImage, error) {
	c.init()
	r, err := image.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	if r.Transport() == image.TransportS3 {
		// Not downloaded: no conversion slot, and the index fetch is
		// bounded by the pull timeout.
		dctx, cancel := context.WithTimeout(ctx, c.Timeout)
		defer cancel()
		return resolveS3(dctx, c.Cache, r, c.Options, c.ChunkCacheSize)
	}
	converted := false
	opts := c.Options
	opts.Convert = func(context.Context) (func(), error) {
		select {
		case c.slots <- struct{}{}:
		default:
			return nil, fmt.Errorf("%s must be pulled: %w (%d at once); try again later", r.Familiar(), ErrConversionsBusy, cap(c.slots))
		}
		converted = true
		return func() { <-c.slots }, nil
	}
	dctx, cancel := context.WithTimeoutCause(ctx, c.Timeout, ErrPullTimeout)
	defer cancel()
	img, lease, err := c.Cache.Acquire(dctx, r, opts)
	if converted {
		c.evict()
	}
	if err != nil {
		if ctx.Err() == nil && errors.Is(context.Cause(dctx), ErrPullTimeout) {
			return nil, fmt.Errorf("%s: %w (over %v)", r.Familiar(), ErrPullTimeout, c.Timeout)
		}
		return nil, err
	}
	return resolvedImage(img, lease), nil
}

// evict prunes the cache down to CacheMaxSize in the background, once at
// a time. Prune waits for the cache to be idle (it takes the cache lock
// exclusively); a busy cache is pruned at the next conversion.
func (c *Converter) evict() {
	if c.CacheMaxSize <= 0 || !c.evicting.CompareAndSwap(false, true) {
		return
	}
	c.evictWG.Go(func() {
		defer c.evicting.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rep, err := c.Cache.Prune(ctx, image.PruneOptions{MaxSize: c.CacheMaxSize})
		switch {
		case err != nil:
			c.Log.Warn("image cache eviction", "error", err)
		case len(rep.Deleted) > 0 || rep.Blobs > 0 || len(rep.InUse) > 0:
			c.Log.Info("image cache eviction", "images", len(rep.Deleted), "blobs", rep.Blobs, "bytes", rep.Bytes, "kept_in_use", len(rep.InUse))
		}
	})
}

// Wait waits for an eviction in progress.
func (c *Converter) Wait() { c.evictWG.Wait() }

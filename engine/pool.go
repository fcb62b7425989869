package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// PoolOptions configures a SnapshotPool.
type PoolOptions struct {
	// Dir holds one snapshot directory per image.
	Dir string
	// MemoryMiB and CPUs are the snapshots' machine (0: the defaults):
	// the runs a caller makes from them.
	MemoryMiB, CPUs int
	// Refresh is how often the images are looked up again, to follow a
	// tag to a new image (default 10 minutes).
	Refresh time.Duration
	// Log receives what Keep does (nil: the engine's log).
	Log *slog.Logger
}

// PoolImage is an image a SnapshotPool keeps a snapshot of.
type PoolImage struct {
	// Name is what the pool knows it by (a server's preset name).
	Name string
	// Image is the reference resolved by the engine's Options.Images.
	Image string
}

// SnapshotPool keeps one snapshot per image (pe serve --snapshots), so
// that runs of those images restore a VM instead of booting one: a
// caller sets RunRequest.Snapshot to Snapshot(name). One goroutine (Keep)
// makes and refreshes them: the engine must not make a snapshot directory
// from two goroutines at once. A snapshot of the pool that a run fails to
// restore goes back to the pool, which makes it again, and the run boots
// its image (see Engine.startVM). Until an image's snapshot is ready, its
// runs boot as usual.
type SnapshotPool struct {
	e    *Engine
	opts PoolOptions
	log  *slog.Logger

	mu    sync.Mutex
	snaps map[string]*Snapshot // by name
	// held are the images of the snapshots Keep made last, by name: held
	// in the cache (ResolvedImage.Release), as their VMs attach the very
	// file, and a run whose restore fails boots it.
	held map[string]*ResolvedImage
	kick chan struct{}
}

// NewSnapshotPool returns a pool of this engine's snapshots, empty until
// Keep makes them.
func (e *Engine) NewSnapshotPool(opts PoolOptions) *SnapshotPool {
	if opts.Refresh <= 0 {
		opts.Refresh = 10 * time.Minute
	}
	log := opts.Log
	if log == nil {
		log = e.log
	}
	return &SnapshotPool{e: e, opts: opts, log: log, snaps: map[string]*Snapshot{}, held: map[string]*ResolvedImage{}, kick: make(chan struct{}, 1)}
}

// Keep makes a snapshot of each image, then keeps them fresh until ctx
// is done: every Refresh, and soon after a run found one unusable.
func (p *SnapshotPool) Keep(ctx context.Context, images []PoolImage) {
	defer p.releaseAll()
	for {
		for _, img := range images {
			if !p.keep(ctx, img) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-time.After(p.opts.Refresh):
		}
	}
}

// keep makes or checks the snapshot of one image; it returns false once
// ctx is done.
func (p *SnapshotPool) keep(ctx context.Context, img PoolImage) bool {
	start := time.Now()
	snap, held, err := p.e.ensureSnapshot(ctx, SnapshotRequest{
		Image:     img.Image,
		Dir:       filepath.Join(p.opts.Dir, snapshotDirName(img.Name)),
		MemoryMiB: p.opts.MemoryMiB,
		CPUs:      p.opts.CPUs,
	})
	if ctx.Err() != nil {
		held.release()
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held[img.Name].release()
	delete(p.held, img.Name)
	if err != nil {
		delete(p.snaps, img.Name)
		p.log.Warn("no snapshot for an image: its runs boot", "name", img.Name, "error", err)
		return true
	}
	snap.pool, snap.name = p, img.Name
	p.snaps[img.Name], p.held[img.Name] = snap, held
	p.log.Info("snapshot ready", "name", img.Name, "dir", snap.Dir, "duration", time.Since(start).Round(time.Millisecond))
	return true
}

// releaseAll empties the pool and lets the cache have its images back.
func (p *SnapshotPool) releaseAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, img := range p.held {
		img.release()
		delete(p.held, name)
		delete(p.snaps, name)
	}
}

// Snapshot returns the snapshot of the image name, nil when there is none
// yet (or p is nil).
func (p *SnapshotPool) Snapshot(name string) *Snapshot {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snaps[name]
}

// Ready reports whether every image named has a snapshot.
func (p *SnapshotPool) Ready(names ...string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range names {
		if p.snaps[n] == nil {
			return false
		}
	}
	return true
}

// failed drops a snapshot a restore could not use and asks Keep to make
// it again.
func (p *SnapshotPool) failed(snap *Snapshot) {
	p.mu.Lock()
	if p.snaps[snap.name] == snap {
		delete(p.snaps, snap.name)
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// snapshotDirName is a directory name for an image's name, which may
// hold '/' and ':' (docker.io/library/gcc:14).
func snapshotDirName(name string) string {
	sum := sha256.Sum256([]byte(name))
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, name)
	if len(clean) > 64 {
		clean = clean[:64]
	}
	return clean + "-" + hex.EncodeToString(sum[:4])
}

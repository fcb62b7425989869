package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pe-project/pe/engine"
)

// Snapshots keeps one VM snapshot per preset image (pe serve --snapshots),
// so a run of a preset restores a VM instead of booting one. One goroutine
// (Keep) makes and refreshes them: the engine must not re-create a
// snapshot directory from two goroutines at once. Until a preset's
// snapshot is ready, and whenever a restore fails, its runs boot as usual.
type Snapshots struct {
	// Engine makes the snapshots; the server's Runner must be the same
	// engine, as a snapshot is tied to its kernel, init and VMM.
	Engine *engine.Engine
	// Dir holds one snapshot directory per preset.
	Dir string
	// MemoryMiB is the VMs' memory: the server's Config.MemoryMiB.
	MemoryMiB int
	// Refresh is how often the presets are looked up again, to follow a
	// tag to a new image (default 10 minutes).
	Refresh time.Duration
	// Log receives what Keep does (nil: discarded).
	Log *slog.Logger

	mu    sync.Mutex
	snaps map[string]*engine.Snapshot // by preset name
	kick  chan struct{}
}

// Keep makes a snapshot of each preset, then keeps them fresh until ctx
// is done: every Refresh, and soon after a run found one unusable.
func (s *Snapshots) Keep(ctx context.Context, presets []Preset) {
	log := s.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	refresh := s.Refresh
	if refresh <= 0 {
		refresh = 10 * time.Minute
	}
	s.mu.Lock()
	if s.kick == nil {
		s.kick = make(chan struct{}, 1)
	}
	kick := s.kick
	s.mu.Unlock()
	for {
		for _, p := range presets {
			source := p.Source
			if source == "" {
				source = p.Name
			}
			start := time.Now()
			snap, err := s.Engine.EnsureSnapshot(ctx, engine.SnapshotRequest{
				Image:     source,
				Dir:       filepath.Join(s.Dir, snapshotDirName(p.Name)),
				MemoryMiB: s.MemoryMiB,
			})
			if ctx.Err() != nil {
				return
			}
			s.mu.Lock()
			if s.snaps == nil {
				s.snaps = map[string]*engine.Snapshot{}
			}
			if err != nil {
				delete(s.snaps, p.Name)
				log.Warn("no snapshot for a preset: its runs boot", "preset", p.Name, "error", err)
			} else {
				s.snaps[p.Name] = snap
				log.Info("snapshot ready", "preset", p.Name, "dir", snap.Dir, "duration", time.Since(start).Round(time.Millisecond))
			}
			s.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-time.After(refresh):
		}
	}
}

// snapshot returns the preset's snapshot, nil when there is none yet.
func (s *Snapshots) snapshot(preset string) *engine.Snapshot {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snaps[preset]
}

// failed drops a snapshot a restore could not use and asks Keep to make
// it again.
func (s *Snapshots) failed(preset string, snap *engine.Snapshot) {
	s.mu.Lock()
	if s.snaps[preset] == snap {
		delete(s.snaps, preset)
	}
	kick := s.kick
	s.mu.Unlock()
	if kick != nil {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
}

// Ready reports whether every preset named has a snapshot.
func (s *Snapshots) Ready(presets ...string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range presets {
		if s.snaps[p] == nil {
			return false
		}
	}
	return true
}

// snapshotDirName is a directory name for a preset name, which may hold
// '/' and ':' (docker.io/library/gcc:14).
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

// unusableSnapshot reports whether a run failed because its snapshot could
// not be restored, in which case the server boots instead.
func unusableSnapshot(err error) bool {
	return errors.Is(err, engine.ErrSnapshotMismatch) || errors.Is(err, engine.ErrBadSnapshot) || errors.Is(err, engine.ErrNoSnapshots)
}

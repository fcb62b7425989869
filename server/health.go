package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/internal/units"
)

// A worker behind a load balancer (HAProxy's "option httpchk GET /healthz")
// answers ready only when a run sent to it can run. What that takes is
// checked in the background (Server.Start) and kept; a probe reads the
// kept state, so that it is cheap and never waits for a slow bucket:
//
//   - the start-up preparation (Config.Prepare: the engine's boot snapshot,
//     or its choice of VMM) is done;
//   - every preset resolves, and the bucket of each s3:// preset answers
//     for it (Config.CheckS3), checked again every HealthInterval;
//   - the file systems of Config.DiskDirs have more free space than
//     Config.MinFreeDisk, checked every HealthInterval;
//   - the server is not draining (Serve's context is done).

// DefaultHealthInterval is how often the readiness checks run again.
const DefaultHealthInterval = 10 * time.Second

// checkTimeout bounds one check of a preset's bucket.
const checkTimeout = 10 * time.Second

// Preparation is work a worker does once before it is ready, in the
// background: making the engine's boot snapshot, say.
type Preparation struct {
	// Pending says what is not done yet, for /healthz ("boot snapshot
	// not made yet").
	Pending string
	// Run does the work; an error is shown by /healthz and Run is tried
	// again after HealthInterval.
	Run func(ctx context.Context) error
}

// EnginePreparation is a worker's preparation of eng: its boot snapshot
// for VMs of memMiB, made now so that no run waits for it, or, without
// boot snapshots (or when one cannot be made: the runs boot then), its
// choice of VMM and acceleration. The worker is ready once a run can
// start.
func EnginePreparation(eng *engine.Engine, bootSnapshot bool, memMiB int, warn func(msg string, args ...any)) *Preparation {
	choose := func(ctx context.Context) error {
		if _, err := eng.Choice(ctx); err != nil {
			return fmt.Errorf("no VMM to run VMs with: %w", err)
		}
		return nil
	}
	if !bootSnapshot {
		return &Preparation{Pending: "VMM not chosen yet", Run: choose}
	}
	return &Preparation{Pending: "boot snapshot not made yet", Run: func(ctx context.Context) error {
		err := eng.EnsureBootSnapshot(ctx, memMiB, 0)
		if err == nil || ctx.Err() != nil {
			return err
		}
		// Runs boot instead of restoring it: slower, but they run.
		if warn != nil {
			warn("no boot snapshot: runs boot", "error", err)
		}
		return choose(ctx)
	}}
}

// DiskLimit is the free space a worker keeps on the file systems of its
// cache and temporary directories: Bytes, or Percent of the file system
// (whichever is given; both zero: no limit).
type DiskLimit struct {
	Bytes   int64
	Percent float64
}

// ParseDiskLimit parses a size ("1GiB", "500MB", "0") or a percentage
// ("5%") of free disk space.
func ParseDiskLimit(s string) (DiskLimit, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f < 0 || f > 100 || f != f {
			return DiskLimit{}, fmt.Errorf("free disk space %q: want a percentage from 0%% to 100%%", s)
		}
		return DiskLimit{Percent: f}, nil
	}
	n, err := units.ParseSize(s)
	if err != nil {
		return DiskLimit{}, fmt.Errorf("free disk space %q: want a size such as 1GiB, or a percentage such as 5%%", s)
	}
	return DiskLimit{Bytes: n}, nil
}

// String writes l as ParseDiskLimit reads it.
func (l DiskLimit) String() string {
	if l.Percent > 0 {
		return strconv.FormatFloat(l.Percent, 'f', -1, 64) + "%"
	}
	return humanSize(l.Bytes)
}

// humanSize writes n bytes in binary units ("1 GiB", "200 MiB").
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string("KMGTPE"[i]) + "iB"
}

// health is the kept state of the readiness checks.
type health struct {
	mu       sync.Mutex
	started  bool
	prepared bool
	// prepareErr is the last preparation's failure.
	prepareErr error
	// presets holds each preset's last check: nil is fine; missing: not
	// checked yet.
	presets map[string]error
	// disk is the last disk check's complaints, one per file system.
	disk []string
}

// HealthReport is GET /healthz?json (or ?verbose): whether the worker is ready, and why
// not.
type HealthReport struct {
	Ready    bool     `json:"ready"`
	Draining bool     `json:"draining"`
	Reasons  []string `json:"reasons,omitempty"`
}

// report returns the worker's readiness now.
func (s *Server) report() HealthReport {
	h := &s.health
	rep := HealthReport{Draining: s.draining.Load()}
	if rep.Draining {
		rep.Reasons = append(rep.Reasons, "draining")
	}
	h.mu.Lock()
	switch {
	case !h.started:
		rep.Reasons = append(rep.Reasons, "not ready: the readiness checks have not started")
	case s.cfg.Prepare != nil && !h.prepared && h.prepareErr != nil:
		rep.Reasons = append(rep.Reasons, fmt.Sprintf("not ready: %s: %v", s.cfg.Prepare.Pending, h.prepareErr))
	case s.cfg.Prepare != nil && !h.prepared:
		rep.Reasons = append(rep.Reasons, "not ready: "+s.cfg.Prepare.Pending)
	}
	if h.started {
		for _, p := range s.cfg.Presets {
			err, checked := h.presets[p.Name]
			switch {
			case !checked:
				rep.Reasons = append(rep.Reasons, fmt.Sprintf("not ready: preset %s: not checked yet", p.Name))
			case err != nil:
				rep.Reasons = append(rep.Reasons, fmt.Sprintf("not ready: preset %s: %s", p.Name, oneLine(err.Error())))
			}
		}
		rep.Reasons = append(rep.Reasons, h.disk...)
	}
	h.mu.Unlock()
	rep.Ready = len(rep.Reasons) == 0
	return rep
}

// oneLine keeps a message on one line of the /healthz body.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// handleHealth is GET and HEAD /healthz: 200 "ready", or 503 with one line
// per reason ("not ready: ...", "draining"). ?json (or ?verbose) answers
// HealthReport.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	rep := s.report()
	w.Header().Set("Cache-Control", "no-store")
	status := http.StatusOK
	if !rep.Ready {
		status = http.StatusServiceUnavailable
	}
	q := r.URL.Query()
	if _, ok := q["json"]; ok || q.Has("verbose") {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(rep)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	if rep.Ready {
		fmt.Fprintln(w, "ready")
		return
	}
	for _, why := range rep.Reasons {
		fmt.Fprintln(w, why)
	}
}

// Start starts the readiness checks, until ctx is done: the preparation,
// the presets' and the disks'. Serve calls it; a caller that serves the
// handler itself calls it once first. Later calls do nothing.
func (s *Server) Start(ctx context.Context) {
	h := &s.health
	h.mu.Lock()
	if h.started {
		h.mu.Unlock()
		return
	}
	h.started = true
	h.presets = map[string]error{}
	h.mu.Unlock()
	s.checkDisks()
	if s.cfg.Prepare != nil {
		go s.prepare(ctx)
	}
	for _, p := range s.cfg.Presets {
		go s.watchPreset(ctx, p)
	}
	go func() {
		t := time.NewTicker(s.cfg.HealthInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.checkDisks()
			}
		}
	}()
}

// prepare runs the preparation until it succeeds.
func (s *Server) prepare(ctx context.Context) {
	for {
		start := time.Now()
		err := s.cfg.Prepare.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		s.health.mu.Lock()
		s.health.prepared, s.health.prepareErr = err == nil, err
		s.health.mu.Unlock()
		if err == nil {
			s.cfg.Log.Info("prepared", "took", time.Since(start).Round(time.Millisecond))
			return
		}
		s.cfg.Log.Warn("not ready: "+s.cfg.Prepare.Pending, "error", err)
		if !sleepCtx(ctx, s.cfg.HealthInterval) {
			return
		}
	}
}

// watchPreset checks that p resolves, every HealthInterval, and warms its
// image after its first resolution.
func (s *Server) watchPreset(ctx context.Context, p Preset) {
	src := p.Source
	if src == "" {
		src = p.Name
	}
	ref, perr := image.ParseReference(src)
	s3 := perr == nil && ref.Transport() == image.TransportS3
	warmed := false
	for {
		err := s.checkPreset(ctx, p.Name, src, s3, &warmed)
		if ctx.Err() != nil {
			return
		}
		s.health.mu.Lock()
		prev, checked := s.health.presets[p.Name]
		s.health.presets[p.Name] = err
		s.health.mu.Unlock()
		switch {
		case err != nil && (!checked || prev == nil || prev.Error() != err.Error()):
			s.cfg.Log.Warn("not ready: a preset does not resolve", "preset", p.Name, "error", err)
		case err == nil && checked && prev != nil:
			s.cfg.Log.Info("a preset resolves again", "preset", p.Name)
		}
		if !sleepCtx(ctx, s.cfg.HealthInterval) {
			return
		}
	}
}

// checkPreset checks one preset: its bucket answers (s3:// presets), and
// it resolves. An s3:// preset is resolved (its index fetched into the
// cache) until the first success, then only its bucket is asked: the
// resolution would answer from the cache. The first resolution starts the
// image's warming.
func (s *Server) checkPreset(ctx context.Context, name, src string, s3 bool, warmed *bool) error {
	if s3 && s.cfg.CheckS3 != nil {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		err := s.cfg.CheckS3(cctx, src)
		cancel()
		if err != nil {
			return err
		}
	}
	if s.cfg.Images == nil || (s3 && *warmed) {
		return nil
	}
	img, err := s.cfg.Images.Resolve(ctx, src)
	if err != nil {
		return err
	}
	release := func() {
		if img.Release != nil {
			img.Release()
		}
	}
	if *warmed || s.cfg.Warm == nil {
		*warmed = true
		release()
		return nil
	}
	*warmed = true
	go func() {
		defer release()
		start := time.Now()
		res := s.cfg.Warm(ctx, img)
		if res.Fetched+res.Cached+res.Failed == 0 {
			return // nothing to warm: the image is local
		}
		log := s.cfg.Log.Info
		if res.Err != nil && ctx.Err() == nil {
			log = s.cfg.Log.Warn
		}
		log("warmed a preset's image", "preset", name, "fetched", res.Fetched, "cached", res.Cached, "failed", res.Failed,
			"took", time.Since(start).Round(time.Millisecond), "error", res.Err)
	}()
	return nil
}

// S3Checker returns a Config.CheckS3 that asks the bucket with opts's
// S3 client (one from the environment when opts has none, made once).
func S3Checker(opts image.PullOptions) func(ctx context.Context, ref string) error {
	var mu sync.Mutex
	return func(ctx context.Context, ref string) error {
		r, err := image.ParseReference(ref)
		if err != nil {
			return err
		}
		mu.Lock()
		if opts.S3 == nil {
			// CheckS3 sets it: later calls reuse it.
			err = image.CheckS3(ctx, r, &opts)
			mu.Unlock()
			return err
		}
		o := opts
		mu.Unlock()
		return image.CheckS3(ctx, r, &o)
	}
}

// checkDisks checks the free space of the file systems of DiskDirs.
func (s *Server) checkDisks() {
	var out []string
	lim := s.cfg.MinFreeDisk
	if lim.Bytes > 0 || lim.Percent > 0 {
		seen := map[uint64]bool{}
		for _, d := range s.cfg.DiskDirs {
			free, total, dev, err := diskSpace(d)
			if err != nil {
				out = append(out, fmt.Sprintf("not ready: disk %s: %v", d, err))
				continue
			}
			if seen[dev] {
				continue
			}
			seen[dev] = true
			need := lim.Bytes
			if lim.Percent > 0 {
				need = int64(float64(total) * lim.Percent / 100)
			}
			if free < need {
				out = append(out, fmt.Sprintf("not ready: disk %s has %s free, below --min-free-disk %s", d, humanSize(free), lim))
			}
		}
	}
	s.health.mu.Lock()
	changed := strings.Join(out, "\n") != strings.Join(s.health.disk, "\n")
	s.health.disk = out
	s.health.mu.Unlock()
	if changed {
		if len(out) > 0 {
			s.cfg.Log.Warn("not ready: disk space", "reasons", out)
		} else {
			s.cfg.Log.Info("disk space is back above the limit")
		}
	}
}

// diskSpace returns the bytes free to unprivileged users and the size of
// the file system holding dir (the nearest existing parent of it), and
// the file system's device.
func diskSpace(dir string) (free, total int64, dev uint64, err error) {
	for {
		var st syscall.Stat_t
		if err = syscall.Stat(dir, &st); err == nil {
			dev = st.Dev
			break
		}
		if !errors.Is(err, os.ErrNotExist) || dir == "/" || dir == "." || dir == "" {
			return 0, 0, 0, err
		}
		dir = parentDir(dir)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return 0, 0, 0, err
	}
	return int64(fs.Bavail) * fs.Bsize, int64(fs.Blocks) * fs.Bsize, dev, nil
}

func parentDir(p string) string {
	p = strings.TrimRight(p, "/")
	i := strings.LastIndexByte(p, '/')
	switch {
	case i > 0:
		return p[:i]
	case i == 0:
		return "/"
	}
	return "."
}

// sleepCtx sleeps for d, or until ctx is done (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

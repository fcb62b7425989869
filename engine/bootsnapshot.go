package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pe-project/pe/vmm"
)

// A boot snapshot is a snapshot of a VM booted for no image: the kernel
// booted, the guest init's modules loaded, its disks found, nothing
// mounted. Unlike an image's snapshot (CreateSnapshot), one serves every
// image: a run restores it with its own image disk, so that it skips the
// boot, which under emulation is most of a run. The engine keeps one per
// machine (memory, vCPUs) and environment (kernel, guest init, VMM and its
// version, acceleration, pe build) in its cache, made at the first run
// that needs it (see Options.BootSnapshots).

// BootSnapshotImageSize is the size of the image disk a boot snapshot's
// VM booted with: a sparse file, whose size the guest kernel keeps. Runs
// restored from it attach images of up to this size.
const BootSnapshotImageSize = 1 << 40

// bootSnapshotsDir is the boot snapshots' directory in the cache.
const bootSnapshotsDir = "boot-snapshots"

// BootSnapshotsDir is where an engine with this CacheDir keeps its boot
// snapshots, one directory each.
func BootSnapshotsDir(cacheDir string) string { return filepath.Join(cacheDir, bootSnapshotsDir) }

// A boot snapshot that could not be made is not tried again for
// bootSnapshotRetry: the file dir+bootSnapshotFailedSuffix says why.
const (
	bootSnapshotRetry        = time.Hour
	bootSnapshotFailedSuffix = ".failed"
)

// errBootSnapshotFailed is the error of a boot snapshot that failed lately.
var errBootSnapshotFailed = errors.New("making the boot snapshot failed")

// bootSnapshotUnused is how long a boot snapshot nobody restored stays in
// the cache (another pe build or kernel made it, or another machine
// size), and bootSnapshotsKept how many besides the one in use stay at
// most.
const (
	bootSnapshotUnused = 2 * 24 * time.Hour
	bootSnapshotsKept  = 3
)

// bootSnapshot returns the boot snapshot for a VM of memMiB and cpus (0:
// the defaults), making it first if the cache has none that fits; it
// fails with ErrNoSnapshots when the VMM cannot restore VMs. Runs of one
// engine wait for one another's making; separate processes may make it
// twice, and the second keeps the first's.
func (e *Engine) bootSnapshot(ctx context.Context, memMiB, cpus int) (*Snapshot, error) {
	memMiB, cpus = machineOrDefaults(memMiB, cpus)
	env, err := e.snapshotEnv(ctx)
	if err != nil {
		return nil, err
	}
	// The directory's name covers what the manifest is checked against,
	// so that builds, kernels and machine sizes do not replace each
	// other's snapshots.
	// Under KVM the guest runs on the host's CPU model, which a restore
	// needs again: a cache shared between hosts keeps one per model.
	cpu := ""
	if env.choice.Accel == vmm.AccelKVM {
		cpu = hostCPU()
	}
	key := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s\x00%s",
		PEBuild(), e.kernel.ID(), e.bootKernel, filepath.Base(env.initramfs), env.choice.VMM, env.vmmVersion, env.choice.Accel, cpu))
	parent := BootSnapshotsDir(e.opts.CacheDir)
	dir := filepath.Join(parent, fmt.Sprintf("%dm-%dc-%s", memMiB, cpus, hex.EncodeToString(key[:8])))

	// OpenSnapshot, against the env at hand rather than a new one.
	open := func() (*Snapshot, error) {
		m, err := ReadSnapshotManifest(dir)
		if err != nil {
			return nil, err
		}
		return e.checkSnapshot(dir, m, env)
	}

	e.bootSnapMu.Lock()
	defer e.bootSnapMu.Unlock()
	snap, err := open()
	if err == nil && snap.Manifest.Boot && snap.Manifest.MemoryMiB == memMiB && snap.Manifest.CPUs == cpus {
		// Its mtime says when it was last used: see pruneBootSnapshots.
		now := time.Now()
		os.Chtimes(dir, now, now)
		return snap, nil
	}
	force := true
	switch {
	case err == nil:
		e.log.Info("boot snapshot for another machine: making it again", "dir", dir)
	case errors.Is(err, ErrSnapshotMismatch), errors.Is(err, ErrBadSnapshot):
		if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
			force = false
			e.log.Info("making the boot snapshot (once for this pe, kernel and machine size)", "dir", dir)
		} else {
			e.log.Info("boot snapshot unusable: making it again", "dir", dir, "reason", err)
		}
	default:
		return nil, err
	}
	// A boot that failed a moment ago would fail again, and cost every
	// run its time: the failure is remembered for a while.
	failed := dir + bootSnapshotFailedSuffix
	if fi, err := os.Stat(failed); err == nil && time.Since(fi.ModTime()) < bootSnapshotRetry {
		why, _ := os.ReadFile(failed)
		return nil, fmt.Errorf("%w at %s: %s (retried after %v, or once %s is removed)", errBootSnapshotFailed, fi.ModTime().Format(time.DateTime), bytes.TrimSpace(why), bootSnapshotRetry, failed)
	}
	pruneBootSnapshots(parent, dir, e.log)
	if e.opts.Notice != nil {
		e.opts.Notice("making the boot snapshot, once for this pe, kernel and machine size: later runs restore it instead of booting")
	}
	// Made within a run, the boot gets the time a run's VM would, not the
	// minutes pe snapshot create allows.
	limit := 2 * e.grace(env.choice.Accel)
	if _, err := e.createSnapshot(ctx, nil, dir, SnapshotRequest{Dir: dir, Force: force, MemoryMiB: memMiB, CPUs: cpus}, limit); err != nil {
		// Another pe made it in the meantime: use that one.
		if !errors.Is(err, ErrSnapshotExists) {
			if ctx.Err() == nil {
				os.MkdirAll(parent, 0o755)
				os.WriteFile(failed, []byte(err.Error()+"\n"), 0o644)
			}
			return nil, err
		}
	}
	os.Remove(failed)
	return open()
}

// dropBootSnapshot removes a boot snapshot that could not be restored
// (on another host CPU under KVM, say) and leaves a failure note, so that
// runs boot for a while rather than make and fail it again at once.
// Runs restoring it meanwhile keep their open files.
func (e *Engine) dropBootSnapshot(snap *Snapshot, why error) {
	e.bootSnapMu.Lock()
	defer e.bootSnapMu.Unlock()
	os.RemoveAll(snap.Dir)
	os.WriteFile(snap.Dir+bootSnapshotFailedSuffix, []byte("restoring it: "+why.Error()+"\n"), 0o644)
}

// pruneBootSnapshots removes the boot snapshots in parent, other than
// keep, that no run restored for bootSnapshotUnused or that are not among
// the bootSnapshotsKept last used, and failure notes as old.
func pruneBootSnapshots(parent, keep string, log *slog.Logger) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	type used struct {
		path string
		at   time.Time
	}
	var others []used
	for _, ent := range entries {
		p := filepath.Join(parent, ent.Name())
		if p == keep || p == keep+bootSnapshotFailedSuffix || strings.Contains(ent.Name(), ".tmp-") {
			continue // temporary directories are their maker's (sweepOwnedDirs)
		}
		if fi, err := ent.Info(); err == nil {
			others = append(others, used{p, fi.ModTime()})
		}
	}
	// Last used first: each build of pe or of its guest init makes its
	// own, and a developer makes many in a day.
	slices.SortFunc(others, func(a, b used) int { return b.at.Compare(a.at) })
	kept := 0
	for _, o := range others {
		note := strings.HasSuffix(o.path, bootSnapshotFailedSuffix)
		if time.Since(o.at) < bootSnapshotUnused && (note || kept < bootSnapshotsKept) {
			if !note {
				kept++
			}
			continue
		}
		log.Info("removing an unused boot snapshot", "path", o.path, "last_used", o.at)
		os.RemoveAll(o.path)
	}
}

// EnsureBootSnapshot makes the boot snapshot for a VM of memMiB and cpus
// (0: the defaults) unless the cache has it, so that no run waits for it:
// a server calls it at start-up. It fails with ErrNoSnapshots when the VMM
// cannot restore VMs.
func (e *Engine) EnsureBootSnapshot(ctx context.Context, memMiB, cpus int) error {
	_, err := e.bootSnapshot(ctx, memMiB, cpus)
	return err
}

// machineOrDefaults replaces zero memory and vCPUs with the defaults.
func machineOrDefaults(memMiB, cpus int) (int, int) {
	if memMiB <= 0 {
		memMiB = DefaultMemoryMiB
	}
	if cpus <= 0 {
		cpus = DefaultCPUs
	}
	return memMiB, cpus
}

// tryBootSnapshot returns the boot snapshot for a run's machine (0: the
// defaults), or nil when the run must boot: the VMM cannot restore VMs,
// or the snapshot could not be made, which is logged and costs the run
// nothing but the attempt.
func (e *Engine) tryBootSnapshot(ctx context.Context, memMiB, cpus int) *Snapshot {
	snap, err := e.bootSnapshot(ctx, memMiB, cpus)
	switch {
	case err == nil, errors.Is(err, ErrNoSnapshots):
	case errors.Is(err, errBootSnapshotFailed):
		e.log.Info("no boot snapshot: booting", "error", err)
	case ctx.Err() == nil:
		e.log.Warn("no boot snapshot: booting", "error", err)
	}
	if err != nil {
		return nil
	}
	return snap
}

// hostCPU identifies the host's CPU model and features: /proc/cpuinfo's
// first processor's "model name" and "flags" ("" if unreadable).
func hostCPU() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	first, _, _ := bytes.Cut(b, []byte("\n\n"))
	var id []string
	for line := range strings.Lines(string(first)) {
		if k, v, ok := strings.Cut(line, ":"); ok {
			switch strings.TrimSpace(k) {
			case "model name", "flags":
				id = append(id, strings.TrimSpace(v))
			}
		}
	}
	return strings.Join(id, "\n")
}

// fitsBootSnapshot reports whether img's file fits the image disk a boot
// snapshot's guest knows.
func fitsBootSnapshot(img *ResolvedImage) bool {
	if img.Lazy != nil {
		return img.Lazy.Size() <= BootSnapshotImageSize
	}
	fi, err := os.Stat(img.EROFSPath)
	return err == nil && fi.Size() <= BootSnapshotImageSize
}

package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore/fusedisk"
	"github.com/pe-project/pe/blockstore/nbd"
	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/guest/initramfs"
	"github.com/pe-project/pe/vmm"
)

// Defaults of a run.
const (
	DefaultTimeout   = 10 * time.Second
	DefaultMemoryMiB = vmm.DefaultMemoryMiB
	DefaultCPUs      = vmm.DefaultCPUs
)

// Grace periods: how long past its time limit a VM may run before pe kills
// it, whatever the guest does. The guest needs the time to boot (seconds
// under TCG on a loaded host), collect the output and power off.
const (
	GraceKVM = 5 * time.Second
	GraceTCG = 30 * time.Second
)

// Options configures an Engine.
type Options struct {
	// Images resolves the IMAGE of a run. Required.
	Images ImageSource
	// Backend, when set, is the VMM used, with Accel (which must then be
	// kvm or tcg); else one is chosen from VMM and Accel (see Choose).
	Backend vmm.Backend
	// VMM is auto, qemu or cloud-hypervisor; Accel auto, kvm or tcg.
	VMM, Accel string
	// Backends are the VMMs to choose from (nil: backends.All()).
	Backends []vmm.BackendInfo
	// Kernel is the guest kernel directory ("" finds it, see
	// vmm.FindKernel); KernelInfo, when set, is used as is.
	Kernel     string
	KernelInfo *vmm.Kernel
	// InitBinary is the guest init ("" finds it, see FindInit).
	InitBinary string
	// NoPVH boots the kernel image as it is; by default pe boots the
	// uncompressed kernel inside it through its PVH entry point (see
	// vmm.BootImage), which skips the decompressor at every boot.
	NoPVH bool
	// MaxConcurrent bounds the VMs running at once (0: the number of CPUs).
	MaxConcurrent int
	// TempDir is where each run's work directory goes ("" for os.TempDir()).
	TempDir string
	// CacheDir keeps initramfs files and the KVM probe's verdict ("" for
	// vmm.CacheDir()).
	CacheDir string
	// Grace overrides the grace period (0: GraceKVM or GraceTCG).
	Grace time.Duration
	// Limits bound what runs may ask for and what the guest may send
	// back; zero fields take guest.DefaultLimits.
	Limits guest.Limits
	// Log receives debug messages; nil discards them.
	Log *slog.Logger
	// BootSnapshots makes runs restore a boot snapshot (kept in CacheDir,
	// made by the first run that needs it) instead of booting, where the
	// VMM can: the run then starts where the guest init waits for a
	// request, which skips the kernel's boot. Runs with Debug still boot,
	// so that the console shows the boot.
	BootSnapshots bool
	// Notice, when set, is told what makes a run take longer than usual
	// for once (making the boot snapshot); a CLI shows it on a terminal.
	Notice func(msg string)
	// LazyFUSE gives lazy images to QEMU as a file on a FUSE mount, as
	// cloud-hypervisor (which has no NBD client) always gets them,
	// instead of over NBD: the cloud-hypervisor path, tested where
	// cloud-hypervisor cannot run.
	LazyFUSE bool
	// YieldCores keeps pe's own work during a run (serving and fetching
	// the lazy disk, streaming, waiting) from taking cores from the VM's
	// vCPUs: while a run's VM is up, this process's Go scheduler is
	// limited (runtime.GOMAXPROCS) to the machine's cores minus the VM's
	// vCPUs, at least one, and once the VMM has started pe's threads run
	// 10 nicer than it. The image's preparation before (pull, conversion)
	// keeps every core at full priority. Process-wide and, without
	// privilege, not undone: for a process that runs one VM and ends
	// (pe run), not pe serve.
	YieldCores bool
}

// Engine runs programs in micro-VMs. It is safe for concurrent use; at most
// MaxConcurrent VMs run at once, the other runs wait their turn.
type Engine struct {
	opts   Options
	log    *slog.Logger
	kernel *vmm.Kernel
	// bootKernel is the kernel image the VMs boot.
	bootKernel string
	init       string
	sem        chan struct{}

	chooseMu sync.Mutex
	choice   *Choice

	// bootSnapMu serialises finding and making the boot snapshot.
	bootSnapMu sync.Mutex

	// nbd serves the lazy images' disks (see startLazyDisk), made at the
	// first run of one; lazyDisks counts the exports being served.
	nbdMu     sync.Mutex
	nbd       *nbd.Server
	lazyDisks atomic.Int64
}

// New returns an engine. It finds the kernel and the guest init now (the
// GuestOnly part of Inspect), so that a missing one is reported before any
// run; the VMM is chosen (and KVM probed) at the first run, or by calling
// Choice.
func New(opts Options) (*Engine, error) {
	if opts.Images == nil {
		return nil, errors.New("engine: no image source")
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = runtime.NumCPU()
	}
	if opts.CacheDir == "" {
		opts.CacheDir = vmm.CacheDir()
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Backend != nil && opts.Accel != vmm.AccelKVM && opts.Accel != vmm.AccelTCG {
		return nil, fmt.Errorf("engine: a given backend needs Accel kvm or tcg, not %q", opts.Accel)
	}
	host := Inspect(context.Background(), InspectOptions{
		Kernel: opts.Kernel, KernelInfo: opts.KernelInfo, InitBinary: opts.InitBinary, NoPVH: opts.NoPVH,
		CacheDir: opts.CacheDir, Log: opts.Log, GuestOnly: true,
	})
	if err := host.Err(); err != nil {
		return nil, err
	}
	e := &Engine{opts: opts, log: opts.Log, sem: make(chan struct{}, opts.MaxConcurrent)}
	e.kernel, e.bootKernel, e.init = host.Kernel, host.KernelImage, host.InitBinary
	sweepRunDirs(opts.TempDir, e.log)
	return e, nil
}

// Run directories: TempDir/pe-run-*, holding the file "owner" with the PID
// of the pe that made it.
const (
	runDirPrefix = "pe-run-"
	runDirOwner  = "owner"
)

// sweepRunDirs removes the run directories whose pe is gone: a pe killed
// with SIGKILL cannot remove its own (its VMM dies with it, see
// vmm.StartProcess). A directory without an owner file is left for an
// hour, in case its pe is about to write it.
func sweepRunDirs(tempDir string, log *slog.Logger) {
	if tempDir == "" {
		tempDir = os.TempDir()
	}
	sweepOwnedDirs(filepath.Join(tempDir, runDirPrefix+"*"), log)
}

// sweepOwnedDirs removes the directories matching pattern whose owner
// file names a process that is gone, and those without one that are over
// an hour old.
func sweepOwnedDirs(pattern string, log *slog.Logger) {
	dirs, _ := filepath.Glob(pattern)
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, runDirOwner))
		if err != nil {
			if fi, serr := os.Stat(d); serr != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 && processAlive(pid) {
			continue
		}
		log.Debug("removing the directory of a pe that is gone", "dir", d)
		detachMounts(d, log)
		os.RemoveAll(d)
	}
}

// detachMounts detaches the mounts under dir (a killed pe's FUSE mount
// of a lazy image), which would keep RemoveAll from removing it.
func detachMounts(dir string, log *slog.Logger) {
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, p := range fusedisk.MountsUnder(info, dir) {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil {
			log.Warn("detaching a mount left by a pe that is gone", "mount", p, "error", err)
		}
	}
}

// writeOwner records this process as dir's owner, for sweepOwnedDirs.
func writeOwner(dir string) error {
	return os.WriteFile(filepath.Join(dir, runDirOwner), []byte(strconv.Itoa(os.Getpid())), 0o600)
}

// processAlive reports whether a process with this PID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Kernel returns the guest kernel the engine boots.
func (e *Engine) Kernel() *vmm.Kernel { return e.kernel }

// KernelImage returns the kernel image file the VMs boot: the PVH kernel
// extracted from Kernel().Vmlinuz, or that file itself.
func (e *Engine) KernelImage() string { return e.bootKernel }

// Choice returns the VMM and acceleration runs use, choosing them (and
// probing KVM) the first time. A choice made while ctx was being canceled
// (an interrupted probe) is used but not kept.
func (e *Engine) Choice(ctx context.Context) (*Choice, error) {
	e.chooseMu.Lock()
	defer e.chooseMu.Unlock()
	if e.choice != nil {
		return e.choice, nil
	}
	if e.opts.Backend != nil {
		e.choice = &Choice{Backend: e.opts.Backend, VMM: e.opts.Backend.Name(), Accel: e.opts.Accel, Reason: "given by the caller"}
		return e.choice, nil
	}
	c, err := Choose(ctx, ChooseOptions{
		VMM: e.opts.VMM, Accel: e.opts.Accel, Kernel: e.kernel, Backends: e.opts.Backends, CacheDir: e.opts.CacheDir, Log: e.log,
	})
	if err != nil {
		return nil, err
	}
	e.log.Debug("VMM chosen", "vmm", c.VMM, "accel", c.Accel, "reason", c.Reason)
	if ctx.Err() == nil {
		e.choice = c
	}
	return c, nil
}

// RunRequest is one run.
type RunRequest struct {
	// Image is the image reference, resolved by Options.Images.
	Image string
	// Overrides change the image's config (entrypoint, cmd, env, working
	// directory, user).
	Overrides
	// Stdin is the program's standard input, read whole before the VM
	// starts; nil gives it /dev/null (or Live.Stdin, streamed).
	Stdin io.Reader
	// Live, when set, streams the run while it goes: output as it is
	// written, stdin, signals (see Live). The result is the same.
	Live *Live
	// InputDir is copied to /run/pe/input ("" for none).
	InputDir string
	// OutputDir receives /run/pe/output ("" to drop it). It must not
	// exist or be empty (guest.CheckOutputDir): a run never changes what
	// was there. On an error extracting the outputs, it is left as it was.
	OutputDir string
	// Timeout is the program's wall-time limit (0: DefaultTimeout).
	Timeout time.Duration
	// MemoryMiB is the VM's memory (0: DefaultMemoryMiB); CPUs its vCPUs
	// (0: DefaultCPUs).
	MemoryMiB int
	CPUs      int
	// MaxOutput caps stdout and stderr each, and the output directory
	// (0: the engine's limit, 1 MiB by default).
	MaxOutput int64
	// Debug turns on the guest init's verbose log; Console, when set,
	// receives the guest console as it is written.
	Debug   bool
	Console io.Writer
	// Resolved, when set, is the image already resolved (by a caller
	// that pulls and converts images outside its run slots, see
	// Converter): Image is then not resolved again. The caller keeps
	// Resolved.Release.
	Resolved *ResolvedImage
	// Snapshot, when set, runs the program in a VM restored from this
	// snapshot (see OpenSnapshot) instead of a VM booted for Image: Image
	// is ignored, the snapshot's image is used, MemoryMiB and CPUs must be
	// zero or the snapshot's, and Debug is the snapshot's. A snapshot of a
	// SnapshotPool that fails to restore is handed back to its pool and
	// the run boots the snapshot's image instead; any other fails the run.
	Snapshot *Snapshot
	// SnapshotDir, when set (and Snapshot is not), is a snapshot
	// directory the run opens (OpenSnapshot) and runs from, as Snapshot
	// says; see ForSnapshot for the engine's options.
	SnapshotDir string
}

// initramfs returns the initramfs for the VMM of choice, building it
// into the cache the first time.
func (e *Engine) initramfs(choice *Choice) (string, error) {
	modules := guestModules(e.opts.Backends, choice.VMM)
	return initramfs.Path(filepath.Join(e.opts.CacheDir, "initramfs"), e.kernel.ID(), e.init, e.kernel.ModulesDir, modules)
}

// newWorkDir makes a run directory, owned by this process.
func (e *Engine) newWorkDir() (string, error) {
	work, err := os.MkdirTemp(e.opts.TempDir, runDirPrefix)
	if err != nil {
		return "", fmt.Errorf("run directory: %w", err)
	}
	// The owner's PID lets a later pe remove this directory should this
	// one be killed with SIGKILL (see sweepRunDirs).
	if err := writeOwner(work); err != nil {
		os.RemoveAll(work)
		return "", fmt.Errorf("run directory: %w", err)
	}
	return work, nil
}

// waitVM waits for m to exit, or kills it once resultReady is closed: the
// guest has written and flushed its result. It returns Wait's error, nil
// for a VM stopped that way.
func waitVM(ctx context.Context, m vmm.Machine, resultReady <-chan struct{}) error {
	exited := make(chan error, 1)
	go func() { exited <- m.Wait(ctx) }()
	select {
	case err := <-exited:
		return err
	case <-resultReady:
		m.Kill()
		<-exited
		return nil
	}
}

// checkIOFileFits checks that a run's I/O file fits the I/O disk a
// snapshot's guest knows: its kernel learnt the disk's size (size) before
// the snapshot and reads no further. The file is not grown to that size:
// QEMU refuses (EIO) every request past the end of a raw file, so the
// file's own size, the run's inputs and output areas, bounds what the
// guest can make pe write on the host's disk, whatever size it believes
// the disk has.
func checkIOFileFits(path string, size int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() > size {
		return fmt.Errorf("the run's I/O file (inputs, stdin and output areas) needs %d bytes; a snapshot's VMs have an I/O disk of %d", fi.Size(), size)
	}
	return nil
}

// process opens the image's root file system (for /etc/passwd) and merges
// its config with the overrides. A lazy image's reads end with ctx; a lazy
// image whose index carries its user database is not read.
func (e *Engine) process(ctx context.Context, img *ResolvedImage, o Overrides) (*Process, error) {
	var cfg *v1.Config
	if img.Config != nil {
		cfg = &img.Config.Config
	}
	if img.Lazy != nil && img.UserFiles != nil {
		return MergeConfig(cfg, o, img.UserFiles)
	}
	if img.Lazy != nil {
		rootfs, err := erofs.OpenSize(ctxReader{ctx, img.Lazy}, img.Lazy.Size())
		if err != nil {
			return nil, fmt.Errorf("reading image %s: %w", img.Reference, err)
		}
		return MergeConfig(cfg, o, rootfs)
	}
	f, err := os.Open(img.EROFSPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rootfs, err := erofs.Open(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", img.EROFSPath, err)
	}
	return MergeConfig(cfg, o, rootfs)
}

// limits are the guest limits of every run: the options', defaults filled in.
func (e *Engine) limits() guest.Limits { return e.opts.Limits.WithDefaults() }

// grace is how long past the time limit a VM may run.
func (e *Engine) grace(accel string) time.Duration {
	if e.opts.Grace > 0 {
		return e.opts.Grace
	}
	if accel == vmm.AccelKVM {
		return GraceKVM
	}
	return GraceTCG
}

// timer measures the phases of a run.
type timer struct {
	start, last time.Time
	d           map[string]time.Duration
}

func newTimer() *timer {
	now := time.Now()
	return &timer{start: now, last: now, d: map[string]time.Duration{}}
}

func (t *timer) lap(name string) {
	now := time.Now()
	t.d[name] = now.Sub(t.last)
	t.last = now
}

// VMError reports a VM that ended without a usable result.
type VMError struct {
	VMM, Accel string
	// Err is why the result could not be read (it wraps guest.ErrNoResult
	// or guest.ErrBadResponse).
	Err error
	// Exit is the VMM's exit error, nil when it exited normally.
	Exit error
	// Killed says pe killed the VM when it ran past Limit.
	Killed bool
	Limit  time.Duration
	// Console is the end of the guest console.
	Console []byte
}

func (e *VMError) Error() string {
	var msg string
	switch {
	case e.Killed:
		msg = fmt.Sprintf("the VM (%s, %s) did not finish within %v and was killed", e.VMM, e.Accel, e.Limit)
	case e.Exit != nil:
		msg = fmt.Sprintf("the VM (%s, %s) failed: %v", e.VMM, e.Accel, e.Exit)
	default:
		msg = fmt.Sprintf("the VM (%s, %s) stopped", e.VMM, e.Accel)
	}
	// ReadResult's error names the I/O file, which is gone: keep the cause.
	cause := e.Err
	if inner := errors.Unwrap(cause); inner != nil {
		cause = inner
	}
	msg += "; " + cause.Error()
	if tail := e.ConsoleTail(3); tail != "" {
		msg += "; console: " + strings.Join(strings.Split(tail, "\n"), " | ")
	} else {
		msg += "; the console is empty"
	}
	return msg
}

func (e *VMError) Unwrap() error { return e.Err }

// ConsoleTail returns the last n non-empty lines of the console.
func (e *VMError) ConsoleTail(n int) string { return consoleTail(e.Console, n) }

// consoleTail returns the last n non-empty lines of b, trimmed.
func consoleTail(b []byte, n int) string {
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

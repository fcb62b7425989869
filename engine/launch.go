package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/vmm"
)

// A run's VM comes up one of three ways, each a launch: booted (coldBoot),
// restored from the boot snapshot (bootSnapshotRestore) or restored from
// an image's snapshot (imageSnapshotRestore). Engine.plan picks the launch
// once per run; Engine.startVM starts it and, should a restore fail, gives
// the snapshot up and boots instead: the one place a run falls back.

// Launch kinds, as RunResult.Launch names them.
const (
	LaunchBoot         = "boot"
	LaunchBootSnapshot = "boot-snapshot"
	LaunchSnapshot     = "snapshot"
)

// launch is how a run's VM comes up.
type launch interface {
	// kind is one of the Launch* names.
	kind() string
	// start brings up the machine vm describes, calling vm.prepare
	// before the guest runs. A restore that could not bring it up fails
	// with a *restoreError.
	start(ctx context.Context, vm *machine) (vmm.Machine, error)
	// giveUp drops what made start fail with err, so that later runs do
	// not try it again at once, and returns the launch the run tries
	// instead: nil when the run fails with err.
	giveUp(err error) launch
}

// restoreError is a restore that could not bring a VM up: the snapshot
// does not fit the run, or the VMM failed to restore it. Its text and
// chain are the cause's.
type restoreError struct{ err error }

func (e *restoreError) Error() string { return e.err.Error() }
func (e *restoreError) Unwrap() error { return e.err }

// machine is what a run's VM is made of; vmConfig turns it into the
// VMM's configuration.
type machine struct {
	choice    *Choice
	initramfs string
	// imagePath is the image disk (vda, read-only), ioPath the I/O disk
	// (vdb); work the run directory.
	imagePath, ioPath, work string
	// nbd, when set, is the image disk instead of imagePath: the VMM's
	// end of a connection to export of the engine's NBD server.
	nbd          *os.File
	export       string
	memMiB, cpus int
	debug        bool
	// console receives the guest console (the run's, and the engine's
	// watch for the result-ready line).
	console io.Writer
	// stream, when set, is the VMM's end of the data channel (see
	// vmm.Config.Stream).
	stream *os.File
	// onStep receives a restore's steps.
	onStep func(step string, took time.Duration)
	// prepare makes the machine ready for its guest (the run's image
	// resolved, the I/O file written) while the VMM starts: a boot
	// calls it before the VMM starts, a restore once the snapshot's
	// state is loaded, before the guest resumes. Only its first call
	// does the work; later ones return its error.
	prepare func(ctx context.Context) error
}

// vmConfig is the VMM configuration of vm, booted or restored: the
// kernel, the initramfs, the image disk (vda, read-only) and the I/O disk
// (vdb).
func (e *Engine) vmConfig(vm *machine) *vmm.Config {
	// The engine stops the VM on the guest's result-ready line (waitVM).
	cmdline := "quiet panic=-1 " + guest.CmdlineImage + "=/dev/vda " + guest.CmdlineIO + "=/dev/vdb " + guest.CmdlineHostStop + "=1"
	if vm.debug {
		cmdline += " " + guest.CmdlineDebug + "=1"
	}
	imageDisk := vmm.Disk{Path: vm.imagePath, ReadOnly: true}
	if vm.nbd != nil {
		imageDisk = vmm.Disk{NBD: vm.nbd, Export: vm.export, ReadOnly: true}
	}
	return &vmm.Config{
		Kernel:    e.bootKernel,
		Initramfs: vm.initramfs,
		Cmdline:   cmdline,
		Disks:     []vmm.Disk{imageDisk, {Path: vm.ioPath}},
		CPUs:      vm.cpus,
		MemoryMiB: vm.memMiB,
		Accel:     vm.choice.Accel,
		WorkDir:   vm.work,
		Console:   vm.console,
		Stream:    vm.stream,
		Log:       e.log,
	}
}

// coldBoot boots the VM.
type coldBoot struct{ e *Engine }

func (b *coldBoot) kind() string        { return LaunchBoot }
func (b *coldBoot) giveUp(error) launch { return nil }

func (b *coldBoot) start(ctx context.Context, vm *machine) (vmm.Machine, error) {
	if err := vm.prepare(ctx); err != nil {
		return nil, err
	}
	return vm.choice.Backend.Start(ctx, b.e.vmConfig(vm))
}

// lateIOVMM is the VMM whose restores take the run's I/O file once the
// snapshot's state is loaded (vmm.Config.BeforeResume): QEMU, which reads
// the file's size then. The others get it before they start.
const lateIOVMM = "qemu"

// restore is what both snapshot launches share: a snapshot, checked
// against the run, restored with the run's disks.
type restore struct {
	e    *Engine
	snap *Snapshot
}

func (r *restore) start(ctx context.Context, vm *machine) (vmm.Machine, error) {
	if err := r.fits(vm); err != nil {
		return nil, &restoreError{err}
	}
	sb, err := snapshotter(vm.choice)
	if err != nil {
		return nil, &restoreError{err}
	}
	cfg := r.e.vmConfig(vm)
	cfg.Cmdline, cfg.OnStep = r.snap.Manifest.Cmdline, vm.onStep
	// The run's own failures (its image, its request) end the run; an
	// I/O file larger than the snapshot's guest knows is the snapshot's.
	var prepErr error
	prepare := func(ctx context.Context) error {
		if prepErr = vm.prepare(ctx); prepErr != nil {
			return prepErr
		}
		if err := checkIOFileFits(vm.ioPath, r.snap.Manifest.IOSize); err != nil {
			prepErr = &restoreError{err}
			return prepErr
		}
		return nil
	}
	if vm.choice.VMM == lateIOVMM {
		cfg.BeforeResume = prepare
	} else if err := prepare(ctx); err != nil {
		return nil, err
	}
	m, err := sb.RestoreSnapshot(ctx, cfg, r.snap.Dir, []byte(guest.SnapshotWake))
	if err != nil {
		if prepErr != nil {
			return nil, prepErr
		}
		return nil, &restoreError{err}
	}
	return m, nil
}

// fits checks that the snapshot's VM can take the run's machine: the
// same VMM, acceleration and initramfs. (That its guest knows an I/O disk
// large enough is checked once the I/O file is written.)
func (r *restore) fits(vm *machine) error {
	m := &r.snap.Manifest
	if vm.choice.VMM != m.VMM || vm.choice.Accel != m.Accel {
		return fmt.Errorf("%w: %s was made with %s (%s), this run uses %s (%s)", ErrSnapshotMismatch, r.snap.Dir, m.VMM, m.Accel, vm.choice.VMM, vm.choice.Accel)
	}
	if filepath.Base(vm.initramfs) != m.Initramfs {
		return fmt.Errorf("%w: %s was made with another guest init or kernel modules", ErrSnapshotMismatch, r.snap.Dir)
	}
	return nil
}

// bootSnapshotRestore restores the boot snapshot, with the run's image.
type bootSnapshotRestore struct{ restore }

func (b *bootSnapshotRestore) kind() string { return LaunchBootSnapshot }

// giveUp removes the boot snapshot and leaves a failure note: the run
// boots, and a run after the note expires makes a new snapshot.
func (b *bootSnapshotRestore) giveUp(err error) launch {
	b.e.dropBootSnapshot(b.snap, err)
	return &coldBoot{e: b.e}
}

// imageSnapshotRestore restores an image's snapshot (RunRequest.Snapshot,
// or a SnapshotPool's).
type imageSnapshotRestore struct{ restore }

func (s *imageSnapshotRestore) kind() string { return LaunchSnapshot }

// giveUp hands a pool's snapshot back to its pool, which makes it again,
// and boots the snapshot's image; a snapshot the caller opened fails the
// run, as the caller asked for that snapshot.
func (s *imageSnapshotRestore) giveUp(error) launch {
	if s.snap.pool == nil {
		return nil
	}
	s.snap.pool.failed(s.snap)
	return &coldBoot{e: s.e}
}

// startVM starts the run's VM the way l says. When a restore fails, and
// the launch has something to fall back on, it gives the snapshot up and
// boots instead, on the same disks: the guest never woke, so the I/O file
// is as the run wrote it. It returns the launch that brought the VM up.
func (e *Engine) startVM(ctx context.Context, l launch, vm *runVM) (vmm.Machine, launch, error) {
	m, err := e.startOnce(ctx, l, vm)
	var rerr *restoreError
	if err == nil || ctx.Err() != nil || !errors.As(err, &rerr) {
		return m, l, err
	}
	next := l.giveUp(err)
	if next == nil {
		return nil, l, err
	}
	e.log.Warn("restoring the snapshot failed: booting", "launch", l.kind(), "error", err)
	m, err = e.startOnce(ctx, next, vm)
	return m, next, err
}

// startOnce starts vm the way l says, with its lazy image attached anew
// if it has one: a VMM that failed to start took its connection with it.
func (e *Engine) startOnce(ctx context.Context, l launch, vm *runVM) (vmm.Machine, error) {
	if vm.lazy == nil {
		return l.start(ctx, &vm.machine)
	}
	detach, err := vm.lazy.attach(&vm.machine)
	if err != nil {
		return nil, err
	}
	defer detach()
	return l.start(ctx, &vm.machine)
}

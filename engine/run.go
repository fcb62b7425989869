package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/vmm"
)

// Run runs one program in a new VM and returns its result. The error is
// non-nil only when pe itself failed (image not found, VM died without a
// result, ...): a program that fails or times out is a result. Whatever
// happens, the VM is gone and its files removed when Run returns. A run
// from a snapshot (RunRequest.Snapshot) restores the snapshot's VM instead
// of booting one; the rest of the run is the same.
//
// A run is: plan (the image, the program, how the VM comes up), I/O file,
// start, wait, collect.
func (e *Engine) Run(ctx context.Context, r *RunRequest) (*RunResult, error) {
	t := newTimer()
	req, err := e.checkRequest(r)
	if err != nil {
		return nil, err
	}
	p, err := e.plan(ctx, req, t)
	if err != nil {
		return nil, err
	}
	// The cache keeps the image until the VM is gone.
	defer p.release()
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.sem }()
	t.lap("queue")
	if e.opts.YieldCores {
		_, cpus := machineOrDefaults(req.MemoryMiB, req.CPUs)
		defer yieldCores(cpus)()
	}
	vm, err := e.writeIOFile(p, req, t)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(vm.work)
	if img := p.launch.image(); img.Lazy != nil {
		// Stopped after the VM is killed (defers run last first).
		if vm.lazy, err = e.startLazyDisk(ctx, img, p.choice.VMM, vm.work, p.prefetch); err != nil {
			return nil, err
		}
		defer e.stopLazyDisk(vm.lazy)
	}
	var live *liveStream
	if req.Live != nil {
		if live, vm.stream, err = e.startLive(req.Live); err != nil {
			return nil, err
		}
		defer live.stop()
	}
	m, l, err := e.startVM(ctx, p.launch, vm)
	if vm.stream != nil {
		// QEMU has its copy: pe's end reads EOF once QEMU is gone.
		vm.stream.Close()
		vm.stream = nil
	}
	if err != nil {
		return nil, e.lazyError(vm, err)
	}
	defer m.Kill()
	if e.opts.YieldCores {
		lowerPriority() // after the VMM started: it keeps pe's priority
	}
	t.lap("vm_start")
	x, err := e.wait(ctx, m, vm, req.Timeout)
	if err != nil {
		return nil, e.lazyError(vm, err)
	}
	t.lap("vm")
	// The VM is gone: what it sent on the data channel is delivered.
	live.drain(ctx)
	if vm.lazy != nil {
		// The guest saw I/O errors reading its image: whatever it made
		// of them, the result is not the program's.
		// Reads still waiting when the VM was killed at its limit are
		// why it ran out of time.
		stalled := vm.lazy.r.pending.Load()
		vm.lazy.stalled = stalled
		m.Kill()
		e.stopLazyDisk(vm.lazy)
		if err := vm.lazy.r.readError(l.image().Reference); err != nil {
			return nil, err
		}
		if x.killed && stalled > 0 {
			return nil, &ImageReadError{Reference: l.image().Reference, Waiting: stalled,
				Err: fmt.Errorf("reads were still waiting for the storage when the VM was killed at its limit (%v)", x.limit)}
		}
	}
	res, err := e.collect(req, l, vm, m, x, t)
	if res != nil {
		live.complete(res)
	}
	if res != nil && vm.lazy != nil {
		res.ImageBlocks = vm.lazy.runStats()
		if res.TimedOut && vm.lazy.stalled > 0 {
			// The program waited for the storage until its time ran out.
			return nil, &ImageReadError{Reference: l.image().Reference, Waiting: vm.lazy.stalled,
				Err: fmt.Errorf("reads were still waiting for the storage when the program ran past its time limit (%v)", req.Timeout)}
		}
	}
	return res, err
}

// lazyError returns the error of a run with a lazy image that failed with
// err: the image's read error when there was one, which is the cause.
func (e *Engine) lazyError(vm *runVM, err error) error {
	if vm.lazy == nil {
		return err
	}
	if rerr := vm.lazy.r.readError(vm.lazy.img.Reference); rerr != nil {
		return fmt.Errorf("%w (%v)", rerr, err)
	}
	return err
}

// checkRequest returns r with its defaults, or why it cannot run.
func (e *Engine) checkRequest(r *RunRequest) (*RunRequest, error) {
	req := *r
	if req.Timeout <= 0 {
		req.Timeout = DefaultTimeout
	}
	if lim := e.limits(); req.MaxOutput < 0 || req.MaxOutput > lim.MaxOutput {
		return nil, fmt.Errorf("max output %d: want 1 to %d bytes", req.MaxOutput, lim.MaxOutput)
	}
	if l := req.Live; l != nil {
		if l.Stdin != nil && req.Stdin != nil {
			return nil, errors.New("run: standard input both whole (Stdin) and streamed (Live.Stdin)")
		}
		if l.TTY != nil {
			if l.TTY.Rows == 0 || l.TTY.Cols == 0 {
				return nil, fmt.Errorf("run: terminal size %dx%d", l.TTY.Rows, l.TTY.Cols)
			}
		}
	}
	// Checked again when the outputs come back; now, so that a run that
	// could not deliver them does not start.
	if req.OutputDir != "" {
		if err := guest.CheckOutputDir(req.OutputDir); err != nil {
			return nil, fmt.Errorf("output: %w", err)
		}
	}
	return &req, nil
}

// runPlan is what plan decides for a run.
type runPlan struct {
	launch launch
	// proc is the program, the image's config merged with the request.
	proc   *Process
	choice *Choice
	// release gives the image back to the cache.
	release func()
	// prefetch is a lazy image's prefetch, started once the image is
	// resolved: the engine's own reads of it (the config's user) and the
	// VM's start overlap with it.
	prefetch *imagePrefetch
}

// startPrefetch starts the prefetch of the run's lazy image img, by the
// trace of the command o and the image's config name, and has release
// end it too (the run may fail before its lazy disk takes it over).
func (p *runPlan) startPrefetch(ctx context.Context, e *Engine, img *ResolvedImage, o Overrides) {
	var cfg v1.Config
	if img.Config != nil {
		cfg = img.Config.Config
	}
	key := ""
	if argv, cwd, err := mergeCommand(&cfg, o); err == nil {
		key = traceKey(argv, cwd)
	}
	p.prefetch = e.startPrefetch(ctx, img, key)
	release := p.release
	p.release = func() {
		p.prefetch.stop()
		release()
	}
}

// plan resolves the run's image, merges its config with the request,
// chooses the VMM and decides how the VM comes up: restored from the
// request's snapshot, restored from the boot snapshot (made first if
// need be), or booted. It sets req's machine to the snapshot's.
func (e *Engine) plan(ctx context.Context, req *RunRequest, t *timer) (_ *runPlan, err error) {
	p := &runPlan{release: func() {}}
	defer func() {
		if err != nil {
			p.release()
		}
	}()
	snap, err := e.requestSnapshot(ctx, req)
	if err != nil {
		return nil, err
	}
	var img *ResolvedImage
	switch {
	case snap != nil:
		if img, err = e.snapshotImage(ctx, snap); err != nil {
			return nil, err
		}
		p.release = img.release
	case req.Resolved != nil:
		img = req.Resolved
	default:
		if img, err = e.opts.Images.Resolve(ctx, req.Image); err != nil {
			return nil, err
		}
		p.release = img.release
	}
	if img.Lazy != nil {
		p.startPrefetch(ctx, e, img, req.Overrides)
	}
	if p.proc, err = e.process(ctx, img, req.Overrides); err != nil {
		return nil, fmt.Errorf("image %s: %w", img.Reference, err)
	}
	t.lap("image")
	if p.choice, err = e.Choice(ctx); err != nil {
		return nil, err
	}
	switch {
	case snap != nil:
		p.launch = &imageSnapshotRestore{restore{e: e, snap: snap, img: img}}
	case e.opts.BootSnapshots && !req.Debug && fitsBootSnapshot(img):
		if boot := e.tryBootSnapshot(ctx, req.MemoryMiB, req.CPUs); boot != nil {
			p.launch = &bootSnapshotRestore{restore{e: e, snap: boot, img: img}}
			break
		}
		fallthrough
	default:
		p.launch = &coldBoot{e: e, img: img}
	}
	t.lap("choose_vmm")
	return p, nil
}

// requestSnapshot returns the snapshot the request asks to run from (nil
// for none), and gives req the snapshot's machine, which the request may
// only repeat.
func (e *Engine) requestSnapshot(ctx context.Context, req *RunRequest) (*Snapshot, error) {
	snap := req.Snapshot
	if snap == nil && req.SnapshotDir != "" {
		var err error
		if snap, err = e.OpenSnapshot(ctx, req.SnapshotDir); err != nil {
			return nil, err
		}
	}
	if snap == nil {
		return nil, nil
	}
	m := &snap.Manifest
	for _, c := range []struct {
		what       string
		asked, has int
	}{{"MiB of memory", req.MemoryMiB, m.MemoryMiB}, {"vCPUs", req.CPUs, m.CPUs}} {
		if c.asked != 0 && c.asked != c.has {
			return nil, fmt.Errorf("%w: the run asks for %d %s, the snapshot %s has %d", ErrSnapshotMismatch, c.asked, c.what, snap.Dir, c.has)
		}
	}
	if m.Boot {
		return nil, fmt.Errorf("%w: %s is a boot snapshot, which pe restores by itself for runs of any image", ErrSnapshotMismatch, snap.Dir)
	}
	req.MemoryMiB, req.CPUs = m.MemoryMiB, m.CPUs
	return snap, nil
}

// runVM is a run's machine with its request to the guest.
type runVM struct {
	machine
	// lazy serves a lazy image's disk, nil for an image file.
	lazy *lazyDisk
	greq *guest.Request
	// ready sees the guest's result-ready line on the console.
	ready *lineWatch
}

// writeIOFile makes the run directory and the I/O file with the guest's
// request, and describes the run's machine.
func (e *Engine) writeIOFile(p *runPlan, req *RunRequest, t *timer) (*runVM, error) {
	initramfs, err := e.initramfs(p.choice)
	if err != nil {
		return nil, err
	}
	t.lap("initramfs")
	work, err := e.newWorkDir()
	if err != nil {
		return nil, err
	}
	ioPath := filepath.Join(work, "io.img")
	proc := p.proc
	greq := &guest.Request{
		Argv: proc.Argv, Env: proc.Env, Cwd: proc.Cwd,
		UID: proc.UID, GID: proc.GID, Groups: proc.Groups,
		Timeout:   req.Timeout,
		MaxOutput: req.MaxOutput,
		Time:      time.Now(),
		Seed:      make([]byte, guest.SeedSize),
		Nonce:     rand.Text(),
		Stream:    streamRequest(req.Live),
	}
	rand.Read(greq.Seed)
	if err := guest.WriteIOFile(ioPath, greq, req.Stdin, req.InputDir, e.limits()); err != nil {
		os.RemoveAll(work)
		return nil, err
	}
	// Once the guest says its result is on the I/O disk, the VM has
	// nothing more to give: stop it rather than wait for its power-off.
	// Only the line with the run's nonce counts, which the program cannot
	// know: a line it forged cannot end the run early.
	ready := newLineWatch(req.Console, guest.ResultReadyLine(greq.Nonce))
	vm := &runVM{greq: greq, ready: ready, machine: machine{
		choice: p.choice, initramfs: initramfs,
		imagePath: p.launch.image().EROFSPath, ioPath: ioPath, work: work,
		memMiB: req.MemoryMiB, cpus: req.CPUs, debug: req.Debug, console: ready,
		onStep: func(step string, took time.Duration) { t.d["vm_start/"+step] = took },
	}}
	t.lap("io_file")
	return vm, nil
}

// vmExit is how a run's VM ended.
type vmExit struct {
	// err is the VMM's exit error.
	err error
	// killed says pe killed it at limit.
	killed bool
	limit  time.Duration
}

// wait waits for the VM to stop, at most the run's timeout and the grace
// period; it fails only when ctx is done.
func (e *Engine) wait(ctx context.Context, m vmm.Machine, vm *runVM, timeout time.Duration) (vmExit, error) {
	x := vmExit{limit: timeout + e.grace(vm.choice.Accel)}
	wctx, cancel := context.WithTimeout(ctx, x.limit)
	x.err = waitVM(wctx, m, vm.ready.seen)
	expired := wctx.Err() != nil
	cancel()
	if x.err != nil && expired {
		x.killed = true
		m.Kill()
		if ctx.Err() != nil {
			return x, ctx.Err()
		}
	}
	return x, nil
}

// collect reads the guest's result from the I/O file and extracts the
// output files.
func (e *Engine) collect(req *RunRequest, l launch, vm *runVM, m vmm.Machine, x vmExit, t *timer) (*RunResult, error) {
	choice := vm.choice
	resp, err := guest.ReadResult(vm.ioPath, e.limits())
	if err == nil && resp.Result.Nonce != vm.greq.Nonce {
		// Not the init's result for this request.
		err = fmt.Errorf("%s: %w", vm.ioPath, fmt.Errorf("%w: the result does not carry this run's nonce", guest.ErrBadResponse))
	}
	if err != nil {
		return nil, &VMError{
			VMM: choice.VMM, Accel: choice.Accel, Err: err, Exit: x.err,
			Killed: x.killed, Limit: x.limit, Console: m.ConsoleLog(),
		}
	}
	img := l.image()
	res := &RunResult{
		Result:  resp.Result,
		Stdout:  resp.Stdout,
		Stderr:  resp.Stderr,
		Image:   ImageInfo{Reference: img.Reference, Digest: img.Digest, Converted: img.Converted},
		VMM:     choice.VMM,
		Accel:   choice.Accel,
		Launch:  l.kind(),
		Console: m.ConsoleLog(),
	}
	if x.killed && !res.TimedOut {
		// The guest wrote a result but did not power off in time.
		e.log.Warn("the VM did not power off by itself; killed", "limit", x.limit)
	}
	if req.OutputDir != "" {
		if err := resp.ExtractOutputs(req.OutputDir); err != nil {
			return res, fmt.Errorf("output directory %s: %w", req.OutputDir, err)
		}
	}
	t.lap("result")
	res.Durations = t.d
	for k, us := range resp.Result.Timings {
		res.Durations["guest_"+k] = time.Duration(us) * time.Microsecond
	}
	res.Durations["total"] = time.Since(t.start)
	return res, nil
}

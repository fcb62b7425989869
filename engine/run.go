package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
)

// Run runs one program in a new VM and returns its result. The error is
// non-nil only when pe itself failed (image not found, VM died without a
// result, ...): a program that fails or times out is a result. Whatever
// happens, the VM is gone and its files removed when Run returns. A run
// from a snapshot (RunRequest.Snapshot) restores the snapshot's VM instead
// of booting one; the rest of the run is the same.
//
// A run is: plan (the image, the program, how the VM comes up), start
// (the I/O file written while the VMM starts), wait, collect. An s3://
// image is resolved while the VM starts (see resolvesLate).
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
	vm, err := e.newRunVM(p, req, t)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(vm.work)
	if p.late != nil || p.img.Lazy != nil {
		// Stopped after the VM is killed (defers run last first).
		if vm.lazy, err = e.startLazyDisk(ctx, req.Image, p.img, p.choice.VMM, vm.work, p.prefetch); err != nil {
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
		if err := vm.lazy.r.readError(p.img.Reference); err != nil {
			return nil, err
		}
		if x.killed && stalled > 0 {
			return nil, &ImageReadError{Reference: p.img.Reference, Waiting: stalled,
				Err: fmt.Errorf("reads were still waiting for the storage when the VM was killed at its limit (%v)", x.limit)}
		}
	}
	res, err := e.collect(req, p.img, l, vm, m, x, t)
	if res != nil {
		live.complete(res)
	}
	if res != nil && vm.lazy != nil {
		res.ImageBlocks = vm.lazy.runStats()
		if res.TimedOut && vm.lazy.stalled > 0 {
			// The program waited for the storage until its time ran out.
			return nil, &ImageReadError{Reference: p.img.Reference, Waiting: vm.lazy.stalled,
				Err: fmt.Errorf("reads were still waiting for the storage when the program ran past its time limit (%v)", req.Timeout)}
		}
	}
	return res, err
}

// lazyError returns the error of a run with a lazy image that failed with
// err: the image's read error when there was one, which is the cause.
func (e *Engine) lazyError(vm *runVM, err error) error {
	if vm.lazy == nil || vm.lazy.img == nil {
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
	choice *Choice
	// imagePlan is the run's image and program; zero until late has
	// resolved, when there is a late.
	imagePlan
	// late, when set, is the run's image being resolved while the VM
	// starts: the VM's prepare takes it over.
	late *lateImage
	// release gives the image back to the cache.
	release func()
}

// imagePlan is a run's image and what is made of it before the guest
// runs.
type imagePlan struct {
	img *ResolvedImage
	// proc is the program, the image's config merged with the request.
	proc *Process
	// prefetch is a lazy image's prefetch, started once the image is
	// resolved: the engine's own reads of it (the config's user) and the
	// VM's start overlap with it.
	prefetch *imagePrefetch
}

// planImage starts the prefetch of img when it is lazy, by the trace of
// the command o and the image's config name, and merges the image's
// config with o. release, returned with or without an error, ends the
// prefetch and gives the image back.
func (e *Engine) planImage(ctx context.Context, img *ResolvedImage, o Overrides) (ip imagePlan, release func(), err error) {
	ip.img = img
	release = img.release
	if img.Lazy != nil {
		var cfg v1.Config
		if img.Config != nil {
			cfg = img.Config.Config
		}
		key := ""
		if argv, cwd, err := mergeCommand(&cfg, o); err == nil {
			key = traceKey(argv, cwd)
		}
		pf := e.startPrefetch(ctx, img, key)
		ip.prefetch = pf
		release = func() {
			pf.stop()
			img.release()
		}
	}
	if ip.proc, err = e.process(ctx, img, o); err != nil {
		return ip, release, fmt.Errorf("image %s: %w", img.Reference, err)
	}
	return ip, release, nil
}

// lateImage is a run's image resolved (and planned) in the background
// while the run's VM starts.
type lateImage struct {
	done    chan struct{}
	plan    imagePlan
	err     error
	release func()
	// took is how long resolving and planning took.
	took time.Duration
}

// resolvesLate says whether the run's image may be resolved while its VM
// starts: an s3:// image, whose resolving fetches its index (a round
// trip to the bucket) and no more, run by a VMM that reads the image
// over NBD, where the engine serves the disk before it knows the image.
// A registry image is not, as a pull may take minutes: it is pulled
// before the run takes a VM slot.
func (e *Engine) resolvesLate(req *RunRequest, choice *Choice) bool {
	if req.Snapshot != nil || req.SnapshotDir != "" || req.Resolved != nil || e.opts.Images == nil {
		return false
	}
	if choice.VMM != nbdVMM || e.opts.LazyFUSE {
		return false
	}
	r, err := image.ParseReference(req.Image)
	return err == nil && r.Transport() == image.TransportS3
}

// resolveLate starts resolving and planning ref's image in the
// background.
func (e *Engine) resolveLate(ctx context.Context, ref string, o Overrides) *lateImage {
	l := &lateImage{done: make(chan struct{}), release: func() {}}
	go func() {
		defer close(l.done)
		start := time.Now()
		img, err := e.opts.Images.Resolve(ctx, ref)
		if err != nil {
			l.err = err
			return
		}
		l.plan, l.release, l.err = e.planImage(ctx, img, o)
		l.took = time.Since(start)
	}()
	return l
}

// wait returns the image once resolved.
func (l *lateImage) wait(ctx context.Context) (imagePlan, error) {
	select {
	case <-l.done:
		return l.plan, l.err
	case <-ctx.Done():
		return imagePlan{}, ctx.Err()
	}
}

// plan resolves the run's image, merges its config with the request,
// chooses the VMM and decides how the VM comes up: restored from the
// request's snapshot, restored from the boot snapshot (made first if
// need be), or booted. It sets req's machine to the snapshot's. An image
// that resolvesLate is only started resolving.
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
	if p.choice, err = e.Choice(ctx); err != nil {
		return nil, err
	}
	t.lap("choose_vmm")
	var img *ResolvedImage
	switch {
	case snap != nil:
		if img, err = e.snapshotImage(ctx, snap); err != nil {
			return nil, err
		}
	case req.Resolved != nil:
		img = req.Resolved
	case e.resolvesLate(req, p.choice):
		l := e.resolveLate(ctx, req.Image, req.Overrides)
		p.late = l
		p.release = func() {
			<-l.done
			l.release()
		}
	default:
		if img, err = e.opts.Images.Resolve(ctx, req.Image); err != nil {
			return nil, err
		}
	}
	if img != nil {
		ip, release, err := e.planImage(ctx, img, req.Overrides)
		if img == req.Resolved {
			// The caller's image: only the prefetch is the run's to end.
			release = ip.prefetch.stop
		}
		p.release = release
		if err != nil {
			return nil, err
		}
		p.imagePlan = ip
		t.lap("image")
	}
	switch {
	case snap != nil:
		p.launch = &imageSnapshotRestore{restore{e: e, snap: snap}}
	case e.opts.BootSnapshots && !req.Debug && (p.late != nil || fitsBootSnapshot(img)):
		if boot := e.tryBootSnapshot(ctx, req.MemoryMiB, req.CPUs); boot != nil {
			p.launch = &bootSnapshotRestore{restore{e: e, snap: boot}}
			break
		}
		fallthrough
	default:
		p.launch = &coldBoot{e: e}
	}
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
	// greq is the request to the guest: its nonce from the start, the
	// rest once prepare has written it.
	greq *guest.Request
	// ready sees the guest's result-ready line on the console.
	ready *lineWatch
}

// newRunVM makes the run directory and an empty I/O file, which the VMM
// opens as it starts, and describes the run's machine. Its prepare
// writes the request into the I/O file, once the run's image is there.
func (e *Engine) newRunVM(p *runPlan, req *RunRequest, t *timer) (*runVM, error) {
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
	if err := os.WriteFile(ioPath, nil, 0o600); err != nil {
		os.RemoveAll(work)
		return nil, fmt.Errorf("write I/O file: %w", err)
	}
	greq := &guest.Request{
		Timeout:   req.Timeout,
		MaxOutput: req.MaxOutput,
		Seed:      make([]byte, guest.SeedSize),
		Nonce:     rand.Text(),
		Stream:    streamRequest(req.Live),
	}
	rand.Read(greq.Seed)
	// Once the guest says its result is on the I/O disk, the VM has
	// nothing more to give: stop it rather than wait for its power-off.
	// Only the line with the run's nonce counts, which the program cannot
	// know: a line it forged cannot end the run early.
	ready := newLineWatch(req.Console, guest.ResultReadyLine(greq.Nonce))
	vm := &runVM{greq: greq, ready: ready, machine: machine{
		choice: p.choice, initramfs: initramfs, ioPath: ioPath, work: work,
		memMiB: req.MemoryMiB, cpus: req.CPUs, debug: req.Debug, console: ready,
		onStep: func(step string, took time.Duration) { t.d["vm_start/"+step] = took },
	}}
	if p.img != nil {
		vm.imagePath = p.img.EROFSPath
	}
	var once sync.Once
	var prepErr error
	vm.prepare = func(ctx context.Context) error {
		once.Do(func() { prepErr = e.prepare(ctx, p, req, vm, t) })
		return prepErr
	}
	return vm, nil
}

// prepare makes vm ready for its guest: it waits for an image resolved
// late (and serves it on the run's disk), then writes the request into
// the I/O file.
func (e *Engine) prepare(ctx context.Context, p *runPlan, req *RunRequest, vm *runVM, t *timer) error {
	if p.late != nil {
		start := time.Now()
		ip, err := p.late.wait(ctx)
		if err != nil {
			return err
		}
		t.d["image"] = p.late.took
		t.d["vm_start/image_wait"] = time.Since(start)
		if !fitsBootSnapshot(ip.img) {
			// The run's disk, served before the image was known, has
			// the size of a boot snapshot's image disk.
			return fmt.Errorf("image %s: larger than the %d bytes of a VM's image disk", ip.img.Reference, int64(BootSnapshotImageSize))
		}
		p.imagePlan = ip
		if err := vm.lazy.serve(ip.img, ip.prefetch); err != nil {
			return err
		}
	}
	start := time.Now()
	proc := p.proc
	g := vm.greq
	g.Argv, g.Env, g.Cwd = proc.Argv, proc.Env, proc.Cwd
	g.UID, g.GID, g.Groups = proc.UID, proc.GID, proc.Groups
	g.Time = time.Now()
	if err := guest.WriteIOFile(vm.ioPath, g, req.Stdin, req.InputDir, e.limits()); err != nil {
		return err
	}
	t.d["io_file"] = time.Since(start)
	return nil
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
func (e *Engine) collect(req *RunRequest, img *ResolvedImage, l launch, vm *runVM, m vmm.Machine, x vmExit, t *timer) (*RunResult, error) {
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

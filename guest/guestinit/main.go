package guestinit

import (
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/pe-project/pe/guest"
	"golang.org/x/sys/unix"
)

// Watchdog margins: the whole guest must be done this long after its phase
// started, or the init gives up, reports and powers off. The host has its
// own, later, hard kill.
const (
	bootWatchdog    = 60 * time.Second // until the request is read
	programWatchdog = 15 * time.Second // beyond the request's Timeout
	watchdogWrite   = 3 * time.Second  // for the watchdog's own report
)

// deviceWait bounds the wait for a disk to appear after its driver loaded.
const deviceWait = 5 * time.Second

// Main is the guest init's entry point: the stage-2 child when argv[1] is
// [Stage2Arg], PID 1 of the VM otherwise. It never returns.
func Main() {
	if len(os.Args) > 1 && os.Args[1] == Stage2Arg {
		Stage2()
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pe-init: this is pe's guest init; it only runs as PID 1 of a pe micro-VM")
		os.Exit(2)
	}
	in := &vmInit{}
	func() {
		defer func() {
			if r := recover(); r != nil {
				in.fail(fmt.Errorf("guest init panic: %v", r))
			}
		}()
		in.run()
	}()
	in.powerOff()
}

// vmInit is PID 1 of the VM. Its methods are the phases of docs/guest.md
// ("The init"), in the order run calls them; each leaves in the fields
// what the later ones need.
type vmInit struct {
	// Set by boot.
	log *logger
	cmd cmdline
	// hostStops: the host stops the VM on the result-ready line.
	hostStops bool
	watchdog  *time.Timer
	// timings go into the result; mounts adds up the time spent mounting
	// (the image, the container root), reported as "mounts". A snapshot's
	// wake drops both: they belong to the snapshot, not to the run.
	timings map[string]int64
	mounts  time.Duration

	// Set by prepare.
	ioDev, imageDev string
	memTotal        int64 // the VM's memory
	// defaultMem is the program's memory limit for the default request:
	// the sandbox is started, and the root sized, for it.
	defaultMem   int64
	sb           *Sandbox
	imageMounted bool
	// inputDir is the container's input directory, made with the root.
	inputDir string

	// Set by readRequest; read by the watchdog, from its own goroutine.
	iof atomic.Pointer[guest.IOFile]
	// nonce is the request's, once read: the result and the result-ready
	// line carry it.
	nonce atomic.Pointer[string]
}

// run is PID 1's life, phase by phase. Until the I/O file is open a
// failure can only be logged on the console (the host reports it); from
// then on it is the run's result (fail).
func (in *vmInit) run() {
	if err := in.boot(); err != nil {
		// No console log yet: the kernel points stderr at the console.
		fmt.Fprintf(os.Stderr, "pe-init: %v\n", err)
		return
	}
	in.loadModules()
	if err := in.phases(); err != nil {
		in.fail(err)
	}
}

// phases runs what follows the modules: the same for a cold boot and a
// restored VM, but for the branch a snapshot's boot takes before its
// sleep.
func (in *vmInit) phases() error {
	if err := in.prepare(); err != nil {
		return err
	}
	switch in.cmd.params[guest.CmdlineSnapshot] {
	case guest.SnapshotBoot:
		if err := in.prepareBootSnapshot(); err != nil {
			return err
		}
		// Neither disk is read before the wake: a restored VM's are
		// other files, the image disk the run's image.
		if err := in.sleep(in.imageDev, in.ioDev); err != nil {
			return err
		}
	case guest.SnapshotImage:
		if err := in.prepareImageSnapshot(); err != nil {
			return err
		}
		// The image stays: its mount and warmed cache are the point.
		if err := in.sleep(in.ioDev); err != nil {
			return err
		}
	}
	req, err := in.readRequest()
	if err != nil {
		return err
	}
	res, err := in.runProgram(req)
	if err != nil {
		return err
	}
	in.finish(res)
	return nil
}

// boot gives PID 1 its file systems, reads the kernel command line, opens
// the console log and starts the boot watchdog.
func (in *vmInit) boot() error {
	in.timings = map[string]int64{"boot_to_init": 0}
	if err := bootMounts(); err != nil {
		return err
	}
	in.timings["boot_to_init"] = uptimeMicros()
	raw, _ := os.ReadFile("/proc/cmdline")
	in.cmd = parseCmdline(string(raw))
	in.log = newLogger(consoleWriter(), in.cmd.params[guest.CmdlineDebug] == "1")
	in.hostStops = in.cmd.params[guest.CmdlineHostStop] == "1"
	in.log.Debugf("started %.3fs after boot", float64(in.timings["boot_to_init"])/1e6)
	in.watchdog = time.AfterFunc(bootWatchdog, func() { in.watchdogFired(bootWatchdog) })

	// Whatever the program does, the OOM killer must never pick the init.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
		in.log.Infof("warning: oom_score_adj: %v", err)
	}
	if err := loopbackUp(); err != nil {
		in.log.Debugf("loopback: %v", err)
	}
	return nil
}

// loadModules loads the initramfs's kernel modules. A failure is only
// logged: the module may be built in after all, and the disks will tell.
func (in *vmInit) loadModules() {
	t := time.Now()
	n, err := loadModules(guest.ModulesDir, guest.ModulesOrder, in.cmd.moduleParams, in.log)
	in.timings["modules"] = time.Since(t).Microseconds()
	if err != nil {
		in.log.Infof("%v", err)
	}
	in.log.Debugf("%d modules loaded in %v", n, time.Since(t).Round(time.Microsecond))
}

// prepare waits for the I/O disk and makes the sandbox, started with the
// root sized for the VM's default memory limit and owned by the
// container's root: runProgram adapts both to the request.
func (in *vmInit) prepare() error {
	in.ioDev, in.imageDev = in.cmd.ioDevice(), in.cmd.imageDevice()
	if err := waitForDevice(in.ioDev, deviceWait); err != nil {
		return fmt.Errorf("no I/O disk: %w", err)
	}
	total, err := memTotal()
	if err != nil {
		return err
	}
	in.memTotal, in.defaultMem = total, programMemory(0, total)
	in.sb = &Sandbox{
		Root:         vmLayout.root,
		DevDir:       "/dev",
		CgroupParent: CgroupRoot,
		Self:         "/init",
		MemoryMax:    in.defaultMem,
		ShmSize:      in.defaultMem / 4,
		Log:          in.log,
		Prepare:      in.makeRoot,
		Configure:    in.configureRoot,
	}
	return nil
}

// prepareBootSnapshot does what a run of any image needs before the boot
// snapshot, whose image disk holds nothing: it finds the image disk and
// spawns the sandbox's stage-2 child, which needs no image until its
// setup, so a restored VM skips its fork, exec and Go runtime start.
func (in *vmInit) prepareBootSnapshot() error {
	if err := waitForDevice(in.imageDev, deviceWait); err != nil {
		return fmt.Errorf("image disk: %w", err)
	}
	if err := in.sb.Spawn(); err != nil {
		in.log.Infof("%v", err) // Start will try again
	}
	warmCodecs()
	return nil
}

// prepareImageSnapshot mounts the image and starts the sandbox before an
// image's snapshot: a restored VM finds the container root made and the
// child waiting, and the image's likely files in memory. Under emulation,
// where every restored VM translates afresh whatever code it runs, that
// work is the larger part of a run.
func (in *vmInit) prepareImageSnapshot() error {
	if err := in.mountImage(); err != nil {
		return err
	}
	if err := in.sb.Start(); err != nil {
		return err
	}
	warmCodecs()
	t := time.Now()
	ws, err := warmImage(vmLayout.lower, min(in.memTotal/8, warmMaxBytes), t.Add(warmMaxTime))
	if err != nil {
		in.log.Infof("warm the image: %v", err)
		return nil
	}
	in.log.Debugf("warmed %d files, %d bytes, of the image in %v (cut short: %v)", len(ws.Paths), ws.Bytes, time.Since(t).Round(time.Millisecond), ws.Cut)
	return nil
}

// sleep waits, once the snapshot's state is made, for the host to save
// the VM and wake a restored copy of it. flush are the disks whose cache
// goes first: a restored VM's disks are other files, so nothing of the
// boot's may stay cached. The kernel drops a disk's cache at its last
// close (the partition scan's), but a flush costs nothing and does not
// depend on who has a disk open.
func (in *vmInit) sleep(flush ...string) error {
	for _, dev := range flush {
		if err := flushBlockDevice(dev); err != nil {
			return err
		}
	}
	// Timers would fire at once in a VM restored much later.
	in.watchdog.Stop()
	if err := waitForWake(in.log); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	in.watchdog.Reset(bootWatchdog)
	in.log.Debugf("woken from a snapshot")
	// Boot phases belong to the snapshot, not to this run.
	in.timings = map[string]int64{}
	in.mounts = 0
	return nil
}

// readRequest opens the I/O file and reads the request, then sets the
// watchdog for the request's time limit, the clock and the RNG from it.
func (in *vmInit) readRequest() (*guest.Request, error) {
	t := time.Now()
	iof, err := guest.OpenIOFile(in.ioDev)
	if err != nil {
		return nil, err
	}
	in.iof.Store(iof)
	req, err := iof.Request()
	if err != nil {
		return nil, err
	}
	in.nonce.Store(&req.Nonce)
	in.timings["request"] = time.Since(t).Microseconds()
	if req.Timeout > 0 {
		in.watchdog.Reset(req.Timeout + programWatchdog)
	} else {
		in.watchdog.Stop()
	}
	if err := setClock(req.Time); err != nil {
		in.log.Infof("warning: %v", err)
	}
	if err := seedRNG(req.Seed); err != nil {
		in.log.Infof("warning: %v", err)
	}
	return req, nil
}

// runProgram mounts the image unless a snapshot holds it mounted and runs
// the request in the sandbox, with the memory limit the VM allows.
func (in *vmInit) runProgram(req *guest.Request) (*guest.Result, error) {
	if !in.imageMounted {
		if err := in.mountImage(); err != nil {
			return nil, err
		}
	}
	req.MemoryLimit = programMemory(req.MemoryLimit, in.memTotal)
	in.sb.ShmSize = req.MemoryLimit / 4
	iof := in.iof.Load()
	stdin := iof.Stdin()
	if !req.HasStdin {
		stdin = nil
	}
	var stdout, stderr io.Writer = iof.Stdout(), iof.Stderr()
	var live *liveRun
	if req.Stream != nil {
		var liveIn io.Reader
		stdout, stderr, liveIn, live = in.startStream(req, iof)
		if req.Stream.Stdin {
			stdin = liveIn
		}
	}
	res := in.sb.Run(req, stdin, stdout, stderr)
	live.end()
	in.timings["mounts"] = in.mounts.Microseconds()
	return res, nil
}

// mountImage mounts the EROFS image disk read-only.
func (in *vmInit) mountImage() error {
	defer in.timeMounts(time.Now())
	if err := waitForDevice(in.imageDev, deviceWait); err != nil {
		return fmt.Errorf("image disk: %w", err)
	}
	if err := mountAt(in.imageDev, vmLayout.lower, "erofs", unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	in.imageMounted = true
	return nil
}

// makeRoot is the sandbox's Prepare: the container root, idmapped for the
// stage-2 child's user namespace, and its input directory, both owned by
// the container's root until configureRoot knows the request's user.
func (in *vmInit) makeRoot(usernsFD int) error {
	defer in.timeMounts(time.Now())
	idmapped, err := mountRoot(vmLayout, rootOptions{tmpfsSize: in.defaultMem / 2, uid: IDBase, gid: IDBase}, usernsFD, in.log)
	if err != nil {
		return fmt.Errorf("container root: %w", err)
	}
	if in.inputDir, err = mkdirInRoot(vmLayout.root, guest.InputDir, 0o755, IDBase, IDBase); err != nil {
		return err
	}
	in.log.Debugf("container root ready (idmapped: %v)", idmapped)
	return nil
}

// configureRoot is the sandbox's Configure: it resizes the root's tmpfs
// for req's memory limit and gives the input directory, with the inputs,
// to req's user, where those differ from what makeRoot made.
func (in *vmInit) configureRoot(req *guest.Request) error {
	defer in.timeMounts(time.Now())
	uid, gid := outerID(req.UID), outerID(req.GID)
	if err := configureRoot(vmLayout, in.defaultMem/2, rootOptions{tmpfsSize: req.MemoryLimit / 2, uid: uid, gid: gid}); err != nil {
		return fmt.Errorf("container root: %w", err)
	}
	// What a snapshot holds is done already: the common run (the
	// container's root, no input files) changes nothing here.
	if iof := in.iof.Load(); iof.HasInputs() {
		if err := iof.ExtractInputs(in.inputDir); err != nil {
			return err
		}
		return chownTree(in.inputDir, uid, gid)
	}
	if uid != IDBase || gid != IDBase {
		return os.Chown(in.inputDir, uid, gid)
	}
	return nil
}

// timeMounts adds the time since t to the mounts timing (deferred).
func (in *vmInit) timeMounts(t time.Time) { in.mounts += time.Since(t) }

// finish writes res with the timings and the output directory, then the
// result-ready line, and leaves the host time to stop the VM.
func (in *vmInit) finish(res *guest.Result) {
	iof := in.iof.Load()
	if iof == nil {
		return
	}
	if res.Timings == nil {
		res.Timings = map[string]int64{}
	}
	for k, v := range in.timings {
		res.Timings[k] = v
	}
	nonce := in.requestNonce()
	res.Nonce = nonce
	t := time.Now()
	// WriteResult adds the time it spends archiving the outputs.
	if err := iof.WriteResult(res, vmLayout.output); err != nil {
		in.log.Infof("write the result: %v", err)
		return
	}
	in.log.Debugf("result written in %v: exit %d %s %s", time.Since(t).Round(time.Microsecond), res.ExitCode, res.Signal, res.Error)
	// WriteResult flushed the disk: the host needs nothing more of this VM.
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		_, err := f.WriteString("\n" + guest.ResultReadyLine(nonce) + "\n")
		f.Close()
		if err == nil && in.hostStops {
			// The host stops the VM now; a power-off of its own would
			// only take CPU from that. It is the fallback.
			time.Sleep(guest.HostStopGrace)
		}
	}
}

// requestNonce is the request's nonce, "" before the request is read.
func (in *vmInit) requestNonce() string {
	if p := in.nonce.Load(); p != nil {
		return *p
	}
	return ""
}

// fail reports an error of pe's guest side as the run's result (only on
// the console before the I/O file is open).
func (in *vmInit) fail(err error) {
	in.log.Infof("%v", err)
	in.finish(&guest.Result{ExitCode: ExitSetupFailed, Error: err.Error()})
}

// watchdogFired ends a guest that overran: report if possible, then power
// off whatever state the rest is in.
func (in *vmInit) watchdogFired(after time.Duration) {
	in.log.Infof("watchdog: no result %v after the phase started; powering off", after)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if iof := in.iof.Load(); iof != nil {
			iof.WriteResult(&guest.Result{ExitCode: ExitSetupFailed, Error: fmt.Sprintf("guest watchdog: the guest did not finish within %v", after), Nonce: in.requestNonce()}, "")
		}
	}()
	select {
	case <-done:
	case <-time.After(watchdogWrite):
	}
	in.powerOff()
}

// powerOff flushes the disks and turns the VM off. If the platform cannot
// power off, a reboot ends it too: pe's VMMs run guests with no-reboot.
func (in *vmInit) powerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	in.log.Infof("power off: %v; rebooting instead", err)
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

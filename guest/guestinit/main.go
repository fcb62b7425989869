package guestinit

import (
	"fmt"
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

// vmInit is the state of PID 1.
type vmInit struct {
	log      *logger
	iof      atomic.Pointer[guest.IOFile]
	watchdog *time.Timer
	timings  map[string]int64
	// hostStops: the host stops the VM on the result-ready line.
	hostStops bool
	// nonce is the request's, once read: the result and the result-ready
	// line carry it (the watchdog's too, from its own goroutine).
	nonce atomic.Pointer[string]
}

func (in *vmInit) run() {
	in.timings = map[string]int64{"boot_to_init": 0}
	if err := bootMounts(); err != nil {
		fmt.Fprintf(os.Stderr, "pe-init: %v\n", err)
		return // no I/O disk yet: the host reports the console
	}
	in.timings["boot_to_init"] = uptimeMicros()
	raw, _ := os.ReadFile("/proc/cmdline")
	cmd := parseCmdline(string(raw))
	in.log = newLogger(consoleWriter(), cmd.params[guest.CmdlineDebug] == "1")
	in.hostStops = cmd.params[guest.CmdlineHostStop] == "1"
	in.log.Debugf("started %.3fs after boot", float64(in.timings["boot_to_init"])/1e6)
	in.watchdog = time.AfterFunc(bootWatchdog, func() { in.watchdogFired(bootWatchdog) })

	// Whatever the program does, the OOM killer must never pick the init.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
		in.log.Infof("warning: oom_score_adj: %v", err)
	}
	if err := loopbackUp(); err != nil {
		in.log.Debugf("loopback: %v", err)
	}

	t := time.Now()
	n, err := loadModules(guest.ModulesDir, guest.ModulesOrder, cmd.moduleParams, in.log)
	in.timings["modules"] = time.Since(t).Microseconds()
	if err != nil {
		in.log.Infof("%v", err) // maybe built in after all: the disks will tell
	}
	in.log.Debugf("%d modules loaded in %v", n, time.Since(t).Round(time.Microsecond))

	ioDev := cmd.ioDevice()
	if err := waitForDevice(ioDev, 5*time.Second); err != nil {
		in.log.Infof("no I/O disk: %v", err)
		return
	}
	var mounts time.Duration
	imageMounted := false
	mountImage := func() error {
		t := time.Now()
		defer func() { mounts += time.Since(t) }()
		imageDev := cmd.imageDevice()
		if err := waitForDevice(imageDev, 5*time.Second); err != nil {
			return fmt.Errorf("image disk: %w", err)
		}
		if err := mountAt(imageDev, vmLayout.lower, "erofs", unix.MS_RDONLY|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("image: %w", err)
		}
		imageMounted = true
		return nil
	}
	total, err := memTotal()
	if err != nil {
		in.log.Infof("%v", err)
		return
	}
	// The sandbox is started with the root sized for the VM's default
	// limit and owned by the container's root; Configure adapts both to
	// the request.
	defaultMem := programMemory(0, total)
	var iof *guest.IOFile
	var mem int64
	var uid, gid int
	var inputDir string
	sb := &Sandbox{
		Root:         vmLayout.root,
		DevDir:       "/dev",
		CgroupParent: CgroupRoot,
		Self:         "/init",
		MemoryMax:    defaultMem,
		ShmSize:      defaultMem / 4,
		Log:          in.log,
		Prepare: func(usernsFD int) error {
			t := time.Now()
			defer func() { mounts += time.Since(t) }()
			idmapped, err := mountRoot(vmLayout, rootOptions{tmpfsSize: defaultMem / 2, uid: IDBase, gid: IDBase}, usernsFD, in.log)
			if err != nil {
				return fmt.Errorf("container root: %w", err)
			}
			if inputDir, err = mkdirInRoot(vmLayout.root, guest.InputDir, 0o755, IDBase, IDBase); err != nil {
				return err
			}
			in.log.Debugf("container root ready (idmapped: %v)", idmapped)
			return nil
		},
		Configure: func(*guest.Request) error {
			t := time.Now()
			defer func() { mounts += time.Since(t) }()
			if err := configureRoot(vmLayout, defaultMem/2, rootOptions{tmpfsSize: mem / 2, uid: uid, gid: gid}); err != nil {
				return fmt.Errorf("container root: %w", err)
			}
			// What a snapshot holds is done already: the common run (the
			// container's root, no input files) changes nothing here.
			if iof.HasInputs() {
				if err := iof.ExtractInputs(inputDir); err != nil {
					return err
				}
				return chownTree(inputDir, uid, gid)
			}
			if uid != IDBase || gid != IDBase {
				return os.Chown(inputDir, uid, gid)
			}
			return nil
		},
	}
	// sleep waits, once the snapshot's state is made, for the host to
	// save the VM and wake a restored copy of it.
	sleep := func(flush ...string) bool {
		// A restored VM's disks are other files: nothing of the boot's
		// may stay cached. The kernel drops a disk's cache at its last
		// close (the partition scan's), but a flush costs nothing and
		// does not depend on who has a disk open. Nothing reads the
		// disks from here to the wake.
		for _, dev := range flush {
			if err := flushBlockDevice(dev); err != nil {
				in.log.Infof("%v", err)
				return false
			}
		}
		// Timers would fire at once in a VM restored much later.
		in.watchdog.Stop()
		if err := waitForWake(in.log); err != nil {
			in.log.Infof("snapshot: %v", err)
			return false
		}
		in.watchdog.Reset(bootWatchdog)
		in.log.Debugf("woken from a snapshot")
		// Boot phases belong to the snapshot, not to this run.
		in.timings = map[string]int64{}
		mounts = 0
		return true
	}
	switch cmd.params[guest.CmdlineSnapshot] {
	case guest.SnapshotBoot:
		// Any image's run may follow: only what needs no image is done.
		if err := waitForDevice(cmd.imageDevice(), 5*time.Second); err != nil {
			in.log.Infof("image disk: %v", err)
			return
		}
		// The stage-2 child needs no image until its setup: started now,
		// a restored VM skips its fork, exec and Go runtime start.
		if err := sb.Spawn(); err != nil {
			in.log.Infof("%v", err) // Start will try again
		}
		warmCodecs()
		if !sleep(cmd.imageDevice(), ioDev) {
			return
		}
	case guest.SnapshotImage:
		if err := mountImage(); err != nil {
			in.log.Infof("%v", err) // no I/O file yet: the host sees the console
			return
		}
		// A restored VM finds the container root made and the sandbox's
		// child started: under emulation, where every restored VM
		// translates afresh whatever code it runs, that work is the
		// larger part of a run.
		if err := sb.Start(); err != nil {
			in.log.Infof("%v", err)
			return
		}
		warmCodecs()
		// The image's likely files in memory: see warmImage.
		t = time.Now()
		if ws, err := warmImage(vmLayout.lower, min(total/8, warmMaxBytes), t.Add(warmMaxTime)); err != nil {
			in.log.Infof("warm the image: %v", err)
		} else {
			in.log.Debugf("warmed %d files, %d bytes, of the image in %v (cut short: %v)", len(ws.Paths), ws.Bytes, time.Since(t).Round(time.Millisecond), ws.Cut)
		}
		if !sleep(ioDev) {
			return
		}
	}
	t = time.Now()
	iof, err = guest.OpenIOFile(ioDev)
	if err != nil {
		in.log.Infof("%v", err)
		return
	}
	in.iof.Store(iof)
	req, err := iof.Request()
	if err != nil {
		in.fail(err)
		return
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

	if !imageMounted {
		if err := mountImage(); err != nil {
			in.fail(err)
			return
		}
	}
	mem = programMemory(req.MemoryLimit, total)
	req.MemoryLimit = mem
	uid, gid = outerID(req.UID), outerID(req.GID)
	sb.ShmSize = mem / 4

	var stdin = iof.Stdin()
	if !req.HasStdin {
		stdin = nil
	}
	res := sb.Run(req, stdin, iof.Stdout(), iof.Stderr())
	in.timings["mounts"] = mounts.Microseconds()
	in.finish(res)
}

// finish writes res with the timings and the output directory.
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

// fail reports an error of pe's guest side as the run's result.
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

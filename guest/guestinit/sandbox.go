package guestinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pe-project/pe/guest"
	"golang.org/x/sys/unix"
)

// The program's user namespace maps container IDs 0..IDCount-1 to guest IDs
// IDBase.. : the container's root is an ordinary, unprivileged user of the
// guest, so the init's files, devices and /proc/sys stay out of its reach.
const (
	IDBase  = 100000
	IDCount = 1 << 31
)

// Exit codes the sandbox reports when the program could not be started,
// after the shell's conventions (and docker's).
const (
	// ExitSetupFailed means pe's guest side failed before the program ran.
	ExitSetupFailed = 125
	// ExitCannotExec means the command was found but could not be executed.
	ExitCannotExec = 126
	// ExitNotFound means the command was not found.
	ExitNotFound = 127
)

// drainGrace bounds the wait for the program's output pipes after it
// exited: with its PID namespace gone nothing should hold them open.
const drainGrace = 2 * time.Second

// Sandbox runs one program isolated (see the package doc).
type Sandbox struct {
	// Root is the container root: a mount point holding the program's file
	// system, prepared by the caller. /proc and /dev are mounted over the
	// directories of that name in it; they are created when missing.
	Root string
	// DevDir holds the device nodes bound into the program's /dev (the
	// init's devtmpfs, "/dev").
	DevDir string
	// CgroupParent is the cgroup v2 directory the program's cgroup is made
	// in ("" = no cgroup: memory and pids are not limited, and the time
	// limit kills the program's PID namespace instead).
	CgroupParent string
	// Self is the executable re-run as the stage-2 child: the init binary.
	Self string
	// MemoryMax, when set, is the memory.max Start gives the cgroup (with
	// the default pids.max), so that Run only writes a request's limits
	// that differ: what a snapshot holds is then usually all there is.
	MemoryMax int64
	// ShmSize is the size of the program's /dev/shm, in bytes; Run
	// resizes the one Start made when it changed in between.
	ShmSize int64
	// Log receives progress; nil discards it.
	Log *logger
	// Prepare, if set, runs in Start once the stage-2 child exists, with
	// its user namespace: the init uses it to make the idmapped root for
	// exactly that namespace's mapping.
	Prepare func(usernsFD int) error
	// Configure, if set, runs in Run before the child gets its
	// configuration: what depends on the request (the root's sizes and
	// owners, the input files).
	Configure func(req *guest.Request) error
	// Started, if set, is called once the program has its configuration
	// (the child is executing it); Exited once it has ended, before its
	// output streams are drained. The data channel uses them.
	Started, Exited func()

	// runMu guards running, the child of the program running now, for
	// Signal; term, the primary end of its terminal, and pendingSize, a
	// size Resize got before the terminal was made, for Resize.
	runMu       sync.Mutex
	running     *stage2Child
	term        *os.File
	pendingSize *guest.WindowSize

	child *stage2Child // started by Start, used up by Run
	// spawned is a child Spawn started, which Start sets up.
	spawned *stage2Child
	// retired holds what finished runs left to release: see Close.
	retired []*stage2Child
}

// stage2Child is a started stage-2 child waiting for its configuration,
// with the init's ends of its pipes.
type stage2Child struct {
	cmd    *exec.Cmd
	cg     *cgroup
	exited chan error // cmd.Wait's result
	// The init's ends: the configuration and failure report, the program's
	// output and its standard input.
	cfgW, failR, outR, errR, inW *os.File
	// term is the primary end of the program's terminal (see pty.go), for
	// a run with one.
	term *os.File
	// mountNS holds the program's mount namespace once the child made it,
	// so that the program's exit does not tear it down: see Close.
	mountNS *os.File
}

// closePipes closes the init's ends of the pipes.
func (c *stage2Child) closePipes() {
	for _, f := range []*os.File{c.cfgW, c.failR, c.outR, c.errR, c.inW, c.term} {
		if f != nil {
			f.Close()
		}
	}
	c.cfgW, c.failR, c.outR, c.errR, c.inW, c.term = nil, nil, nil, nil, nil, nil
}

// release closes the pipes, lets the mount namespace go and removes the
// cgroup, which must be empty by then.
func (c *stage2Child) release() {
	c.closePipes()
	if c.mountNS != nil {
		c.mountNS.Close()
		c.mountNS = nil
	}
	if c.cg != nil {
		c.cg.close()
		c.cg = nil
	}
}

// kill ends the child and waits for it.
func (c *stage2Child) kill() {
	c.cmd.Process.Kill()
	<-c.exited
}

// stage2Setup is the first message the init sends the stage-2 child on
// fd 3, from Start: the child builds the program's mount namespace with it
// and waits for the [stage2Config].
type stage2Setup struct {
	Root    string `json:"root"`
	Proc    string `json:"proc"` // mount points, resolved inside Root
	Dev     string `json:"dev"`
	DevDir  string `json:"dev_dir"`
	ShmSize int64  `json:"shm_size"`
}

// stage2Config is the second message on fd 3, from Run: the program.
type stage2Config struct {
	// ShmSize, when not the setup's, resizes /dev/shm.
	ShmSize  int64    `json:"shm_size"`
	Argv     []string `json:"argv"`
	Env      []string `json:"env"`
	Cwd      string   `json:"cwd"`
	UID      uint32   `json:"uid"`
	GID      uint32   `json:"gid"`
	Groups   []uint32 `json:"groups"`
	Hostname string   `json:"hostname"`
	// NullStdin replaces the pipe on the child's standard input with
	// /dev/null: the request has no input for it.
	NullStdin bool `json:"null_stdin"`
	// TTY, when set, is the path in the container of the terminal the
	// init made for the program (see pty.go): its standard streams and
	// controlling terminal.
	TTY string `json:"tty,omitempty"`
}

// stage2Ready is the byte the stage-2 child writes on fd 4 once the
// program's mount namespace is made and it waits for its configuration.
const stage2Ready = 'R'

// stage2Failure is what the stage-2 child reports on fd 4 when it cannot
// execute the program; fd 4 is close-on-exec, so EOF means the exec worked.
type stage2Failure struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// Run runs req's program with stdin (nil = /dev/null) and its output
// streams copied to stdout and stderr as they come. It always returns a
// result: what went wrong around the program is in Result.Error with a
// non-zero exit code.
func (s *Sandbox) Run(req *guest.Request, stdin io.Reader, stdout, stderr io.Writer) *guest.Result {
	res, err := s.run(req, stdin, stdout, stderr)
	if err != nil {
		res.Error = err.Error()
		if res.ExitCode == 0 {
			res.ExitCode = ExitSetupFailed
		}
	}
	return res
}

// Spawn creates the program's cgroup and the stage-2 child in the
// program's namespaces, which then waits for Start: nothing of it needs
// the container root. The init spawns it before a boot snapshot, which
// holds no image, so that a restored VM skips the child's fork, exec and
// runtime start.
func (s *Sandbox) Spawn() error {
	if s.child != nil || s.spawned != nil {
		return errors.New("sandbox: already started")
	}
	s.Close()
	c, err := s.spawn()
	if err != nil {
		return err
	}
	s.spawned = c
	return nil
}

// Start runs Prepare and has the stage-2 child (spawned now, unless Spawn
// did) make the program's mount namespace; the child then waits for Run.
// The init starts the sandbox before an image's snapshot, so that a
// restored VM finds it ready; Run starts it itself otherwise.
func (s *Sandbox) Start() error {
	if s.child != nil {
		return errors.New("sandbox: already started")
	}
	c := s.spawned
	s.spawned = nil
	if c == nil {
		s.Close()
		var err error
		if c, err = s.spawn(); err != nil {
			return err
		}
	}
	if err := s.setUp(c); err != nil {
		c.kill()
		c.release()
		return err
	}
	s.child = c
	return nil
}

// spawn starts a stage-2 child in a new cgroup (see Spawn).
func (s *Sandbox) spawn() (_ *stage2Child, err error) {
	c := &stage2Child{exited: make(chan error, 1)}
	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
		if err != nil {
			c.release()
		}
	}()
	if s.CgroupParent != "" {
		t := time.Now()
		if c.cg, err = newCgroup(s.CgroupParent, "pe-program"); err != nil {
			return nil, err
		}
		s.Log.Debugf("program cgroup with its device filter made in %v", time.Since(t).Round(time.Microsecond))
		if s.MemoryMax > 0 {
			if err := c.cg.limit(s.MemoryMax, guest.DefaultPidsLimit); err != nil {
				return nil, err
			}
		}
	}
	pipe := func(parentReads bool) (parent *os.File, err error) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		if parentReads {
			childEnds = append(childEnds, w)
			return r, nil
		}
		childEnds = append(childEnds, r)
		return w, nil
	}
	// The child's ends, in childEnds, are: config, failure, stdout,
	// stderr, stdin.
	if c.cfgW, err = pipe(false); err != nil {
		return nil, err
	}
	if c.failR, err = pipe(true); err != nil {
		return nil, err
	}
	if c.outR, err = pipe(true); err != nil {
		return nil, err
	}
	if c.errR, err = pipe(true); err != nil {
		return nil, err
	}
	if c.inW, err = pipe(false); err != nil {
		return nil, err
	}
	cfgR, failW, outW, errW, inR := childEnds[0], childEnds[1], childEnds[2], childEnds[3], childEnds[4]

	attr := &syscall.SysProcAttr{
		// No CLONE_NEWNS: the child unshares its mount namespace itself once
		// the init has mounted everything, so it gets all of it, locked.
		Cloneflags:                 unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: IDBase, Size: IDCount}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: IDBase, Size: IDCount}},
		GidMappingsEnableSetgroups: true,
		// The init is guest root, which the namespace does not map: become
		// the container's root (guest IDBase) before the exec, or the child
		// would run as nobody without capabilities in its own namespace.
		Credential: &syscall.Credential{Uid: 0, Gid: 0},
		Setsid:     true,
		Pdeathsig:  unix.SIGKILL,
	}
	if c.cg != nil {
		attr.UseCgroupFD, attr.CgroupFD = true, c.cg.fd
	}
	c.cmd = &exec.Cmd{
		Path:        s.Self,
		Args:        []string{s.Self, Stage2Arg},
		Env:         []string{},
		Stdin:       inR,
		Stdout:      outW,
		Stderr:      errW,
		ExtraFiles:  []*os.File{cfgR, failW},
		SysProcAttr: attr,
	}
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the sandbox: %w", err)
	}
	// Closed here, the child's ends are the child's alone: a read on
	// failR then ends when the child does.
	for _, f := range childEnds {
		f.Close()
	}
	childEnds = nil
	go func() { c.exited <- c.cmd.Wait() }()
	return c, nil
}

// setUp runs Prepare with c's user namespace, sends c its setup and waits
// for its mount namespace.
func (s *Sandbox) setUp(c *stage2Child) (err error) {
	if s.Prepare != nil {
		ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", c.cmd.Process.Pid))
		if err == nil {
			err = s.Prepare(int(ns.Fd()))
			ns.Close()
		} else {
			err = fmt.Errorf("sandbox user namespace: %w", err)
		}
		if err != nil {
			return err
		}
	}
	setup, err := s.stage2Setup()
	if err != nil {
		return err
	}
	if err := json.NewEncoder(c.cfgW).Encode(setup); err != nil {
		return fmt.Errorf("send the sandbox its setup: %w", err)
	}
	if err := c.waitReady(); err != nil {
		return err
	}
	// Held, the namespace outlives the program: the unmounting its last
	// reference would start at the program's exit, a burst of kernel work
	// (slow to emulate in a restored VM), waits for Close, after the result.
	if c.mountNS, err = os.Open(fmt.Sprintf("/proc/%d/ns/mnt", c.cmd.Process.Pid)); err != nil {
		s.Log.Debugf("sandbox mount namespace: %v", err)
		c.mountNS = nil
	}
	return nil
}

// waitReady waits for the child's ready byte: a snapshot taken after
// Start then holds the program's mount namespace made, and a child that
// could not make it is an error of Start, with the child's report.
func (c *stage2Child) waitReady() error {
	b := make([]byte, 1)
	n, _ := c.failR.Read(b)
	if n == 1 && b[0] == stage2Ready {
		return nil
	}
	rest, _ := io.ReadAll(io.LimitReader(c.failR, 64<<10))
	report := append(b[:n], rest...)
	var fail stage2Failure
	if len(report) > 0 && json.Unmarshal(report, &fail) == nil {
		return errors.New(fail.Message)
	}
	if len(report) > 0 {
		return fmt.Errorf("sandbox: unreadable report from the stage-2 child: %.200q", report)
	}
	err := <-c.exited
	c.exited <- err // for kill, which waits again
	return fmt.Errorf("sandbox: the stage-2 child ended while setting up: %v", err)
}

// Close releases what finished runs kept past their result: the
// program's mount namespace and cgroup. Start calls it; a caller that is
// done with the sandbox may too.
func (s *Sandbox) Close() {
	for _, c := range s.retired {
		c.release()
	}
	s.retired = nil
}

// run runs req in the started child (starting one when Start did not):
// limits and streams, the configuration, the wait, then what the program
// left. The child and its cgroup are kept for Close.
func (s *Sandbox) run(req *guest.Request, stdin io.Reader, stdout, stderr io.Writer) (*guest.Result, error) {
	res := &guest.Result{}
	if s.child == nil {
		if err := s.Start(); err != nil {
			return res, err
		}
	}
	c := s.child
	s.child = nil
	defer func() {
		s.runMu.Lock()
		s.term = nil
		s.runMu.Unlock()
		c.closePipes()
		s.retired = append(s.retired, c)
	}()
	if err := c.limit(req); err != nil {
		c.kill()
		return res, err
	}
	var ttyPath string
	if req.Stream != nil && req.Stream.TTY != nil {
		var err error
		if ttyPath, err = s.openTTY(c, req); err != nil {
			c.kill()
			return res, err
		}
	}
	drained, streams := c.connect(stdin, stdout, stderr)
	sendErr, err := s.configure(c, req, stdin == nil && ttyPath == "", ttyPath)
	if err != nil {
		c.kill()
		return res, err
	}
	start := time.Now()
	s.Log.Debugf("program started: %q", req.Argv)
	s.setRunning(c)
	if s.Started != nil {
		s.Started()
	}
	var waitErr error
	waitErr, res.TimedOut = s.wait(c, req.Timeout)
	elapsed := time.Since(start)
	s.setRunning(nil)
	if s.Exited != nil {
		s.Exited()
	}
	res.Timings = map[string]int64{"program": elapsed.Microseconds()}
	defer func() { res.Timings["collect"] = (time.Since(start) - elapsed).Microseconds() }()
	s.settle(c, drained, streams)
	if err := c.status(res, waitErr); err != nil {
		return res, err
	}
	if err := c.failure(res, sendErr); err != nil {
		return res, err
	}
	s.Log.Debugf("program ended after %v: exit %d %s", elapsed.Round(time.Millisecond), res.ExitCode, res.Signal)
	return res, nil
}

// openTTY makes the terminal of req's program (Request.Stream.TTY) and
// returns its path in the container.
func (s *Sandbox) openTTY(c *stage2Child, req *guest.Request) (string, error) {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	ws := *req.Stream.TTY
	if s.pendingSize != nil {
		ws, s.pendingSize = *s.pendingSize, nil
	}
	term, path, err := c.openPTY(ws, req.UID)
	if err != nil {
		return "", err
	}
	c.term, s.term = term, term
	return path, nil
}

// Resize sets the size of the running program's terminal (the kernel
// sends it SIGWINCH); before the terminal exists, the size is kept for
// it. A run without a terminal ignores it.
func (s *Sandbox) Resize(ws guest.WindowSize) error {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	if s.term == nil {
		s.pendingSize = &ws
		return nil
	}
	return setWinsize(s.term, ws)
}

func (s *Sandbox) setRunning(c *stage2Child) {
	s.runMu.Lock()
	s.running = c
	s.runMu.Unlock()
}

// Signal sends sig to the program running now (none: nothing). The
// program is the init of its PID namespace: as in a container, the
// kernel drops a signal it has no handler for, but SIGKILL and SIGSTOP.
func (s *Sandbox) Signal(sig syscall.Signal) error {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	if s.running == nil {
		return nil
	}
	return s.running.cmd.Process.Signal(sig)
}

// limit writes req's memory and pids limits to the child's cgroup.
func (c *stage2Child) limit(req *guest.Request) error {
	if c.cg == nil {
		return nil
	}
	pids := req.PidsLimit
	if pids == 0 {
		pids = guest.DefaultPidsLimit
	}
	return c.cg.limit(req.MemoryLimit, pids)
}

// connect copies stdin (nil: none) to the child and its output streams to
// stdout and stderr, as they come; drained gets a value as each of the
// output streams (streams of them, returned) ends. With a terminal, stdin goes to it and its
// output to stdout; the child's pipes, which the terminal replaces, end
// when it executes the program.
func (c *stage2Child) connect(stdin io.Reader, stdout, stderr io.Writer) (drained chan struct{}, streams int) {
	switch {
	case stdin != nil && c.term != nil:
		// Not closed at stdin's end: a terminal has no end of input
		// but its own (Ctrl-D is a byte on it).
		go io.Copy(c.term, stdin)
		c.inW.Close()
	case stdin != nil:
		go func(w *os.File) {
			io.Copy(w, stdin) // EPIPE when the program stops reading: fine
			w.Close()
		}(c.inW)
	default:
		c.inW.Close()
	}
	c.inW = nil // closed by its writer

	streams = 2
	drained = make(chan struct{}, 3)
	drain := func(r *os.File, w io.Writer) {
		io.Copy(w, r)
		drained <- struct{}{}
	}
	go drain(c.outR, stdout)
	go drain(c.errR, stderr)
	if c.term != nil {
		streams++
		go func(term *os.File) {
			copyTTYOut(term, stdout)
			drained <- struct{}{}
		}(c.term)
	}
	return drained, streams
}

// configure runs Configure and sends the child the program. A failure to
// send (sendErr) is not yet an error: the child is gone, and its failure
// report, read after its end, says why.
func (s *Sandbox) configure(c *stage2Child, req *guest.Request, nullStdin bool, tty string) (sendErr, err error) {
	if s.Configure != nil {
		if err := s.Configure(req); err != nil {
			return nil, err
		}
	}
	cfg, err := s.stage2Config(req)
	if err != nil {
		return nil, err
	}
	cfg.NullStdin, cfg.TTY = nullStdin, tty
	sendErr = json.NewEncoder(c.cfgW).Encode(cfg)
	if sendErr != nil {
		// The child closes fd 3 only once it has read this.
		s.Log.Debugf("send the sandbox its configuration: %v", sendErr)
	}
	c.cfgW.Close()
	c.cfgW = nil
	return sendErr, nil
}

// wait waits for the child's end, killing it at the time limit (0: none).
func (s *Sandbox) wait(c *stage2Child, limit time.Duration) (waitErr error, timedOut bool) {
	var timeout <-chan time.Time
	if limit > 0 {
		t := time.NewTimer(limit)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case waitErr = <-c.exited:
		return waitErr, false
	case <-timeout:
	}
	s.Log.Debugf("time limit %v reached: killing the program", limit)
	if c.cg != nil {
		c.cg.kill()
	}
	// The child is the init of the program's PID namespace: killing it
	// kills everything in there.
	c.cmd.Process.Kill()
	return <-c.exited, true
}

// settle waits, after the child's end, for its cgroup to empty and its
// output streams (streams of them) to end, forcing both when they do
// not.
func (s *Sandbox) settle(c *stage2Child, drained chan struct{}, streams int) {
	// The program was the init of its PID namespace, whose end took every
	// process in there with it: the cgroup is empty, unless something got
	// out, which is then killed.
	if c.cg != nil && !c.cg.waitEmpty(0) {
		s.Log.Infof("processes left in the program's cgroup after its end: killing them")
		c.cg.kill()
		c.cg.waitEmpty(drainGrace)
	}
	deadline := time.After(drainGrace)
	for i := 0; i < streams; i++ {
		select {
		case <-drained:
		case <-deadline:
			s.Log.Infof("output pipes still open %v after the program ended: closing them", drainGrace)
			c.outR.Close()
			c.errR.Close()
			if c.term != nil {
				c.term.Close()
			}
			for ; i < streams; i++ {
				<-drained
			}
			return
		}
	}
}

// status fills res with the ended child's exit code or signal, its
// resource usage and its cgroup's.
func (c *stage2Child) status(res *guest.Result, waitErr error) error {
	st := c.cmd.ProcessState
	if st == nil {
		return fmt.Errorf("wait for the program: %w", waitErr)
	}
	ws := st.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled():
		res.Signal = unix.SignalName(ws.Signal())
		res.ExitCode = 128 + int(ws.Signal())
	default:
		res.ExitCode = ws.ExitStatus()
	}
	// The program was the init of its PID namespace, which reaps every
	// process in there as it ends: its usage covers all of them.
	if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
		res.Rusage = guest.Rusage{
			UserMs:           ru.Utime.Sec*1000 + ru.Utime.Usec/1000,
			SysMs:            ru.Stime.Sec*1000 + ru.Stime.Usec/1000,
			MaxRSSKB:         ru.Maxrss,
			MinorFaults:      ru.Minflt,
			MajorFaults:      ru.Majflt,
			VoluntaryCtxSw:   ru.Nvcsw,
			InvoluntaryCtxSw: ru.Nivcsw,
		}
	}
	if c.cg != nil {
		cs := c.cg.stats()
		res.Rusage.MemoryPeakKB = cs.memoryPeak / 1024
		res.Rusage.OOMKills = cs.oomKills
	}
	return nil
}

// failure reads the child's failure report, if it wrote one: then the
// program never ran, and res says why. sendErr is the configure's.
func (c *stage2Child) failure(res *guest.Result, sendErr error) error {
	var fail stage2Failure
	if b, _ := io.ReadAll(io.LimitReader(c.failR, 64<<10)); len(b) > 0 {
		if err := json.Unmarshal(b, &fail); err != nil {
			return fmt.Errorf("sandbox: unreadable failure report %.200q", b)
		}
		res.ExitCode = fail.Code
		res.Signal = ""
		return errors.New(fail.Message)
	}
	if sendErr != nil {
		// Ended (killed, most likely) while it waited for the program,
		// which never ran: not the program's status.
		res.ExitCode, res.Signal = ExitSetupFailed, ""
		return fmt.Errorf("sandbox: the stage-2 child ended before it got the program (%v): %w", c.cmd.ProcessState, sendErr)
	}
	return nil
}

// stage2Setup resolves the mount points inside the root, creating them
// when missing.
func (s *Sandbox) stage2Setup() (*stage2Setup, error) {
	proc, err := mkdirInRoot(s.Root, "proc", 0o555, IDBase, IDBase)
	if err != nil {
		return nil, err
	}
	dev, err := mkdirInRoot(s.Root, "dev", 0o755, IDBase, IDBase)
	if err != nil {
		return nil, err
	}
	return &stage2Setup{Root: s.Root, Proc: proc, Dev: dev, DevDir: s.DevDir, ShmSize: s.ShmSize}, nil
}

// stage2Config builds the child's configuration for req, creating the
// working directory when missing.
func (s *Sandbox) stage2Config(req *guest.Request) (*stage2Config, error) {
	hostname := req.Hostname
	if hostname == "" {
		hostname = guest.DefaultHostname
	}
	cwd := path.Clean("/" + req.Cwd)
	// Like runc, a missing working directory is created (owned by the
	// container's root).
	if cwd != "/" {
		if _, err := mkdirInRoot(s.Root, cwd, 0o755, IDBase, IDBase); err != nil {
			return nil, fmt.Errorf("working directory: %w", err)
		}
	}
	return &stage2Config{
		ShmSize:  s.ShmSize,
		Argv:     req.Argv,
		Env:      req.Env,
		Cwd:      cwd,
		UID:      req.UID,
		GID:      req.GID,
		Groups:   req.Groups,
		Hostname: hostname,
	}, nil
}

// outerID is the guest ID of container ID id.
func outerID(id uint32) int { return IDBase + int(id) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

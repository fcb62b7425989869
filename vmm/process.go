package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pe-project/pe/vmm/jail"
)

// stderrKept is how much of a VMM's standard error a Process keeps.
const stderrKept = 8 << 10

// killWait bounds how long Kill waits for a killed VMM to be reaped.
const killWait = 10 * time.Second

// Process is a [Machine] that is one VMM process, started by StartProcess.
type Process struct {
	vmm     string
	cmd     *exec.Cmd
	console *Ring
	stderr  *Ring
	// consoleFile is the file the VMM writes the console to, "" when it
	// writes it to its standard output.
	consoleFile string
	done        chan struct{}
	exitErr     error
	killed      atomic.Bool
	cleanups    []func()
}

// StartProcess starts l.Binary with l.Args in a process group of its own,
// killed with SIGKILL should pe die first, with standard input from
// l.Stdin (/dev/null when nil), standard output kept as the guest console (unless
// l.ConsoleFile is set), standard error kept for error messages. The
// cleanups registered on l run once the process has exited.
func StartProcess(l *Launch) (*Process, error) {
	if l.Binary == "" {
		return nil, errors.New("no VMM binary")
	}
	if l.Log == nil {
		l.Log = slog.New(slog.DiscardHandler)
	}
	p := &Process{
		vmm:         l.VMM,
		console:     NewRing(ConsoleLogSize),
		stderr:      NewRing(stderrKept),
		consoleFile: l.ConsoleFile,
		done:        make(chan struct{}),
	}
	cmd, alive, err := command(l)
	if err != nil {
		return nil, err
	}
	var out io.Writer = p.console
	if l.Config != nil && l.Config.Console != nil {
		out = io.MultiWriter(p.console, &forgiving{w: l.Config.Console})
	}
	if p.consoleFile == "" {
		cmd.Stdout = out
	}
	cmd.Stderr = p.stderr
	cmd.Stdin = l.Stdin
	// A VMM's children (none expected) must not keep Wait waiting for the
	// output pipes once the VMM itself is gone.
	cmd.WaitDelay = 2 * time.Second
	p.cmd = cmd
	err = cmd.Start()
	if alive != nil {
		// The trampoline holds the read end now; pe keeps the write end
		// open until the VMM has exited.
		cmd.ExtraFiles[len(cmd.ExtraFiles)-1].Close()
		if err != nil {
			alive.Close()
		} else {
			l.OnCleanup(func() { alive.Close() })
		}
	}
	if err != nil {
		return nil, err
	}
	p.cleanups = l.takeCleanups()
	go p.wait(out)
	l.Log.Debug("vmm started", "vmm", l.VMM, "pid", cmd.Process.Pid, "args", l.Args)
	return p, nil
}

// command returns the command running the VMM: directly, or through the
// jail's trampoline when l.Jail is set, with the write end of the pipe
// that tells the trampoline pe is alive.
func command(l *Launch) (*exec.Cmd, *os.File, error) {
	if l.Jail == nil {
		cmd := exec.Command(l.Binary, l.Args...)
		cmd.ExtraFiles = l.ExtraFiles
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		return cmd, nil, nil
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	s := *l.Jail
	s.Binary, s.Args = l.Binary, l.Args
	s.AliveFD = 3 + len(l.ExtraFiles)
	cmd, err := jail.Command(&s)
	if err != nil {
		pr.Close()
		pw.Close()
		return nil, nil, err
	}
	cmd.ExtraFiles = append(slices.Clip(l.ExtraFiles), pr)
	return cmd, pw, nil
}

// wait reaps the process, keeps the end of a console file and runs the
// cleanups.
func (p *Process) wait(out io.Writer) {
	err := p.cmd.Wait()
	if p.consoleFile != "" {
		if b, rerr := readTail(p.consoleFile, ConsoleLogSize); rerr == nil {
			out.Write(b)
		}
	}
	p.exitErr = err
	for i := len(p.cleanups) - 1; i >= 0; i-- {
		p.cleanups[i]()
	}
	p.cleanups = nil
	close(p.done)
}

// Wait implements Machine.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.result()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Done is closed once the process has exited and its files are gone.
func (p *Process) Done() <-chan struct{} { return p.done }

func (p *Process) result() error {
	if p.exitErr == nil {
		return nil
	}
	return &ExitError{VMM: p.vmm, Err: p.exitErr, Killed: p.killed.Load(), Stderr: string(p.stderr.Bytes())}
}

// Kill implements Machine.
func (p *Process) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.killed.Store(true)
	// The VMM leads its own process group: kill the group, in case it has
	// helpers.
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("%s (pid %d) still running %v after SIGKILL", p.vmm, p.cmd.Process.Pid, killWait)
	}
}

// ConsoleLog implements Machine.
func (p *Process) ConsoleLog() []byte {
	if p.consoleFile != "" {
		select {
		case <-p.done:
		default:
			if b, err := readTail(p.consoleFile, ConsoleLogSize); err == nil {
				return b
			}
		}
	}
	return p.console.Bytes()
}

// Stderr returns the end of the VMM's standard error.
func (p *Process) Stderr() []byte { return p.stderr.Bytes() }

// PID implements Machine.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// forgiving writes to w until w fails once, then drops everything: a
// broken --debug terminal must not stop the console capture.
type forgiving struct {
	w      io.Writer
	mu     sync.Mutex
	failed bool
}

func (f *forgiving) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.failed {
		if _, err := f.w.Write(p); err != nil {
			f.failed = true
		}
	}
	return len(p), nil
}

// readTail returns the last n bytes of the file at path.
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(fi.Size()-n, 0)
	b := make([]byte, fi.Size()-off)
	k, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:k], nil
}

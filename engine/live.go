package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/guest"
)

// Live streams a run while it goes: the program's output as it writes
// it, its standard input, signals and terminal while it runs. It travels
// on the VM's data channel (see guest/stream.go); the run's result does
// not: RunResult is the same with or without Live, and nothing the guest
// sends on the channel can end the run or change its result.
//
// Every field is optional; the zero Live streams nothing.
type Live struct {
	// Stdout and Stderr receive the program's stdout and stderr as it
	// writes them, each in order, each exactly once. Writes come from
	// one goroutine of the engine, never at the same time, in the order
	// the guest wrote the two streams, each at most
	// guest.StreamMaxPayload bytes. A slow writer slows the program
	// down (back-pressure through the channel's credit): the engine holds
	// at most one frame (guest.StreamMaxPayload bytes) of it.
	//
	// What they receive is the result's Stdout and Stderr (the same
	// MaxOutput cap, truncated at the same byte): when Run returns a
	// result, each has received exactly RunResult.Stdout (Stderr), the
	// engine writing itself, after the VM is gone, whatever the channel
	// did not deliver (a channel that broke, or a guest that never opened
	// it). Should the channel have delivered bytes the result does not
	// hold (a guest that lied), the engine logs it and writes nothing
	// more. When Run fails, they may have received part of the output.
	//
	// A writer's error stops the stream to that writer (logged); the run
	// goes on. A nil writer discards its stream.
	Stdout, Stderr io.Writer
	// Stdin, when set, is the program's standard input, streamed while
	// it runs (RunRequest.Stdin must then be nil): read as the program
	// consumes it (at most the guest's credit ahead), its EOF the
	// program's EOF. Run does not wait for a Read in progress when the
	// run ends: a reader that blocks (a terminal) may see one more Read
	// after Run returns. Without Stdin (and RunRequest.Stdin) the
	// program's stdin is /dev/null.
	Stdin io.Reader
	// Signals, when set, are forwarded to the program as they come, until
	// the run ends (the engine never closes it). The program is PID 1 of
	// its PID namespace: as in a container, a signal it has no handler
	// for, other than SIGKILL and SIGSTOP, does not end it, so a caller
	// that wants to stop it for sure cancels Run's context (which ends
	// the VM).
	Signals <-chan syscall.Signal
	// TTY, when set, runs the program on a pseudo-terminal in the guest
	// (as docker run -t): stdin, stdout and stderr are the terminal, so
	// everything comes on Stdout. Not implemented yet: Run refuses it with
	// ErrTTYUnsupported.
	TTY *TTY
	// OnStart, when set, is called once the guest reports the program
	// started (informational: a guest that never says so still runs).
	OnStart func()
}

// TTY is the terminal of a run with Live.TTY.
type TTY struct {
	// Rows and Cols are the terminal's initial size (both > 0).
	Rows, Cols uint16
	// Resize, when set, gives the terminal's new sizes; each is sent to
	// the guest, which resizes the program's terminal (SIGWINCH).
	Resize <-chan WindowSize
}

// WindowSize is a terminal's size in characters.
type WindowSize = guest.WindowSize

// ErrTTYUnsupported is returned by Run for a run with Live.TTY until the
// guest's pseudo-terminal is implemented.
var ErrTTYUnsupported = errors.New("a terminal for the program (Live.TTY) is not implemented yet")

// streamRequest is what the guest is asked to do with the data channel
// for live (nil: nothing).
func streamRequest(live *Live) *guest.StreamRequest {
	if live == nil {
		return nil
	}
	s := &guest.StreamRequest{Output: live.Stdout != nil || live.Stderr != nil, Stdin: live.Stdin != nil}
	if live.TTY != nil {
		s.TTY = &guest.WindowSize{Rows: live.TTY.Rows, Cols: live.TTY.Cols}
	}
	return s
}

// liveDrainWait bounds the wait, once the VM is gone, for the data
// channel's last bytes to reach the caller's writers (which may be slow:
// the time is theirs, but a channel whose end something else holds open
// must not hold the run).
const liveDrainWait = 30 * time.Second

// liveStream is a run's end of the data channel.
type liveStream struct {
	hs  *hostStream
	log *slog.Logger
	// done ends the signal forwarder.
	done chan struct{}
}

// startLive makes the data channel of a run with live: a socket pair
// whose one end the VMM inherits (returned; the caller closes it once
// the VM has started) and whose other the engine serves.
func (e *Engine) startLive(live *Live) (*liveStream, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("data channel socket pair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "stream")
	theirs := os.NewFile(uintptr(fds[1]), "stream-vmm")
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, nil, fmt.Errorf("data channel: %w", err)
	}
	ls := &liveStream{log: e.log, done: make(chan struct{})}
	sigs := make(chan int)
	cfg := hostStreamConfig{
		Stdout: live.Stdout, Stderr: live.Stderr, Stdin: live.Stdin,
		Signals: sigs, OnStart: live.OnStart, Log: e.log,
	}
	if live.TTY != nil {
		cfg.Resize = live.TTY.Resize
	}
	ls.hs = startHostStream(conn, cfg)
	if live.Signals != nil {
		go func() {
			for {
				select {
				case s := <-live.Signals:
					select {
					case sigs <- int(s):
					case <-ls.done:
						return
					}
				case <-ls.done:
					return
				}
			}
		}()
	}
	return ls, theirs, nil
}

// drain waits, the VM gone, for the channel's last frames to be
// delivered (bounded by liveDrainWait and ctx).
func (ls *liveStream) drain(ctx context.Context) {
	if ls == nil {
		return
	}
	t := time.NewTimer(liveDrainWait)
	defer t.Stop()
	select {
	case <-ls.hs.Done():
	case <-t.C:
		ls.log.Warn("the data channel did not end with the VM; stopped")
	case <-ctx.Done():
	}
	ls.stop()
	// The reader ends at once, unless it is writing to a slow writer.
	select {
	case <-ls.hs.Done():
	case <-time.After(time.Second):
	}
}

// complete writes what the channel did not deliver of res's output.
func (ls *liveStream) complete(res *RunResult) {
	if ls == nil {
		return
	}
	ls.hs.Complete(res.Stdout, res.Stderr)
}

// stop ends the stream (it may be called more than once).
func (ls *liveStream) stop() {
	if ls == nil {
		return
	}
	select {
	case <-ls.done:
	default:
		close(ls.done)
	}
	// Not waiting for Done: a Write of the caller's in progress ends
	// when the caller's writer lets it.
	ls.hs.Stop()
}

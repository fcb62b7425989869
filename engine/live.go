package engine

import (
	"errors"
	"io"
	"syscall"

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
	// the guest wrote the two streams. A slow writer slows the program
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
	s := &guest.StreamRequest{Stdin: live.Stdin != nil}
	if live.TTY != nil {
		s.TTY = &guest.WindowSize{Rows: live.TTY.Rows, Cols: live.TTY.Cols}
	}
	return s
}

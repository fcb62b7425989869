package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/term"

	"github.com/pe-project/pe/engine"
)

// signalHandler, when set, sees SIGINT and SIGTERM before NotifyContext's
// context does (see takeSignals).
var (
	signalMu      sync.Mutex
	signalHandler func(os.Signal) bool
)

// NotifyContext returns a context canceled by the first SIGINT or
// SIGTERM, as signal.NotifyContext does, unless a command has taken the
// signals over (pe run forwards them to its program): its handler sees
// each first, and the context is canceled when it does not take one. The
// stop function lets the signals have their default effect again.
func NotifyContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	c := make(chan os.Signal, 1)
	signal.Notify(c, os.Interrupt, syscall.SIGTERM)
	go func() {
		for {
			select {
			case s := <-c:
				signalMu.Lock()
				h := signalHandler
				signalMu.Unlock()
				if h != nil && h(s) {
					continue
				}
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return ctx, func() {
		signal.Stop(c)
		cancel()
	}
}

// takeSignals has h see SIGINT and SIGTERM first (h returns whether it
// took the signal) until release is called.
func takeSignals(h func(os.Signal) bool) (release func()) {
	signalMu.Lock()
	signalHandler = h
	signalMu.Unlock()
	return func() {
		signalMu.Lock()
		signalHandler = nil
		signalMu.Unlock()
	}
}

// errNotATTY is -t's error without a terminal on standard input, in
// docker's words.
var errNotATTY = errors.New("the input device is not a TTY")

// runLive is what pe run streams: the program's output to pe's as it
// comes (not with --json), pe's standard input with -i, and SIGINT and
// SIGTERM, forwarded to the program; a second signal ends the VM. stdin
// is the -i input (nil for none). With tty (-t), the program runs on a
// terminal of pe's terminal's size, following its resizes; with -i too,
// pe's terminal is in raw mode for the run, so that what is typed,
// Ctrl-C included, reaches the program's terminal as bytes (its line
// discipline makes the signals, as under docker run -it), and SIGINT,
// SIGTERM or SIGHUP to pe end the VM through stop. The caller calls
// release when the run is over, on every path: it restores the terminal
// (calling it again does nothing).
func runLive(cmd *commandIO, asJSON bool, stdin io.Reader, tty bool, stop func()) (_ *engine.Live, release func(), _ error) {
	live := &engine.Live{Stdin: stdin}
	if !asJSON {
		live.Stdout, live.Stderr = cmd.out, cmd.errOut
	}
	if !tty {
		return live, forwardSignals(cmd, live), nil
	}
	in, ok := cmd.in.(*os.File)
	if !ok || !isTerminal(in) {
		return nil, nil, errNotATTY
	}
	fd := int(in.Fd())
	resize := make(chan engine.WindowSize, 1)
	live.TTY = &engine.TTY{Resize: resize}
	live.TTY.Rows, live.TTY.Cols = terminalSize(fd)
	var cleanups []func()
	var once sync.Once
	release = func() {
		once.Do(func() {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		})
	}
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	done := make(chan struct{})
	cleanups = append(cleanups, func() { signal.Stop(winch); close(done) })
	go followResizes(fd, winch, resize, done)
	if stdin == nil {
		// -t alone: the terminal stays as it is, its Ctrl-C pe's SIGINT,
		// forwarded as without -t.
		cleanups = append(cleanups, forwardSignals(cmd, live))
		return live, release, nil
	}
	state, err := term.MakeRaw(fd)
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("raw mode for the terminal: %w", err)
	}
	cleanups = append(cleanups, func() { term.Restore(fd, state) })
	// The terminal's keys come as bytes now: a signal to pe is someone
	// else's wish to end it. SIGINT and SIGTERM cancel pe's context
	// (NotifyContext); SIGHUP, whose default would end pe with the
	// terminal left raw, stops the run too.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	hupDone := make(chan struct{})
	cleanups = append(cleanups, func() { signal.Stop(hup); close(hupDone) })
	go func() {
		select {
		case <-hup:
			stop()
		case <-hupDone:
		}
	}()
	return live, release, nil
}

// terminalSize is the size of the terminal fd, 24x80 when it has none.
func terminalSize(fd int) (rows, cols uint16) {
	w, h, err := term.GetSize(fd)
	if err != nil || w <= 0 || h <= 0 || w > 0xffff || h > 0xffff {
		return 24, 80
	}
	return uint16(h), uint16(w)
}

// followResizes sends the terminal's size to resize at each SIGWINCH,
// until done; a size the engine has not taken yet is replaced by the
// newer one.
func followResizes(fd int, winch <-chan os.Signal, resize chan engine.WindowSize, done <-chan struct{}) {
	for {
		select {
		case <-winch:
		case <-done:
			return
		}
		rows, cols := terminalSize(fd)
		ws := engine.WindowSize{Rows: rows, Cols: cols}
		for {
			select {
			case resize <- ws:
			default:
				select {
				case <-resize:
				default:
				}
				continue
			}
			break
		}
	}
}

// forwardSignals forwards pe's first SIGINT or SIGTERM to the program
// (live.Signals); the second ends the VM. It returns what stops it.
func forwardSignals(cmd *commandIO, live *engine.Live) (release func()) {
	sigs := make(chan syscall.Signal, 4)
	live.Signals = sigs
	var mu sync.Mutex
	seen := 0
	return takeSignals(func(s os.Signal) bool {
		mu.Lock()
		defer mu.Unlock()
		seen++
		if seen > 1 {
			return false // the second one ends the VM
		}
		select {
		case sigs <- s.(syscall.Signal):
		default:
		}
		if isTerminal(cmd.errOut) {
			fmt.Fprintf(cmd.errOut, "pe: %v forwarded to the program; send it again to stop the VM\n", s)
		}
		return true
	})
}

// commandIO is a command's standard streams.
type commandIO struct {
	in          io.Reader
	out, errOut io.Writer
}

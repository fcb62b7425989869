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

	"golang.org/x/sys/unix"

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
// is the -i input (nil for none). The caller calls release when the run
// is over.
func runLive(cmd *commandIO, asJSON bool, stdin io.Reader, tty bool) (_ *engine.Live, release func(), _ error) {
	live := &engine.Live{Stdin: stdin}
	if !asJSON {
		live.Stdout, live.Stderr = cmd.out, cmd.errOut
	}
	if tty {
		if !isTerminal(cmd.in) {
			return nil, nil, errNotATTY
		}
		ws, err := unix.IoctlGetWinsize(int(cmd.in.(*os.File).Fd()), unix.TIOCGWINSZ)
		if err != nil || ws.Row == 0 || ws.Col == 0 {
			ws = &unix.Winsize{Row: 24, Col: 80}
		}
		live.TTY = &engine.TTY{Rows: ws.Row, Cols: ws.Col}
	}
	sigs := make(chan syscall.Signal, 4)
	live.Signals = sigs
	var mu sync.Mutex
	seen := 0
	release = takeSignals(func(s os.Signal) bool {
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
	return live, release, nil
}

// commandIO is a command's standard streams.
type commandIO struct {
	in          io.Reader
	out, errOut io.Writer
}

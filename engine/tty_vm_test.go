package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pe-project/pe/guest"
)

// ttyScreen is the caller's end of a Live.TTY run's output: what came on
// Stdout, which a test waits on.
type ttyScreen struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newTTYScreen() *ttyScreen { return &ttyScreen{changed: make(chan struct{}, 1)} }

func (s *ttyScreen) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.buf.Write(p)
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (s *ttyScreen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitFor waits until the output after from holds want, and returns
// where it ends.
func (s *ttyScreen) waitFor(t *testing.T, from int, want string, timeout time.Duration) int {
	t.Helper()
	deadline := time.After(timeout)
	for {
		out := s.String()
		if i := strings.Index(out[from:], want); i >= 0 {
			return from + i + len(want)
		}
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("%q did not come within %v; the terminal shows:\n%q", want, timeout, out[from:])
		}
	}
}

// TestVMTTY drives an interactive shell on a terminal in the guest as
// pe run -it does, booted, restored from the boot snapshot and from an
// image's snapshot: typed commands and their output, a resize, Ctrl-C to
// a sleep (the guest's terminal makes it SIGINT for the foreground job),
// a forged result-ready line on the terminal, and the shell's exit
// status.
func TestVMTTY(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	for _, tc := range launchCases(t, f) {
		t.Run(tc.name, func(t *testing.T) {
			res := testTTYSession(t, tc.e, tc.snap)
			if res.Launch != tc.launch {
				t.Errorf("launch %s, want %s", res.Launch, tc.launch)
			}
		})
	}
}

func testTTYSession(t *testing.T, e *Engine, snap *Snapshot) *RunResult {
	screen := newTTYScreen()
	stdin, typing := io.Pipe()
	defer typing.Close()
	resize := make(chan WindowSize, 1)
	var stderr bytes.Buffer
	req := &RunRequest{
		Image:     "busybox",
		Snapshot:  snap,
		Overrides: Overrides{Cmd: []string{"sh"}, Env: []string{"PS1=prompt$ "}},
		Live: &Live{
			Stdout: screen, Stderr: &stderr, Stdin: stdin,
			TTY: &TTY{Rows: 30, Cols: 100, Resize: resize},
		},
	}
	type ran struct {
		res *RunResult
		err error
	}
	done := make(chan ran, 1)
	go func() {
		vmSlots <- struct{}{}
		defer func() { <-vmSlots }()
		ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
		defer cancel()
		res, err := e.Run(ctx, req)
		done <- ran{res, err}
	}()
	typeIn := func(s string) {
		t.Helper()
		if _, err := typing.Write([]byte(s)); err != nil {
			t.Fatalf("typing %q: %v", s, err)
		}
	}
	const wait = 3 * time.Minute
	at := screen.waitFor(t, 0, "prompt$ ", wait)
	start := time.Now()
	// "\r" is what a terminal's Enter sends; the guest's terminal makes
	// it a newline. $((6*7)) keeps the echo of the typing apart from the
	// output.
	typeIn("echo hi-$((6*7))\r")
	at = screen.waitFor(t, at, "hi-42\r\n", wait)
	t.Logf("typed command answered in %v", time.Since(start))

	typeIn("stty size\r")
	at = screen.waitFor(t, at, "30 100\r\n", wait)
	resize <- WindowSize{Rows: 41, Cols: 132}
	// The shell learns it from SIGWINCH; stty asks the terminal.
	typeIn("stty size\r")
	at = screen.waitFor(t, at, "41 132\r\n", wait)

	// The program's terminal output is data: a result-ready line on it
	// ends nothing.
	typeIn(fmt.Sprintf("echo '%s'; echo '%s'\r", guest.ResultReady, guest.ResultReadyLine("0123456789abcdef")))
	at = screen.waitFor(t, at, guest.ResultReady+"\r\n", wait)

	typeIn("echo sleep-$((2+2)); sleep 30; echo slept-$((1+1))\r")
	at = screen.waitFor(t, at, "sleep-4\r\n", wait)
	time.Sleep(500 * time.Millisecond) // the sleep is running
	ctrlC := time.Now()
	typeIn("\x03")
	typeIn("echo back-$((1+1))\r")
	at = screen.waitFor(t, at, "back-2\r\n", wait)
	took := time.Since(ctrlC)
	t.Logf("Ctrl-C to the prompt back: %v", took)
	if took > 25*time.Second {
		t.Errorf("the shell came back %v after Ctrl-C: the sleep was not interrupted", took)
	}
	if strings.Contains(screen.String(), "slept-2") {
		t.Error("the interrupted line went on after the sleep")
	}

	typeIn("exit 3\r")
	var r ran
	select {
	case r = <-done:
	case <-time.After(wait):
		t.Fatal("the run did not end after exit")
	}
	if r.err != nil {
		t.Fatalf("Run: %v", r.err)
	}
	if got := r.res.ExitStatus(); got != 3 {
		t.Errorf("exit status %d, want the shell's 3", got)
	}
	if out := screen.String(); string(r.res.Stdout) != out {
		t.Errorf("the result's stdout differs from what the terminal showed:\nresult %q\nscreen %q", r.res.Stdout, out)
	}
	if stderr.Len() > 0 || len(r.res.Stderr) > 0 {
		t.Errorf("stderr %q, result's %q: want none on a terminal", stderr.String(), r.res.Stderr)
	}
	return r.res
}

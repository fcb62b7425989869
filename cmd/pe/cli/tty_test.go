package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/engine"
)

// openPTY opens a pseudo-terminal of the host, standing in for the
// user's terminal: the test types on the primary end, pe gets the
// secondary as its standard streams.
func openPTY(t *testing.T, rows, cols uint16) (primary, secondary *os.File) {
	t.Helper()
	p, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	fd := int(p.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return p, s
}

// screen collects what the primary end of a pseudo-terminal reads.
type screen struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *screen) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func (s *screen) read(p *os.File) {
	b := make([]byte, 4096)
	for {
		n, err := p.Read(b)
		s.mu.Lock()
		s.buf.Write(b[:n])
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// waitFor waits until what the screen shows after from holds want and
// returns where it ends.
func (s *screen) waitFor(t *testing.T, from int, want string) int {
	t.Helper()
	deadline := time.Now().Add(4 * time.Minute)
	for time.Now().Before(deadline) {
		out := s.String()
		if i := strings.Index(out[from:], want); i >= 0 {
			return from + i + len(want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%q did not come; the terminal shows %q", want, s.String()[from:])
	return 0
}

// TestRunTTYVM runs pe run -it on a pseudo-terminal as a user's: the
// terminal is raw while the shell runs (what is typed reaches the guest's
// terminal, which echoes it), the guest's terminal follows a resize,
// exit's status is pe's, and the terminal's mode is restored at the end.
func TestRunTTYVM(t *testing.T) {
	dir := vmSetup(t)
	img := filepath.Join(dir, "busybox.erofs")
	primary, secondary := openPTY(t, 25, 90)
	var scr screen
	go scr.read(primary)
	before, err := unix.IoctlGetTermios(int(secondary.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if before.Lflag&unix.ECHO == 0 || before.Lflag&unix.ICANON == 0 {
		t.Fatalf("the test terminal starts without echo or canonical mode: %#x", before.Lflag)
	}

	cmd := New()
	cmd.SetArgs([]string{"run", "--accel", "tcg", "-it", "-e", "PS1=prompt$ ", img, "sh"})
	cmd.SetIn(secondary)
	cmd.SetOut(secondary)
	cmd.SetErr(secondary)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(t.Context()) }()

	at := scr.waitFor(t, 0, "prompt$ ")
	during, err := unix.IoctlGetTermios(int(secondary.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if during.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) != 0 {
		t.Errorf("the terminal is not raw during the run: lflag %#x", during.Lflag)
	}
	typeIn := func(s string) {
		t.Helper()
		if _, err := primary.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	typeIn("echo hi-$((6*7))\r")
	at = scr.waitFor(t, at, "hi-42\r\n")
	typeIn("busybox stty size\r")
	at = scr.waitFor(t, at, "25 90\r\n")
	// The pseudo-terminal is not the test's controlling terminal: its
	// SIGWINCH comes by hand.
	if err := unix.IoctlSetWinsize(int(primary.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 50, Col: 160}); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGWINCH)
	// The resize travels as the shell reads its next line: ask until
	// the guest's terminal has it.
	for i := 0; ; i++ {
		typeIn("busybox stty size\r")
		next := scr.waitFor(t, at, "\r\nprompt$ ")
		if strings.Contains(scr.String()[at:next], "50 160\r\n") {
			at = next
			break
		}
		if i == 20 {
			t.Fatalf("the guest's terminal did not follow the resize: %q", scr.String()[at:next])
		}
		at = next
		time.Sleep(200 * time.Millisecond)
	}
	typeIn("exit 3\r")
	select {
	case err = <-done:
	case <-time.After(4 * time.Minute):
		t.Fatal("pe run did not end after exit")
	}
	var st *ExitStatus
	if !errors.As(err, &st) || st.Code != 3 {
		t.Errorf("error %v, want exit status 3", err)
	}
	after, err := unix.IoctlGetTermios(int(secondary.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("the terminal's mode was not restored:\nbefore %+v\nafter  %+v", before, after)
	}
}

// TestRunTTYFlags runs pe run -t and -it on a host pseudo-terminal with
// an engine that records the request: the terminal's size and stdin go
// with the run as asked, -it's terminal is raw during the run, -t's is
// left alone, and the terminal is restored after the run whether it
// failed or not; -it's default time limit is an interactive one.
func TestRunTTYFlags(t *testing.T) {
	for _, tc := range []struct {
		name        string
		args        []string
		fail        bool
		hup         bool // SIGHUP to pe during the run
		wantRaw     bool
		wantStdin   bool
		wantTimeout time.Duration
	}{
		{"-it", []string{"-it"}, false, false, true, true, interactiveTimeout},
		{"-it, the VM failing", []string{"-it"}, true, false, true, true, interactiveTimeout},
		{"-it, SIGHUP stops the run", []string{"-it"}, true, true, true, true, interactiveTimeout},
		{"-it --timeout", []string{"-it", "--timeout", "5s"}, false, false, true, true, 5 * time.Second},
		{"-t alone", []string{"-t"}, false, false, false, false, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("PE_CACHE_DIR", t.TempDir())
			_, secondary := openPTY(t, 25, 90)
			fd := int(secondary.Fd())
			before, err := unix.IoctlGetTermios(fd, unix.TCGETS)
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				raw     bool
				tty     *engineTTY
				stdin   bool
				timeout time.Duration
			}
			a := &app{lookupEnv: func(string) (string, bool) { return "", false }}
			a.runEngine = func(ctx context.Context, opts engine.Options, req *engine.RunRequest) (*engine.RunResult, error) {
				during, err := unix.IoctlGetTermios(fd, unix.TCGETS)
				if err != nil {
					return nil, err
				}
				got.raw = during.Lflag&(unix.ECHO|unix.ICANON|unix.ISIG) == 0
				if l := req.Live; l != nil && l.TTY != nil {
					got.tty = &engineTTY{l.TTY.Rows, l.TTY.Cols}
					got.stdin = l.Stdin != nil
				}
				got.timeout = req.Timeout
				if tc.hup {
					syscall.Kill(os.Getpid(), syscall.SIGHUP)
					select {
					case <-ctx.Done():
						return nil, ctx.Err()
					case <-time.After(time.Minute):
						return nil, errors.New("SIGHUP did not stop the run")
					}
				}
				if tc.fail {
					return nil, errors.New("the VM failed")
				}
				return &engine.RunResult{}, nil
			}
			cmd := newRoot(a)
			cmd.SetArgs(append(append([]string{"run"}, tc.args...), "img.erofs", "sh"))
			cmd.SetIn(secondary)
			cmd.SetOut(secondary)
			cmd.SetErr(secondary)
			err = cmd.ExecuteContext(t.Context())
			if (err != nil) != tc.fail || tc.hup && !errors.Is(err, context.Canceled) {
				t.Errorf("pe run: %v", err)
			}
			if diff := cmp.Diff(&engineTTY{25, 90}, got.tty); diff != "" {
				t.Errorf("terminal (-want +got):\n%s", diff)
			}
			if got.raw != tc.wantRaw || got.stdin != tc.wantStdin || got.timeout != tc.wantTimeout {
				t.Errorf("raw %v, stdin %v, timeout %v; want %v, %v, %v", got.raw, got.stdin, got.timeout, tc.wantRaw, tc.wantStdin, tc.wantTimeout)
			}
			after, err := unix.IoctlGetTermios(fd, unix.TCGETS)
			if err != nil {
				t.Fatal(err)
			}
			if *after != *before {
				t.Errorf("the terminal's mode was not restored:\nbefore %+v\nafter  %+v", before, after)
			}
		})
	}
}

// engineTTY is a terminal's size as a test compares it.
type engineTTY struct{ Rows, Cols uint16 }

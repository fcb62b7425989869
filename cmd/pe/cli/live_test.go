package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/engine/enginetest"
)

// runCLIEnv makes the test binary run pe, as main does (runCLIMain).
const runCLIEnv = "PE_TEST_RUN_CLI"

// runCLIMain is cmd/pe's main: pe's command line, its signals, its exit
// status.
func runCLIMain() int {
	ctx, stop := NotifyContext(context.Background())
	context.AfterFunc(ctx, stop)
	err := New().ExecuteContext(ctx)
	var st *ExitStatus
	if errors.As(err, &st) {
		return st.Code
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = errors.New("interrupted")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pe: %v\n", err)
		return 125
	}
	return 0
}

// peProcess starts pe (this test binary as pe) with args, its stdin
// from stdin, and returns it with its stdout as lines.
func peProcess(t *testing.T, stdin io.Reader, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runCLIEnv+"=1")
	cmd.Stdin = stdin
	cmd.Stderr = &strings.Builder{}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, bufio.NewScanner(out)
}

// exitCode waits for cmd (at most two minutes) and returns its status.
func exitCode(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(2 * time.Minute):
		t.Fatalf("pe %q did not end; stderr: %s", cmd.Args[1:], cmd.Stderr)
		return 0
	}
}

// endlessYes is yes(1): y lines for ever.
type endlessYes struct{}

func (endlessYes) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "y\n"[i%2]
	}
	return len(p) &^ 1, nil
}

// TestRunLiveVM runs pe as a process: yes | pe run -i ... head -n 3 ends;
// a line printed before a sleep comes while it sleeps, and SIGTERM to pe
// reaches the program; a second SIGTERM stops a program that ignores the
// first, and no VMM is left behind.
func TestRunLiveVM(t *testing.T) {
	dir := vmSetup(t)
	img := filepath.Join(dir, "busybox.erofs")
	// Orphans of pe's (a VMM it leaked) become this process's children.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}

	t.Run("yes|head", func(t *testing.T) {
		pr, pw := io.Pipe()
		go io.Copy(pw, endlessYes{})
		defer pr.Close()
		cmd, out := peProcess(t, pr, "run", "--accel", "tcg", "-i", img, "head", "-n", "3")
		var lines []string
		for out.Scan() {
			lines = append(lines, out.Text())
		}
		if code := exitCode(t, cmd); code != 0 || strings.Join(lines, ",") != "y,y,y" {
			t.Errorf("exit %d, stdout %q; stderr: %s", code, lines, cmd.Stderr)
		}
	})

	t.Run("SIGTERM", func(t *testing.T) {
		cmd, out := peProcess(t, nil, "run", "--accel", "tcg", "--timeout", "90s", img, "sh", "-c", "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 60 & wait")
		if !out.Scan() || out.Text() != "ready" {
			t.Fatalf("first line %q; stderr: %s", out.Text(), cmd.Stderr)
		}
		// Printed before the sleep, read while the program sleeps.
		start := time.Now()
		cmd.Process.Signal(syscall.SIGTERM)
		rest, _ := io.ReadAll(readerOf(out))
		if code := exitCode(t, cmd); code != 3 || string(rest) != "got TERM\n" {
			t.Errorf("exit %d, then stdout %q; want 3 and the trap's line; stderr: %s", code, rest, cmd.Stderr)
		}
		if d := time.Since(start); d > 45*time.Second {
			t.Errorf("pe took %v after SIGTERM", d)
		}
	})

	t.Run("SIGTERM twice", func(t *testing.T) {
		cmd, out := peProcess(t, nil, "run", "--accel", "tcg", "--timeout", "90s", img, "sh", "-c", "echo ready; exec sleep 60")
		if !out.Scan() || out.Text() != "ready" {
			t.Fatalf("first line %q; stderr: %s", out.Text(), cmd.Stderr)
		}
		// sleep, PID 1 of its container, ignores SIGTERM: the second one
		// ends the VM.
		cmd.Process.Signal(syscall.SIGTERM)
		time.Sleep(time.Second)
		cmd.Process.Signal(syscall.SIGTERM)
		if code := exitCode(t, cmd); code != 125 || !strings.Contains(fmt.Sprint(cmd.Stderr), "interrupted") {
			t.Errorf("exit %d, stderr %s; want 125, interrupted", code, cmd.Stderr)
		}
		time.Sleep(500 * time.Millisecond)
		if kids := enginetest.ChildProcesses(); len(kids) > 0 {
			t.Errorf("processes left behind: %q", kids)
		}
	})
}

// readerOf is the rest of what s reads, lines ended by newlines.
func readerOf(s *bufio.Scanner) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		for s.Scan() {
			fmt.Fprintln(pw, s.Text())
		}
		pw.Close()
	}()
	return pr
}

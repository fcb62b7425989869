package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/pe-project/pe/engine/enginetest"
)

// TestMain lets the tests run the test binary as pe itself.
func TestMain(m *testing.M) {
	if os.Getenv("PE_TEST_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	code := m.Run()
	enginetest.Cleanup()
	os.Exit(code)
}

// pe runs pe's main with args and returns its exit status and output.
func pe(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = append(os.Environ(), "PE_TEST_RUN_MAIN=1")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	default:
		t.Fatal(err)
	}
	return code, out.String(), errOut.String()
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		args       []string
		wantCode   int
		wantStderr string // prefix
	}{
		{[]string{"image", "--help"}, 0, ""},
		{[]string{"image", "cat", "/nonexistent.erofs", "x"}, 125, "pe: open /nonexistent.erofs: no such file or directory"},
		{[]string{"image", "build-erofs"}, 125, "pe: SOURCE (a directory, tar file or image) or --tar is required (see 'pe image build-erofs --help')"},
		{[]string{"image", "files", "--bogus"}, 125, "pe: unknown flag: --bogus"},
	}
	for _, tt := range tests {
		code, stdout, stderr := pe(t, tt.args...)
		if code != tt.wantCode {
			t.Errorf("pe %q: exit status %d, want %d (stderr %q)", tt.args, code, tt.wantCode, stderr)
		}
		if tt.wantCode == 0 {
			if stderr != "" || stdout == "" {
				t.Errorf("pe %q: stdout %q, stderr %q; want help on stdout only", tt.args, stdout, stderr)
			}
			continue
		}
		if !strings.HasPrefix(stderr, tt.wantStderr) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("pe %q: stderr %q, want one line starting %q", tt.args, stderr, tt.wantStderr)
		}
		if stdout != "" {
			t.Errorf("pe %q: stdout %q, want nothing", tt.args, stdout)
		}
	}
}

package main

import (
	"strings"
	"testing"
)

// TestRunExitStatus checks pe run's statuses that need no VM: 125 and one
// line when pe fails before the program runs.
func TestRunExitStatus(t *testing.T) {
	t.Setenv("PE_CACHE_DIR", t.TempDir())
	for _, tt := range []struct {
		args       []string
		wantStderr string
	}{
		{[]string{"run"}, "pe: requires at least 1 arg(s), only received 0 (see 'pe run --help')"},
		{[]string{"run", "--timeout", "soon", "busybox"}, `pe: invalid argument "soon" for "--timeout" flag`},
		{[]string{"run", "--kernel", "/nonexistent/kernel", "x.erofs", "true"}, "pe: no guest kernel in /nonexistent/kernel: run `make kernel`"},
	} {
		code, stdout, stderr := pe(t, tt.args...)
		if code != 125 || stdout != "" || !strings.HasPrefix(stderr, tt.wantStderr) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("pe %q: status %d, stdout %q, stderr %q; want 125 and one line starting %q", tt.args, code, stdout, stderr, tt.wantStderr)
		}
	}
}

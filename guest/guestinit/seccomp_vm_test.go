package guestinit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestVMSeccomp runs busybox and the seccomp probe (guest/seccomp/testdata)
// in a VM: what docker's default profile allows works (a shell, pipes,
// forks, files, sockets), what it denies fails with EPERM, i386 calls
// included. Without the filter (see Stage2) the denied calls get the
// kernel's own answers, which differ.
func TestVMSeccomp(t *testing.T) {
	f := vmSetup(t)
	inputs := t.TempDir()
	build := exec.CommandContext(t.Context(), "go", "build", "-o", filepath.Join(inputs, "probe"), "../seccomp/testdata/probe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v\n%s", err, out)
	}
	vmSlots <- struct{}{}
	defer func() { <-vmSlots }()
	r, console := f.boot(t, shReq(`echo piped | cat; ls / | grep -c etc; (echo forked-$((6*7))); cat /etc/motd; `+
		`P=/run/pe/input/probe; $P; $P int80; echo done`), nil, inputs)
	if r.Result.ExitCode != 0 {
		t.Fatalf("exit %d error %q stderr %q\nconsole:\n%s", r.Result.ExitCode, r.Result.Error, r.Stderr, console)
	}
	lines := strings.Split(strings.TrimSpace(string(r.Stdout)), "\n")
	if d := cmp.Diff([]string{"piped", "1", "forked-42", "root owned"}, lines[:min(4, len(lines))]); d != "" {
		t.Errorf("busybox (-want +got):\n%s", d)
	}
	got := map[string]string{}
	for _, line := range lines[min(4, len(lines)):] {
		if k, v, ok := strings.Cut(line, ": "); ok {
			got[k] = v
		}
	}
	want := map[string]string{
		"getpid":              "ok",
		"pipe":                "ok",
		"fork-exec":           "ok",
		"clone-newuser":       "EPERM", // the kernel allows it here: pe's sandbox nests user namespaces
		"clone3":              "ENOSYS",
		"unshare":             "EPERM",
		"setns":               "EPERM",
		"mount":               "EPERM",
		"umount2":             "EPERM",
		"chroot":              "ENOENT",
		"keyctl":              "EPERM",
		"add_key":             "EPERM",
		"reboot":              "EPERM",
		"kexec_load":          "EPERM", // the kernel says so too: CAP_SYS_BOOT of the VM
		"bpf":                 "EPERM",
		"perf_event_open":     "EPERM",
		"personality-query":   "ok",
		"personality-no-aslr": "EPERM",
		"socket-inet":         "ok",
		"socket-unix":         "ok",
		"socket-vsock":        "EPERM",
		"socket-alg":          "EPERM",
		"int80-getpid":        "ok",
		"int80-keyctl":        "EPERM",
		"int80-mount":         "EPERM",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("probe in the VM (-want +got):\n%s\nstderr %q", d, r.Stderr)
	}
	if lines[len(lines)-1] != "done" {
		t.Errorf("the script did not finish: stdout %q", r.Stdout)
	}
}

package seccomp

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/pe-project/pe/guest/seccomp/dockerprofile"
	"golang.org/x/sys/unix"
)

// childEnv, set to a program's path, makes the test binary a child that
// loads the filter, as the guest's stage-2 child does, and executes the
// program with the arguments after "--".
const childEnv = "PE_SECCOMP_TEST_EXEC"

func TestMain(m *testing.M) {
	if prog := os.Getenv(childEnv); prog != "" {
		runtime.LockOSThread()
		// The guest's child holds CAP_SYS_ADMIN in its user namespace;
		// a test run by anyone else needs no_new_privs instead.
		if os.Geteuid() != 0 {
			if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(99)
			}
		}
		if err := Load(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(99)
		}
		args := os.Args[1:]
		for i, a := range args {
			if a == "--" {
				args = args[i+1:]
				break
			}
		}
		err := unix.Exec(prog, append([]string{prog}, args...), os.Environ())
		fmt.Fprintln(os.Stderr, err)
		os.Exit(98)
	}
	os.Exit(m.Run())
}

// buildProbe builds testdata/probe, static, as the guest would run it.
func buildProbe(t *testing.T) string {
	t.Helper()
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter is for x86_64")
	}
	bin := filepath.Join(t.TempDir(), "probe")
	cmd := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./testdata/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v\n%s", err, out)
	}
	return bin
}

// runProbe runs the probe with args, under the filter when filtered, and
// returns its output by check and how it ended.
func runProbe(t *testing.T, probe string, filtered bool, args ...string) (map[string]string, error) {
	t.Helper()
	var cmd *exec.Cmd
	if filtered {
		cmd = exec.CommandContext(t.Context(), os.Args[0], append([]string{"--"}, args...)...)
		cmd.Env = append(os.Environ(), childEnv+"="+probe)
	} else {
		cmd = exec.CommandContext(t.Context(), probe, args...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if stderr.Len() > 0 {
		t.Logf("probe stderr: %s", stderr.Bytes())
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok {
			got[k] = v
		}
	}
	return got, err
}

// TestFilter runs the probe under the committed filter: what docker's
// default profile allows works, what it denies fails with EPERM (clone3
// with ENOSYS, so that C libraries fall back to clone). Without the filter
// the denied calls fail otherwise, or work: the EPERMs are the filter's.
func TestFilter(t *testing.T) {
	probe := buildProbe(t)
	want := map[string]string{
		"getpid":              "ok",
		"pipe":                "ok",
		"fork-exec":           "ok",
		"clone-newuser":       "EPERM",
		"clone3":              "ENOSYS",
		"unshare":             "EPERM",
		"setns":               "EPERM",
		"mount":               "EPERM",
		"umount2":             "EPERM",
		"chroot":              "ENOENT", // allowed: CAP_SYS_CHROOT is docker's
		"keyctl":              "EPERM",
		"add_key":             "EPERM",
		"reboot":              "EPERM",
		"kexec_load":          "EPERM",
		"bpf":                 "EPERM",
		"perf_event_open":     "EPERM",
		"personality-query":   "ok",
		"personality-no-aslr": "EPERM",
		"socket-inet":         "ok",
		"socket-unix":         "ok",
		"socket-vsock":        "EPERM",
		"socket-alg":          "EPERM",
	}
	got, err := runProbe(t, probe, true)
	if err != nil {
		t.Fatalf("probe under the filter: %v", err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("under the filter (-want +got):\n%s", d)
	}
	if os.Geteuid() != 0 {
		return // the kernel's own answers below are root's
	}
	unfiltered, err := runProbe(t, probe, false)
	if err != nil {
		t.Fatalf("probe without the filter: %v", err)
	}
	for _, name := range []string{"clone-newuser", "clone3", "unshare", "setns", "mount", "umount2", "keyctl", "add_key", "reboot", "bpf", "perf_event_open", "personality-no-aslr"} {
		if unfiltered[name] == want[name] {
			t.Errorf("%s without the filter: %s too: the test does not tell the filter's answer from the kernel's", name, unfiltered[name])
		}
	}
}

// TestFilterI386 makes i386 system calls (int $0x80) under the filter:
// the same rules hold for them.
func TestFilterI386(t *testing.T) {
	probe := buildProbe(t)
	unfiltered, err := runProbe(t, probe, false, "int80")
	if err != nil || unfiltered["int80-getpid"] != "ok" {
		t.Skipf("no i386 system calls here (%v, %v)", unfiltered, err)
	}
	want := map[string]string{"int80-getpid": "ok", "int80-keyctl": "EPERM", "int80-mount": "EPERM"}
	got, err := runProbe(t, probe, true, "int80")
	if err != nil {
		t.Fatalf("probe under the filter: %v", err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("i386 calls under the filter (-want +got):\n%s", d)
	}
	for _, name := range []string{"int80-keyctl", "int80-mount"} {
		if unfiltered[name] == want[name] {
			t.Errorf("%s without the filter: %s too", name, unfiltered[name])
		}
	}
}

// TestProgramUpToDate checks the committed program against what the
// generator makes of the modules in go.mod: run go generate when it fails.
func TestProgramUpToDate(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the filter is generated on x86_64")
	}
	prog, _, err := dockerprofile.Program(dockerprofile.DefaultCaps)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(prog, program); d != "" {
		t.Errorf("zprogram_amd64.go is stale: run go generate ./guest/seccomp (-generated +committed):\n%s", d)
	}
}

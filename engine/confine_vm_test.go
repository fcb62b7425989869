package engine

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pe-project/pe/engine/enginetest"
	"github.com/pe-project/pe/vmm/jail"
	"github.com/pe-project/pe/vmm/qemu"
)

// TestVMQEMUConfined checks, from the host, the QEMU process of a booted
// run and of one restored from the boot snapshot: QEMU's seccomp sandbox,
// its own namespaces, a root without the host's files and, when the tests
// run as root, another user.
func TestVMQEMUConfined(t *testing.T) {
	f := vmSetup(t)
	for _, c := range []struct {
		name string
		boot bool
	}{{"cold", false}, {"boot-snapshot", true}} {
		t.Run(c.name, func(t *testing.T) {
			e := newTestEngine(t, f, nil)
			if c.boot {
				e.opts.BootSnapshots = true
				// The first run makes the boot snapshot (confined too),
				// the second restores it.
				run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("true")}})
			}
			done := make(chan *RunResult, 1)
			go func() {
				res, err := runErr(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("sleep 4; echo slept")}})
				if err != nil {
					t.Errorf("Run: %v", err)
				}
				done <- res
			}()
			pid := waitQEMU(t, done)
			checkConfined(t, pid, f.dir)
			if cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); c.boot != strings.Contains(string(cmdline), "\x00-incoming\x00") {
				t.Errorf("restored %v, want %v: %q", !c.boot, c.boot, cmdline)
			}
			if res := <-done; res != nil && string(res.Stdout) != "slept\n" {
				t.Errorf("stdout %q, want slept", res.Stdout)
			}
		})
	}
}

// waitQEMU returns the PID of the test's QEMU child running a machine
// (not QEMU --version), once it has had a moment to apply its sandbox,
// failing when the run ends first.
func waitQEMU(t *testing.T, done chan *RunResult) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		for _, k := range enginetest.ChildProcesses() {
			pid, comm, _ := strings.Cut(k, " ")
			cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
			if !strings.HasPrefix(comm, "qemu-system") || !strings.Contains(string(cmdline), "\x00-M\x00") {
				continue
			}
			// QEMU installs its seccomp filter once it has parsed its
			// arguments.
			for range 50 {
				if st, _ := os.ReadFile("/proc/" + pid + "/status"); strings.Contains(string(st), "Seccomp:\t2") {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			n, _ := strconv.Atoi(pid)
			return n
		}
		select {
		case res := <-done:
			done <- res
			t.Fatal("the run ended before its QEMU was seen")
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatal("no QEMU process")
	return 0
}

// checkConfined checks the QEMU process pid as confinement promises.
func checkConfined(t *testing.T, pid int, fixtureDir string) {
	t.Helper()
	proc := "/proc/" + strconv.Itoa(pid)
	cmdline, err := os.ReadFile(proc + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(cmdline), "\x00")
	if !containsPair(args, "-sandbox", qemu.SandboxOptions) {
		t.Errorf("QEMU runs without -sandbox %s: %q", qemu.SandboxOptions, args)
	}
	status, err := os.ReadFile(proc + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(string(status), want) {
			t.Errorf("QEMU's status lacks %q", want)
		}
	}
	level, why := jail.Available()
	if level == jail.LevelNone {
		t.Logf("only the sandbox is checked: %s", why)
		return
	}
	for _, line := range strings.Split(string(status), "\n") {
		if level == jail.LevelFull && (strings.HasPrefix(line, "Uid:") || strings.HasPrefix(line, "Gid:")) {
			want := strconv.Itoa(jail.UID)
			for _, id := range strings.Fields(line)[1:] {
				if id != want {
					t.Errorf("QEMU %s, want %s everywhere", line, want)
					break
				}
			}
		}
		if strings.HasPrefix(line, "CapEff:") && strings.TrimSpace(strings.TrimPrefix(line, "CapEff:")) != "0000000000000000" {
			t.Errorf("QEMU has capabilities: %s", line)
		}
	}
	for _, ns := range []string{"mnt", "pid", "net", "ipc", "uts"} {
		mine, err1 := os.Readlink("/proc/self/ns/" + ns)
		its, err2 := os.Readlink(proc + "/ns/" + ns)
		if err1 != nil || err2 != nil {
			t.Fatalf("namespaces: %v, %v", err1, err2)
		}
		if mine == its {
			t.Errorf("QEMU shares the test's %s namespace (%s)", ns, its)
		}
	}
	// Its root holds the system files only: no home, no /tmp, no cache.
	root := proc + "/root"
	for _, p := range []string{"/root", "/home", "/tmp", "/var", "/work", fixtureDir, os.TempDir()} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("QEMU sees %s", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "usr/bin")); err != nil {
		t.Errorf("QEMU's root lacks /usr/bin: %v", err)
	}
	// Its /proc shows its own PID namespace: QEMU is PID 1 there.
	if st, err := os.ReadFile(filepath.Join(root, "proc/1/stat")); err != nil || !strings.Contains(string(st), "qemu") {
		t.Errorf("QEMU's /proc/1: %q, %v; want QEMU itself", st, err)
	}
}

// containsPair reports whether args hold flag followed by value.
func containsPair(args []string, flag, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && args[i+1] == value {
			return true
		}
	}
	return false
}

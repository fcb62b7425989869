package jail

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCommand(t *testing.T) {
	s := &Spec{Binary: "/usr/bin/qemu-system-x86_64", Args: []string{"-M", "microvm"}, Root: "/run/x/root", Devices: Devices(false), UID: UID, GID: GID, AliveFD: 5}
	cmd, err := Command(s)
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Path != "/proc/self/exe" || len(cmd.Args) != 1 || cmd.Args[0] != Argv0 {
		t.Errorf("command %s %q, want /proc/self/exe as %s", cmd.Path, cmd.Args, Argv0)
	}
	if got := cmd.SysProcAttr.Cloneflags; got != Cloneflags {
		t.Errorf("clone flags %#x, want %#x", got, Cloneflags)
	}
	if !cmd.SysProcAttr.Setpgid || cmd.SysProcAttr.Pdeathsig != syscall.SIGKILL {
		t.Errorf("no process group or no parent-death signal: %+v", cmd.SysProcAttr)
	}
	if len(cmd.Env) != 1 || !strings.HasPrefix(cmd.Env[0], specEnv+"=") {
		t.Fatalf("environment %q, want only the spec", cmd.Env)
	}
	var got Spec
	if err := json.Unmarshal([]byte(strings.TrimPrefix(cmd.Env[0], specEnv+"=")), &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(*s, got); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestBinaryDir(t *testing.T) {
	for _, c := range []struct{ binary, want string }{
		{"/usr/bin/qemu-system-x86_64", ""},
		{"/opt/qemu/bin/qemu-system-x86_64", "/opt/qemu/bin"},
		{"/usrx/qemu", "/usrx"},
	} {
		if got := binaryDir(c.binary); got != c.want {
			t.Errorf("binaryDir(%s) = %q, want %q", c.binary, got, c.want)
		}
	}
}

// TestTrampoline runs a shell through the trampoline (this test binary
// re-executed) and looks at its world from inside.
func TestTrampoline(t *testing.T) {
	if level, why := Available(); level != LevelFull {
		t.Skip(why)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	sh, _ = filepath.EvalSymlinks(sh)
	root := t.TempDir()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	script := `id -u; id -G; hostname; grep -E '^(NoNewPrivs|THP_enabled)' /proc/self/status; ls /; echo $$; ls /dev; echo x > /dev/null && echo null-ok; touch /usr/x 2>/dev/null || echo usr-ro; touch /y 2>/dev/null || echo root-ro`
	cmd, err := Command(&Spec{Binary: sh, Args: []string{"-c", script}, Root: root, Devices: Devices(false), UID: UID, GID: GID, AliveFD: 3, NoHugePages: true})
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{pr}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err = cmd.Run()
	pr.Close()
	if err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	id := strconv.Itoa(UID)
	var top []string
	for _, p := range []string{"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "usr"} {
		if _, err := os.Lstat("/" + p); err == nil || p == "dev" || p == "proc" || p == "etc" {
			top = append(top, p)
		}
	}
	want := append([]string{id, strconv.Itoa(GID), "pe-vmm", "THP_enabled:\t0", "NoNewPrivs:\t1"}, top...)
	want = append(want, "1", "null", "urandom", "zero", "null-ok", "usr-ro", "root-ro")
	if diff := cmp.Diff(want, strings.Split(strings.TrimSpace(out.String()), "\n")); diff != "" {
		t.Errorf("inside the jail (-want +got):\n%s", diff)
	}
}

func TestTrampolineGivesUpWhenPeIsGone(t *testing.T) {
	if level, why := Available(); level != LevelFull {
		t.Skip(why)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pw.Close() // pe is "gone"
	cmd, err := Command(&Spec{Binary: "/bin/true", Root: t.TempDir(), Devices: Devices(false), UID: UID, GID: GID, AliveFD: 3})
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{pr}
	out, err := cmd.CombinedOutput()
	pr.Close()
	if err == nil || !strings.Contains(string(out), "pe is gone") {
		t.Errorf("trampoline: %v, %q; want it to give up", err, out)
	}
}

// TestTrampolineUserNS runs the trampoline in a user namespace whose root
// is nobody outside, as for unprivileged pe, and checks from inside that
// the shell it starts has no capability left and its own root.
func TestTrampolineUserNS(t *testing.T) {
	if level, why := Available(); level != LevelFull {
		t.Skip(why) // root plays the unprivileged user's part below
	}
	const nobody = 65534
	// The mount point must be reachable by nobody, as pe's own work
	// directory is by pe's user.
	base, err := os.MkdirTemp("", "pe-jail-userns-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	root := filepath.Join(base, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(base, 0o755)
	os.Chown(root, nobody, nobody)
	cmd, err := Command(&Spec{Binary: "/bin/sh", Args: []string{"-c", `id -u; grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status; ls /; echo $$`}, Root: root, Devices: Devices(false), UserNS: true})
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr.UidMappings[0].HostID = nobody
	cmd.SysProcAttr.GidMappings[0].HostID = nobody
	// Root's child keeps root's IDs, unmapped in the namespace, until it
	// becomes the namespace's root; an unprivileged user's child is
	// that already.
	cmd.SysProcAttr.Credential = &syscall.Credential{NoSetGroups: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var top []string
	for _, p := range []string{"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "usr"} {
		if _, err := os.Lstat("/" + p); err == nil || p == "dev" || p == "proc" || p == "etc" {
			top = append(top, p)
		}
	}
	want := append([]string{"0", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"}, top...)
	want = append(want, "1")
	if diff := cmp.Diff(want, strings.Split(strings.TrimSpace(string(out)), "\n")); diff != "" {
		t.Errorf("inside the jail (-want +got):\n%s", diff)
	}
	if _, err := Command(&Spec{Binary: "/bin/true", UserNS: true, UID: UID}); err == nil {
		t.Error("a user namespace with another uid: no error")
	}
}

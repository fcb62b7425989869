package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

func TestRunEnv(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "env")
	os.WriteFile(file, []byte("# a comment\n\nA=from-file\n  B=2\nHOSTVAR\nUNSET\nEMPTY=\n"), 0o644)
	lookup := func(k string) (string, bool) {
		if k == "HOSTVAR" {
			return "host value", true
		}
		return "", false
	}
	got, err := runEnv([]string{file}, []string{"A=from-flag", "HOSTVAR", "UNSET", "C=x=y"}, lookup)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"A=from-file", "B=2", "HOSTVAR=host value", "EMPTY=", "A=from-flag", "HOSTVAR=host value", "C=x=y"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("runEnv (-want +got):\n%s", diff)
	}
	for _, c := range []struct {
		files, entries []string
		want           string
	}{
		{nil, []string{"=x"}, `-e: "=x" is not NAME=VALUE`},
		{nil, []string{"A B=1"}, `-e: "A B=1"`},
		{[]string{filepath.Join(dir, "missing")}, nil, "--env-file"},
	} {
		if _, err := runEnv(c.files, c.entries, lookup); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("runEnv(%q, %q): %v, want an error with %q", c.files, c.entries, err, c.want)
		}
	}
}

func TestRunUsageErrors(t *testing.T) {
	t.Setenv("PE_CACHE_DIR", t.TempDir())
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "requires at least 1 arg"},
		{[]string{"run", "--memory", "1M", "img"}, "--memory 1M: want at least 64MiB"},
		{[]string{"run", "--memory", "lots", "img"}, "--memory"},
		{[]string{"run", "--timeout", "0s", "img"}, "--timeout 0s"},
		{[]string{"run", "--max-output", "0", "img"}, "--max-output"},
		{[]string{"run", "--cpus", "0", "img"}, "--cpus 0"},
		{[]string{"run", "-i", "--stdin", "f", "img"}, "choose one"},
		{[]string{"run", "-t", "img"}, "-t: the input device is not a TTY"},
		{[]string{"run", "-it", "img"}, "-t: the input device is not a TTY"},
		{[]string{"run", "-it", "--json", "img"}, "-t and --json do not go together"},
		{[]string{"run", "-e", "=x", "img"}, "NAME=VALUE"},
		{[]string{"run", "--stdin", "/nonexistent/in", "img"}, "/nonexistent/in"},
		{[]string{"run", "--input", "/nonexistent/dir", "img"}, "/nonexistent/dir"},
		{[]string{"run", "--vmm", "firecracker", "--kernel", "/nonexistent/k", "img.erofs"}, "no guest kernel"},
		{[]string{"run", "--snapshot", "/nonexistent/snap"}, "no manifest.json"},
		{[]string{"snapshot", "create", "img"}, "-o DIR is required"},
		{[]string{"snapshot", "create"}, "accepts 1 arg"},
		{[]string{"snapshot", "create", "-o", "d", "--memory", "1M", "img"}, "--memory 1M"},
	} {
		_, _, err := run(t, "", c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pe %q: %v, want an error with %q", c.args, err, c.want)
		}
	}
}

// TestRunFlagsAfterImage checks flags after IMAGE go to the program: a
// usage error would come first otherwise.
func TestRunFlagsAfterImage(t *testing.T) {
	t.Setenv("PE_CACHE_DIR", t.TempDir())
	_, _, err := run(t, "", "run", "--kernel", "/nonexistent/k", "img.erofs", "ls", "--memory", "1M", "-e", "=x")
	if err == nil || !strings.Contains(err.Error(), "no guest kernel") {
		t.Errorf("error %v: the flags after the image were parsed as pe's", err)
	}
}

// vmCLIDir is the VM tests' fixture directory, removed by TestMain.
var vmCLIDir string

// TestMain removes the VM tests' fixture after the tests.
func TestMain(m *testing.M) {
	if os.Getenv(runCLIEnv) == "1" {
		os.Exit(runCLIMain())
	}
	code := m.Run()
	if vmCLIDir != "" {
		os.RemoveAll(vmCLIDir)
	}
	os.Exit(code)
}

// vmCLIFixture builds pe-init and a busybox EROFS image once for the VM
// tests of this package.
var vmCLIFixture = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "pe-cli-vm-")
	if err != nil {
		return "", err
	}
	vmCLIDir = dir
	init := filepath.Join(dir, "pe-init")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", init, "github.com/pe-project/pe/guest/cmd/pe-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", errors.New(string(out))
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", err
	}
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	b, err := os.ReadFile(bb)
	if err != nil {
		return "", err
	}
	os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755)
	for _, a := range []string{"sh", "cat", "echo", "id", "sleep", "head"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\n"), 0o644)
	if err := image.BuildEROFS(context.Background(), root, filepath.Join(dir, "busybox.erofs"), image.BuildOptions{}); err != nil {
		return "", err
	}
	return dir, nil
})

// vmSetup skips unless VMs can boot here, and returns the fixture dir.
func vmSetup(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	if _, err := qemu.Find(""); err != nil {
		t.Skip(err)
	}
	if _, err := vmm.FindKernel(""); err != nil {
		t.Skip(err)
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox is not installed (apt-get install busybox-static)")
	}
	dir, err := vmCLIFixture()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PE_INIT", filepath.Join(dir, "pe-init"))
	t.Setenv("PE_CACHE_DIR", filepath.Join(dir, "cache"))
	return dir
}

func TestRunVM(t *testing.T) {
	dir := vmSetup(t)
	img := filepath.Join(dir, "busybox.erofs")

	// Plain: the program's streams and status, stdin from pe's.
	stdout, stderr, err := run(t, "piped in\n", "run", "--accel", "tcg", "-i", img, "sh", "-c", "cat; echo to-stderr >&2; exit 3")
	var st *ExitStatus
	if !errors.As(err, &st) || st.Code != 3 {
		t.Errorf("error %v, want exit status 3", err)
	}
	if stdout != "piped in\n" || stderr != "to-stderr\n" {
		t.Errorf("stdout %q, stderr %q", stdout, stderr)
	}

	// --json, with a time-out.
	stdout, _, err = run(t, "", "run", "--accel", "tcg", "--json", "--timeout", "1s", img, "sh", "-c", "echo x; sleep 60")
	if !errors.As(err, &st) || st.Code != 124 {
		t.Errorf("error %v, want exit status 124", err)
	}
	var res map[string]any
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("--json printed %q: %v", stdout, err)
	}
	if res["exit_code"] != 124.0 || res["timed_out"] != true || res["vmm"] != "qemu" || res["accel"] != "tcg" {
		t.Errorf("--json: %v", res)
	}
	// Restored from the boot snapshot, which the first run made.
	if d, ok := res["duration_ms"].(map[string]any); !ok || d["total"] == nil || d["guest_program"] == nil || d["vm_start/qemu.Incoming"] == nil || d["guest_boot_to_init"] != nil {
		t.Errorf("--json duration_ms: %v, want a restored VM's", res["duration_ms"])
	}

	// --cold boots.
	stdout, _, err = run(t, "", "run", "--accel", "tcg", "--json", "--cold", img, "echo")
	if err != nil {
		t.Fatal(err)
	}
	res = nil
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("--json printed %q: %v", stdout, err)
	}
	if d, ok := res["duration_ms"].(map[string]any); !ok || d["guest_boot_to_init"] == nil || d["vm_start/qemu.Incoming"] != nil {
		t.Errorf("--cold --json duration_ms: %v, want a booted VM's", res["duration_ms"])
	}
}

// TestSnapshotVM makes a snapshot and runs from it: no IMAGE argument,
// the program's arguments right after the flags.
func TestSnapshotVM(t *testing.T) {
	dir := vmSetup(t)
	img := filepath.Join(dir, "busybox.erofs")
	snap := filepath.Join(t.TempDir(), "snap")
	stdout, _, err := run(t, "", "snapshot", "create", "--accel", "tcg", img, "-o", snap)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout, "snapshot of "+img) {
		t.Errorf("pe snapshot create printed %q", stdout)
	}
	if _, _, err := run(t, "", "snapshot", "create", "--accel", "tcg", img, "-o", snap); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("a second pe snapshot create: %v, want an error mentioning --force", err)
	}
	stdout, stderr, err := run(t, "in\n", "run", "--snapshot", snap, "-i", "sh", "-c", "cat; echo err >&2; exit 2")
	var st *ExitStatus
	if !errors.As(err, &st) || st.Code != 2 || stdout != "in\n" || stderr != "err\n" {
		t.Errorf("pe run --snapshot: %v, stdout %q, stderr %q; want exit status 2, \"in\\n\", \"err\\n\"", err, stdout, stderr)
	}
	if _, _, err := run(t, "", "run", "--snapshot", snap, "--memory", "1G", "true"); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("pe run --snapshot --memory 1G: %v, want a mismatch", err)
	}
}

func TestDoctor(t *testing.T) {
	dir := vmSetup(t)
	_ = dir
	stdout, _, err := run(t, "", "doctor", "--json", "--accel", "tcg")
	var rep doctorReport
	if jerr := json.Unmarshal([]byte(stdout), &rep); jerr != nil {
		t.Fatalf("doctor --json printed %q: %v", stdout, jerr)
	}
	if err != nil || !rep.Ready || rep.VMM != "qemu" || rep.Accel != "tcg" {
		t.Errorf("doctor: %v, %+v", err, rep)
	}
	names := map[string]bool{}
	for _, c := range rep.Checks {
		names[c.Name] = true
	}
	for _, n := range []string{"qemu", "cloud-hypervisor", "guest kernel", "/dev/kvm", "guest init", "initramfs", "boot snapshots", "image cache", "erofs-utils", "loop mount"} {
		if !names[n] {
			t.Errorf("doctor does not check %s", n)
		}
	}
	stdout, _, err = run(t, "", "doctor", "--accel", "tcg")
	if err != nil || !strings.Contains(stdout, "pe run will use qemu with tcg") || !bytes.Contains([]byte(stdout), []byte("[ok] qemu")) {
		t.Errorf("doctor: %v\n%s", err, stdout)
	}
}

func TestDoctorMissing(t *testing.T) {
	t.Setenv("PE_CACHE_DIR", t.TempDir())
	t.Setenv("PE_INIT", "")
	stdout, _, err := run(t, "", "doctor", "--kernel", "/nonexistent/kernel", "--init", "/nonexistent/pe-init")
	var st *ExitStatus
	if !errors.As(err, &st) || st.Code != 1 {
		t.Errorf("doctor with no kernel: %v, want exit status 1", err)
	}
	for _, want := range []string{"[!!] guest kernel", "fix: make kernel", "[!!] guest init", "pe run cannot work yet"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, stdout)
		}
	}
}

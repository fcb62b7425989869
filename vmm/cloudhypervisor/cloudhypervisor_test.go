package cloudhypervisor

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// cloud-hypervisor cannot be installed on the machines these tests were
// written on (it is not packaged for Debian 12, and KVM there does not run
// guests), so these tests check the command line and the API requests pe
// builds, against the documented CLI and OpenAPI spec. A test that boots a
// VM runs only where the binary and a working /dev/kvm exist.

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func golden(t *testing.T, name string, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

// runConfig is a typical pe run: image read-only, I/O file read-write.
func runConfig() *vmm.Config {
	return (&vmm.Config{
		Kernel: "/k/vmlinuz", Initramfs: "/c/initramfs.cpio",
		Cmdline: "quiet panic=-1 pe.image=/dev/vda pe.io=/dev/vdb",
		Disks:   []vmm.Disk{{Path: "/images/rootfs.erofs", ReadOnly: true}, {Path: "/tmp/run,1/io.img"}},
		Accel:   vmm.AccelKVM, CPUs: 2, MemoryMiB: 1024,
	}).WithDefaults()
}

func TestArgs(t *testing.T) {
	got := Args(runConfig(), "/w/console.log", "/w/api.sock", "/w/stream.sock")
	golden(t, "run-args", strings.Join(got, "\n")+"\n")

	// No disks, no initramfs: no empty --disk or --initramfs flags.
	bare := Args((&vmm.Config{Kernel: "/k/vmlinuz", Cmdline: "console=hvc0 pe.stream=/dev/hvc1", Accel: vmm.AccelKVM}).WithDefaults(), "/c", "/a", "/s,1")
	want := []string{"--kernel", "/k/vmlinuz", "--cmdline", "console=hvc0 pe.stream=/dev/hvc1", "--cpus", "boot=1", "--memory", "size=512M",
		"--console", `socket="/s,1"`, "--serial", "file=/c", "--api-socket", "path=/a"}
	if diff := cmp.Diff(want, bare); diff != "" {
		t.Errorf("Args (-want +got):\n%s", diff)
	}
}

func TestRequiresKVM(t *testing.T) {
	_, err := New("/nonexistent/cloud-hypervisor").Start(t.Context(), &vmm.Config{Kernel: "/dev/null", Accel: vmm.AccelTCG})
	if !errors.Is(err, ErrNeedsKVM) {
		t.Errorf("Start under TCG: %v, want ErrNeedsKVM", err)
	}
}

func TestFindMissing(t *testing.T) {
	if _, err := Find("no-such-cloud-hypervisor"); err == nil || !strings.Contains(err.Error(), "releases") {
		t.Errorf("Find: %v, want an error saying where to get it", err)
	}
}

// fakeAPI serves cloud-hypervisor's API on a Unix socket and records the
// requests.
type fakeAPI struct {
	mu   sync.Mutex
	reqs []string // "METHOD /path body"
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.reqs = append(f.reqs, strings.TrimSpace(r.Method+" "+r.URL.Path+" "+string(body)))
	f.mu.Unlock()
	switch r.URL.Path {
	case "/api/v1/vmm.ping":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"build_version":"v43.0","version":"43.0","pid":42,"features":["kvm"]}`)
	case "/api/v1/vm.boot":
		http.Error(w, "VM is not created", http.StatusInternalServerError)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

func startFakeAPI(t *testing.T) (*fakeAPI, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAPI{}
	srv := &http.Server{Handler: f}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return f, sock
}

func TestClient(t *testing.T) {
	f, sock := startFakeAPI(t)
	c := NewClient(sock)
	ctx := t.Context()
	ping, err := c.Ping(ctx)
	if err != nil || ping.Version != "43.0" || ping.PID != 42 {
		t.Errorf("Ping = %+v, %v", ping, err)
	}
	for _, call := range []func(context.Context) error{
		c.Pause, c.Resume,
		func(ctx context.Context) error { return c.Snapshot(ctx, "file:///snap") },
		c.ShutdownVMM,
	} {
		if err := call(ctx); err != nil {
			t.Error(err)
		}
	}
	// An error status comes back as an *APIError (vm.boot: the fake's
	// error answer).
	err = c.call(ctx, http.MethodPut, "vm.boot", nil, nil)
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 500 || !strings.Contains(err.Error(), "VM is not created") {
		t.Errorf("Boot: %v, want an *APIError with the body", err)
	}
	want := []string{
		"GET /api/v1/vmm.ping",
		"PUT /api/v1/vm.pause",
		"PUT /api/v1/vm.resume",
		`PUT /api/v1/vm.snapshot {"destination_url":"file:///snap"}`,
		"PUT /api/v1/vmm.shutdown",
		"PUT /api/v1/vm.boot",
	}
	if diff := cmp.Diff(want, f.reqs); diff != "" {
		t.Errorf("requests (-want +got):\n%s", diff)
	}
}

func TestClientNoSocket(t *testing.T) {
	_, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Ping(t.Context())
	if err == nil {
		t.Error("Ping on a missing socket succeeded")
	}
}

// TestStartWithFakeBinary runs the default steps with a stand-in for
// cloud-hypervisor: a script that serves nothing and exits, so the start
// fails at the API step, and nothing is left behind.
func TestStartWithFakeBinary(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	fake := filepath.Join(t.TempDir(), "cloud-hypervisor")
	os.WriteFile(fake, []byte("#!/bin/sh\necho \"fake: $*\" >&2\nexit 1\n"), 0o755)
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(kernel, nil, 0o644)
	_, err := New(fake).Start(t.Context(), &vmm.Config{Kernel: kernel, Accel: vmm.AccelKVM})
	if err == nil || !strings.Contains(err.Error(), StepWaitAPIName) || !strings.Contains(err.Error(), "fake: --kernel") {
		t.Fatalf("Start: %v, want the API step to fail with the VMM's stderr", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestBoot boots the probe kernel for real where cloud-hypervisor and KVM
// work. Whether KVM runs guests here is asked of QEMU, with a probe boot
// (vmm.Prober), not of cloud-hypervisor: where KVM runs QEMU's guests, a
// cloud-hypervisor that does not boot the kernel fails the test.
func TestBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if _, err := Find(""); err != nil {
		t.Skipf("cloud-hypervisor is not installed (%v); the command line and API tests above cover what can be checked without it", err)
	}
	if err := vmm.CheckKVMDevice(""); err != nil {
		t.Skipf("no KVM: %v", err)
	}
	k, err := vmm.FindKernel("")
	if err != nil {
		t.Skipf("no guest kernel to boot (make kernel): %v", err)
	}
	qemuPath, err := qemu.Find("")
	if err != nil {
		t.Skipf("no QEMU to tell whether KVM runs guests here: %v", err)
	}
	witness := qemu.New(qemuPath)
	p := &vmm.Prober{Boot: func(ctx context.Context) error { return vmm.ProbeBoot(ctx, witness, k.Vmlinuz) }}
	if v := p.Probe(t.Context()); !v.KVM {
		t.Skipf("KVM does not run guests here: %s", v.Reason)
	}
	ctx, cancel := context.WithTimeout(t.Context(), vmm.DefaultProbeTimeout*3)
	defer cancel()
	if err := vmm.ProbeBoot(ctx, New(""), k.Vmlinuz); err != nil {
		t.Fatalf("cloud-hypervisor did not boot the kernel under KVM, which runs QEMU's guests here: %v", err)
	}
}

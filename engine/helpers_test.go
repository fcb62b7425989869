package engine

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// The VM tests boot Debian's cloud kernel under QEMU with pe's guest init
// and a busybox image the tests build, through Engine.Run. Under TCG a run
// takes seconds, so they run in parallel, at most vmSlots at once. They skip
// under -short and when QEMU, the kernel (make kernel) or busybox-static is
// missing.

// vmSlots bounds the VMs the tests run at once: one per core.
var vmSlots = make(chan struct{}, max(1, runtime.NumCPU()))

// vmFixture is what every VM test shares: the guest init, the busybox
// image and its source tree, the kernel.
type vmFixture struct {
	dir    string
	init   string
	kernel *vmm.Kernel
	rootfs string // the image's source tree
	erofs  string // the busybox image
	err    error
}

var (
	fixtureOnce sync.Once
	fixture     vmFixture
)

// TestMain removes the shared fixture after the tests, and fails them if
// a VMM process outlived its run.
func TestMain(m *testing.M) {
	code := m.Run()
	if fixture.dir != "" {
		os.RemoveAll(fixture.dir)
	}
	if kids := childProcesses(); len(kids) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind by the tests: %q\n", kids)
		code = 1
	}
	os.Exit(code)
}

// vmSetup skips the test unless VMs can run, and builds the fixture once.
func vmSetup(t *testing.T) *vmFixture {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	if _, err := qemu.Find(""); err != nil {
		t.Skipf("QEMU is not installed (make deps, or %s): %v", qemu.InstallHint, err)
	}
	k, err := vmm.FindKernel("")
	if err != nil {
		t.Skipf("no guest kernel (make kernel): %v", err)
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed (apt-get install busybox-static)")
	}
	if out, err := exec.Command("ldd", bb).CombinedOutput(); err == nil && !bytes.Contains(out, []byte("not a dynamic")) {
		t.Skipf("%s is not static (install busybox-static)", bb)
	}
	fixtureOnce.Do(func() {
		fixture.kernel = k
		fixture.err = buildFixture(&fixture, bb)
	})
	if fixture.err != nil {
		t.Fatal(fixture.err)
	}
	return &fixture
}

func buildFixture(f *vmFixture, busybox string) error {
	dir, err := os.MkdirTemp("", "pe-engine-test-")
	if err != nil {
		return err
	}
	f.dir = dir
	f.init = filepath.Join(dir, "pe-init")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", f.init, "github.com/pe-project/pe/guest/cmd/pe-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building pe-init: %v\n%s", err, out)
	}
	f.rootfs = filepath.Join(dir, "rootfs")
	if err := makeBusyboxTree(f.rootfs, busybox); err != nil {
		return err
	}
	f.erofs = filepath.Join(dir, "busybox.erofs")
	return image.BuildEROFS(context.Background(), f.rootfs, f.erofs, image.BuildOptions{})
}

// makeBusyboxTree makes a small root file system: busybox and its applet
// links in /bin, /etc/passwd and /etc/group with a user alice (1000) in
// the groups alice and staff (50), her home, /srv/app for the image's
// working directory.
func makeBusyboxTree(root, busybox string) error {
	for _, d := range []string{"bin", "etc", "home/alice", "srv/app", "tmp", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "bin/busybox"), b, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet != "busybox" {
			if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
				return err
			}
		}
	}
	files := map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n",
		"etc/group":       "root:x:0:\nstaff:x:50:alice\nalice:x:1000:\n",
		"srv/app/VERSION": "1.2.3\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return os.Chown(filepath.Join(root, "home/alice"), 1000, 1000)
}

// busyboxConfig is the config of the test image: an entrypoint-less image
// with a cmd, an environment without PATH, a working directory.
func busyboxConfig() *v1.ConfigFile {
	return &v1.ConfigFile{
		Architecture: "amd64", OS: "linux",
		Config: v1.Config{
			Cmd:        []string{"sh", "-c", "echo default cmd"},
			Env:        []string{"GREETING=hello from the image", "LANG=C"},
			WorkingDir: "/srv/app",
		},
	}
}

// newTestEngine returns an engine over the fixture's image, known as
// "busybox", under QEMU with TCG (KVM does not work on every machine these
// tests run on; TCG does).
func newTestEngine(t *testing.T, f *vmFixture, images StaticSource) *Engine {
	t.Helper()
	if images == nil {
		images = StaticSource{}
	}
	if _, ok := images["busybox"]; !ok {
		images["busybox"] = &ResolvedImage{Reference: "busybox", Digest: "sha256:test", EROFSPath: f.erofs, Config: busyboxConfig()}
	}
	e, err := New(Options{
		Images:     images,
		Backend:    qemu.New(""),
		Accel:      vmm.AccelTCG,
		KernelInfo: f.kernel,
		InitBinary: f.init,
		CacheDir:   filepath.Join(f.dir, "cache"),
		TempDir:    t.TempDir(),
		Log:        testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs req with a VM slot held, and fails the test when pe fails.
func run(t *testing.T, e *Engine, req *RunRequest) *RunResult {
	t.Helper()
	res, err := runErr(t, e, req)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res
}

// runErr runs req with a VM slot held.
func runErr(t *testing.T, e *Engine, req *RunRequest) (*RunResult, error) {
	t.Helper()
	vmSlots <- struct{}{}
	defer func() { <-vmSlots }()
	if req.Image == "" {
		req.Image = "busybox"
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	res, err := e.Run(ctx, req)
	t.Logf("run %q took %v", req.Cmd, time.Since(start).Round(time.Millisecond))
	if res != nil {
		t.Logf("exit %d signal %q timed out %v error %q\nstdout: %q\nstderr: %q", res.ExitCode, res.Signal, res.TimedOut, res.Error, clip(res.Stdout), clip(res.Stderr))
	}
	return res, err
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:1000]) + "..." + string(b[len(b)-1000:])
	}
	return string(b)
}

// sh is the argv of a shell script.
func sh(script string) []string { return []string{"sh", "-c", script} }

// dirEntries lists the names in dir.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// childProcesses lists the processes whose parent is this test process.
func childProcesses() []string {
	me := fmt.Sprint(os.Getpid())
	var kids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == me {
			kids = append(kids, e.Name()+" "+s[strings.IndexByte(s, '(')+1:i])
		}
	}
	return kids
}

// walkFiles lists every path under dir.
func walkFiles(dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// testLogger logs to the test's output.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

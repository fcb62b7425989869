package engine

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/engine/enginetest"
	"github.com/pe-project/pe/erofs"
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

// vmFixture is what every VM test shares (enginetest.Fixture): the guest
// init, the busybox image and its source tree, the kernel.
type vmFixture struct {
	dir    string
	init   string
	kernel *vmm.Kernel
	rootfs string // the image's source tree
	erofs  string // the busybox image
}

// TestMain removes the shared fixture after the tests, and fails them if
// a VMM process outlived its run.
func TestMain(m *testing.M) {
	code := m.Run()
	enginetest.Cleanup()
	if kids := enginetest.ChildProcesses(); len(kids) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: processes left behind by the tests: %q\n", kids)
		code = 1
	}
	os.Exit(code)
}

// vmSetup skips the test unless VMs can run, and builds the fixture once.
func vmSetup(t *testing.T) *vmFixture {
	t.Helper()
	f := enginetest.Setup(t)
	return &vmFixture{dir: f.Dir, init: f.Init, kernel: f.Kernel, rootfs: f.Rootfs, erofs: f.EROFS}
}

// writeImage writes an EROFS image of the fixture's busybox tree plus
// extra files (path: content) with opts, and returns its path.
func writeImage(t *testing.T, f *vmFixture, opts erofs.WriterOptions, extra map[string][]byte) string {
	t.Helper()
	return writeImageWith(t, f, opts, func(add func(erofs.Entry, []byte)) {
		for name, data := range extra {
			add(erofs.Entry{Path: name, Mode: 0o644}, data)
		}
	})
}

// writeImageWith writes an EROFS image of the fixture's busybox tree with
// opts, then the entries more adds (the entry's size is its data's), and
// returns its path.
func writeImageWith(t *testing.T, f *vmFixture, opts erofs.WriterOptions, more func(add func(erofs.Entry, []byte))) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "image.erofs")
	out, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w, err := erofs.NewWriter(out, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.AddDir(t.Context(), w, f.rootfs); err != nil {
		t.Fatal(err)
	}
	more(func(e erofs.Entry, data []byte) {
		t.Helper()
		e.Size = int64(len(data))
		if err := w.Add(e, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return img
}

// busyboxConfig is the config of the test image (enginetest.BusyboxConfig).
func busyboxConfig() *v1.ConfigFile { return enginetest.BusyboxConfig() }

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

// brokenBoot writes, in dir, a kernel file QEMU cannot load and an init
// that never ends (busybox's init finds no inittab and waits for ever).
func brokenBoot(t *testing.T, f *vmFixture, dir string) (garbageKernel, hangInit string) {
	t.Helper()
	garbageKernel = filepath.Join(dir, "garbage-vmlinuz")
	if err := os.WriteFile(garbageKernel, bytes.Repeat([]byte("not a kernel "), 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	hangInit = filepath.Join(dir, "busybox-init")
	b, err := os.ReadFile(filepath.Join(f.rootfs, "bin/busybox"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hangInit, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return garbageKernel, hangInit
}

// brokenOptions are the options of an engine over QEMU/TCG booting
// vmlinuz (the fixture's kernel otherwise) with init, and the fixture's
// busybox image; change adjusts them.
func brokenOptions(f *vmFixture, vmlinuz, init, cacheDir, tempDir string, change func(*Options)) Options {
	k := *f.kernel
	k.Vmlinuz = vmlinuz
	o := Options{
		Images:     StaticSource{"busybox": {Reference: "busybox", EROFSPath: f.erofs, Config: busyboxConfig()}},
		Backend:    qemu.New(""),
		Accel:      "tcg",
		KernelInfo: &k,
		InitBinary: init,
		CacheDir:   cacheDir,
		TempDir:    tempDir,
	}
	change(&o)
	return o
}

// newBootSnapshotEngine is an engine over QEMU TCG and the busybox image
// whose runs restore a boot snapshot, in a cache directory of its own;
// change, when not nil, adjusts its options first.
func newBootSnapshotEngine(t *testing.T, f *vmFixture, change func(*Options)) *Engine {
	t.Helper()
	o := Options{
		Images:        StaticSource{"busybox": {Reference: "busybox", Digest: "sha256:test", EROFSPath: f.erofs, Config: busyboxConfig()}},
		Backend:       qemu.New(""),
		Accel:         vmm.AccelTCG,
		KernelInfo:    f.kernel,
		InitBinary:    f.init,
		CacheDir:      t.TempDir(),
		TempDir:       t.TempDir(),
		Log:           testLogger(t),
		BootSnapshots: true,
	}
	if change != nil {
		change(&o)
	}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// launchCase is one of the three ways a run's VM comes up.
type launchCase struct {
	name   string
	e      *Engine
	launch string
	snap   *Snapshot
}

// launchCases returns the three ways a busybox run's VM comes up: a boot,
// the boot snapshot, and an image snapshot (made now).
func launchCases(t *testing.T, f *vmFixture) []launchCase {
	t.Helper()
	cold := newTestEngine(t, f, nil)
	warm := newBootSnapshotEngine(t, f, nil)
	dir := filepath.Join(t.TempDir(), "snap")
	createSnapshot(t, cold, dir)
	snap, err := cold.OpenSnapshot(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return []launchCase{
		{"boot", cold, LaunchBoot, nil},
		{"boot-snapshot", warm, LaunchBootSnapshot, nil},
		{"image-snapshot", cold, LaunchSnapshot, snap},
	}
}

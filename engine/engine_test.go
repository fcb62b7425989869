package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
)

// These tests run the engine without VMs: a fake backend plays the guest,
// reading the request from the I/O file and writing a result with the
// guest package's own writer, or misbehaving on purpose.

// fakeGuest says what a fake VM does.
type fakeGuest int

const (
	guestOK      fakeGuest = iota // runs "echo ARGS" and "exit N" requests
	guestHang                     // never stops
	guestCrash                    // stops without a result
	guestGarbage                  // scribbles over the I/O file's header
)

type fakeBackend struct {
	mode     fakeGuest
	startErr error
	running  atomic.Int32
	peak     atomic.Int32
	starts   atomic.Int32
	hold     time.Duration // how long an OK guest runs
	lastCfg  *vmm.Config
	// readImage makes Start read the image disk whole into image (or
	// imageErr), as a VMM would read it.
	readImage bool
	image     []byte
	imageErr  error
	mu        sync.Mutex
}

func (b *fakeBackend) Name() string { return "fake" }

func (b *fakeBackend) Start(ctx context.Context, cfg *vmm.Config) (vmm.Machine, error) {
	b.starts.Add(1)
	if b.startErr != nil {
		return nil, b.startErr
	}
	b.mu.Lock()
	b.lastCfg = cfg
	if b.readImage {
		b.image, b.imageErr = os.ReadFile(cfg.Disks[0].Path)
	}
	b.mu.Unlock()
	n := b.running.Add(1)
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			break
		}
	}
	m := &fakeVM{done: make(chan struct{}), kill: make(chan struct{})}
	go func() {
		// Deferred in this order, the count drops before Wait and Kill
		// return: a test may read it as soon as Run has returned.
		defer close(m.done)
		defer b.running.Add(-1)
		io := cfg.Disks[1].Path
		switch b.mode {
		case guestOK:
			select {
			case <-time.After(b.hold):
			case <-m.kill:
				return
			}
			m.err = playGuest(io)
		case guestHang:
			<-m.kill
		case guestCrash:
			m.console = "[    0.1] Kernel panic - not syncing: fake\n"
		case guestGarbage:
			os.WriteFile(io, []byte("garbage"), 0o600)
		}
	}()
	return m, nil
}

// playGuest does what the guest init would for simple requests: "echo
// ARGS" prints, "exit N" exits with N, "sleep" times out.
func playGuest(ioPath string) error {
	f, err := guest.OpenIOFile(ioPath)
	if err != nil {
		return err
	}
	defer f.Close()
	req, err := f.Request()
	if err != nil {
		return err
	}
	res := &guest.Result{Timings: map[string]int64{"program": 1500}, Nonce: req.Nonce}
	in, _ := io.ReadAll(f.Stdin())
	switch req.Argv[0] {
	case "echo":
		fmt.Fprintln(f.Stdout(), strings.Join(req.Argv[1:], " "))
		fmt.Fprintf(f.Stderr(), "uid=%d gid=%d cwd=%s stdin=%q\n", req.UID, req.GID, req.Cwd, in)
	case "exit":
		fmt.Sscan(req.Argv[1], &res.ExitCode)
	case "sleep":
		res.TimedOut, res.ExitCode, res.Signal = true, 137, "SIGKILL"
	case "binary":
		f.Stdout().Write([]byte{0xff, 0xfe, 'x'})
	}
	return f.WriteResult(res, "")
}

type fakeVM struct {
	done     chan struct{}
	kill     chan struct{}
	killOnce sync.Once
	err      error
	console  string
}

func (m *fakeVM) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return m.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (m *fakeVM) Kill() error {
	m.killOnce.Do(func() { close(m.kill) })
	<-m.done
	return nil
}
func (m *fakeVM) ConsoleLog() []byte { return []byte(m.console) }
func (m *fakeVM) PID() int           { return 0 }

// fakeEnv is a kernel directory (all modules "built in"), an init (any ELF
// file) and a small EROFS image, none of which a fake VM boots.
type fakeEnv struct {
	kernel *vmm.Kernel
	init   string
	erofs  string
	cache  string
}

func newFakeEnv(t *testing.T) *fakeEnv {
	t.Helper()
	dir := t.TempDir()
	kdir := filepath.Join(dir, "kernel")
	os.MkdirAll(filepath.Join(kdir, "modules"), 0o755)
	os.WriteFile(filepath.Join(kdir, "vmlinuz"), []byte("kernel"), 0o644)
	os.WriteFile(filepath.Join(kdir, "modules.builtin"), []byte(strings.Join([]string{
		"kernel/drivers/virtio/virtio_mmio.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/drivers/block/virtio_blk.ko", "kernel/drivers/char/virtio_console.ko", "kernel/fs/erofs/erofs.ko", "kernel/fs/overlayfs/overlay.ko",
	}, "\n")), 0o644)
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc/passwd"), []byte("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"), 0o644)
	img := filepath.Join(dir, "rootfs.erofs")
	if err := image.BuildEROFS(t.Context(), tree, img, image.BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	return &fakeEnv{
		kernel: &vmm.Kernel{Dir: kdir, Vmlinuz: filepath.Join(kdir, "vmlinuz"), ModulesDir: filepath.Join(kdir, "modules"), Version: "fake"},
		init:   "/bin/true",
		erofs:  img,
		cache:  filepath.Join(dir, "cache"),
	}
}

func (env *fakeEnv) engine(t *testing.T, b vmm.Backend, opts Options) (*Engine, string) {
	t.Helper()
	tmp := t.TempDir()
	opts.Backend, opts.Accel = b, vmm.AccelKVM
	opts.KernelInfo, opts.InitBinary, opts.CacheDir, opts.TempDir = env.kernel, env.init, env.cache, tmp
	if opts.Images == nil {
		opts.Images = StaticSource{"img": {Reference: "img", Digest: "sha256:abc", EROFSPath: env.erofs}}
	}
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return e, tmp
}

func TestRunFake(t *testing.T) {
	env := newFakeEnv(t)
	b := &fakeBackend{}
	e, tmp := env.engine(t, b, Options{})
	res, err := e.Run(t.Context(), &RunRequest{
		Image:     "img",
		Overrides: Overrides{Cmd: []string{"echo", "hi", "there"}, User: "alice", Workdir: "/w"},
		Stdin:     strings.NewReader("in"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Stdout) != "hi there\n" || string(res.Stderr) != "uid=1000 gid=1000 cwd=/w stdin=\"in\"\n" {
		t.Errorf("stdout %q, stderr %q", res.Stdout, res.Stderr)
	}
	if res.Image != (ImageInfo{Reference: "img", Digest: "sha256:abc"}) || res.VMM != "fake" || res.Accel != "kvm" {
		t.Errorf("result %+v", res)
	}
	for _, k := range []string{"image", "initramfs", "io_file", "vm_start", "vm", "total", "guest_program"} {
		if _, ok := res.Durations[k]; !ok {
			t.Errorf("no %s duration in %v", k, res.Durations)
		}
	}
	cfg := b.lastCfg
	if cfg.Disks[0] != (vmm.Disk{Path: env.erofs, ReadOnly: true}) || cfg.Disks[1].ReadOnly ||
		!strings.Contains(cfg.Cmdline, "pe.image=/dev/vda pe.io=/dev/vdb") || !strings.Contains(cfg.Cmdline, "panic=-1") {
		t.Errorf("VM config %+v", cfg)
	}
	if left := walkFiles(tmp); len(left) > 0 {
		t.Errorf("left behind: %q", left)
	}
}

// TestRunErrorPaths checks every way a run can fail leaves no file behind
// and returns the right error.
func TestRunErrorPaths(t *testing.T) {
	env := newFakeEnv(t)
	nonEmpty := t.TempDir()
	if err := os.WriteFile(filepath.Join(nonEmpty, "mine"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		desc    string
		b       *fakeBackend
		req     RunRequest
		opts    Options
		check   func(error) bool
		inError string
	}{
		{"image not found", &fakeBackend{}, RunRequest{Image: "nope", Overrides: Overrides{Cmd: []string{"echo"}}}, Options{},
			func(err error) bool { return errors.Is(err, image.ErrNotFound) }, "nope"},
		{"no command", &fakeBackend{}, RunRequest{Image: "img"}, Options{},
			func(err error) bool { return errors.Is(err, ErrNoCommand) }, "no command"},
		{"unknown user", &fakeBackend{}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}, User: "bob"}}, Options{},
			func(err error) bool { return errors.Is(err, ErrUnknownUser) }, `user "bob"`},
		{"input dir missing", &fakeBackend{}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}, InputDir: "/nonexistent/in"}, Options{},
			func(err error) bool { return err != nil }, "/nonexistent/in"},
		{"max output too big", &fakeBackend{}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}, MaxOutput: 1 << 40}, Options{},
			func(err error) bool { return err != nil }, "max output"},
		{"output dir not empty", &fakeBackend{startErr: errors.New("the VM must not start")}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}, OutputDir: nonEmpty}, Options{},
			func(err error) bool { return errors.Is(err, guest.ErrOutputNotEmpty) }, nonEmpty},
		{"VM does not start", &fakeBackend{startErr: errors.New("qemu: no")}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}}, Options{},
			func(err error) bool { return err != nil }, "qemu: no"},
		{"VM crashes", &fakeBackend{mode: guestCrash}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}}, Options{},
			func(err error) bool {
				var v *VMError
				return errors.As(err, &v) && errors.Is(err, guest.ErrNoResult) && !v.Killed
			}, "Kernel panic - not syncing: fake"},
		{"VM hangs", &fakeBackend{mode: guestHang}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}, Timeout: 50 * time.Millisecond}, Options{Grace: 100 * time.Millisecond},
			func(err error) bool { var v *VMError; return errors.As(err, &v) && v.Killed }, "did not finish within 150ms"},
		{"garbage result", &fakeBackend{mode: guestGarbage}, RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}}, Options{},
			func(err error) bool { return errors.Is(err, guest.ErrBadResponse) }, "bad guest response"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			e, tmp := env.engine(t, c.b, c.opts)
			req := c.req
			_, err := e.Run(t.Context(), &req)
			if err == nil || !c.check(err) || !strings.Contains(err.Error(), c.inError) {
				t.Errorf("error %v (%T), want one with %q", err, err, c.inError)
			}
			if left := walkFiles(tmp); len(left) > 0 {
				t.Errorf("left behind: %q", left)
			}
			if n := c.b.running.Load(); n != 0 {
				t.Errorf("%d fake VMs still running", n)
			}
		})
	}
}

func TestRunCanceled(t *testing.T) {
	env := newFakeEnv(t)
	b := &fakeBackend{mode: guestHang}
	e, tmp := env.engine(t, b, Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := e.Run(ctx, &RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"echo"}}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want the context's", err)
	}
	if left := walkFiles(tmp); len(left) > 0 || b.running.Load() != 0 {
		t.Errorf("left behind: %q, %d VMs", left, b.running.Load())
	}
}

func TestRunConcurrencyBound(t *testing.T) {
	env := newFakeEnv(t)
	b := &fakeBackend{hold: 50 * time.Millisecond}
	e, _ := env.engine(t, b, Options{MaxConcurrent: 2})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			res, err := e.Run(t.Context(), &RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"exit", fmt.Sprint(i)}}})
			if err != nil || res.ExitStatus() != i {
				t.Errorf("run %d: %v, %+v", i, err, res)
			}
		})
	}
	wg.Wait()
	if p := b.peak.Load(); p != 2 {
		t.Errorf("%d VMs ran at once, want the limit, 2", p)
	}
}

func TestExitStatusAndJSON(t *testing.T) {
	for _, c := range []struct {
		desc string
		res  RunResult
		want int
	}{
		{"ok", RunResult{}, 0},
		{"code", RunResult{Result: guest.Result{ExitCode: 3}}, 3},
		{"signal", RunResult{Result: guest.Result{ExitCode: 137, Signal: "SIGKILL"}}, 137},
		{"timed out", RunResult{Result: guest.Result{ExitCode: 137, Signal: "SIGKILL", TimedOut: true}}, 124},
		{"out of range", RunResult{Result: guest.Result{ExitCode: 300}}, 255},
	} {
		if got := c.res.ExitStatus(); got != c.want {
			t.Errorf("%s: ExitStatus() = %d, want %d", c.desc, got, c.want)
		}
	}

	res := &RunResult{
		Result:    guest.Result{ExitCode: 137, Signal: "SIGKILL", TimedOut: true, StdoutTruncated: true, Rusage: guest.Rusage{UserMs: 5}},
		Stdout:    []byte("text ü\n"),
		Stderr:    []byte{0xff, 0x00},
		Image:     ImageInfo{Reference: "docker.io/library/busybox:latest", Digest: "sha256:abc"},
		VMM:       "qemu",
		Accel:     "tcg",
		Durations: map[string]time.Duration{"total": 1234567 * time.Microsecond, "guest_program": 1500 * time.Microsecond},
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"exit_code": 124.0, "signal": "SIGKILL", "timed_out": true,
		"stdout": "text ü\n", "stderr_b64": "/wA=",
		"stdout_truncated": true, "stderr_truncated": false, "output_truncated": false,
		"image":       map[string]any{"reference": "docker.io/library/busybox:latest", "digest": "sha256:abc"},
		"vmm":         "qemu",
		"accel":       "tcg",
		"duration_ms": map[string]any{"total": 1234.567, "guest_program": 1.5},
		"rusage":      map[string]any{"user_ms": 5.0, "sys_ms": 0.0, "max_rss_kb": 0.0},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("JSON (-want +got):\n%s", diff)
	}
}

func TestRunBinaryOutputJSON(t *testing.T) {
	env := newFakeEnv(t)
	e, _ := env.engine(t, &fakeBackend{}, Options{})
	res, err := e.Run(t.Context(), &RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"binary"}}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res)
	if !bytes.Contains(b, []byte(`"stdout_b64":"//54"`)) || bytes.Contains(b, []byte(`"stdout":`)) {
		t.Errorf("JSON %s: want stdout_b64 only", b)
	}
}

// TestSweepRunDirs checks that a new engine removes the run directories
// of a pe that died without cleaning up, and only those.
func TestSweepRunDirs(t *testing.T) {
	env := newFakeEnv(t)
	tmp := t.TempDir()
	mk := func(name, owner string, age time.Duration) string {
		d := filepath.Join(tmp, name)
		os.Mkdir(d, 0o700)
		os.WriteFile(filepath.Join(d, "io.img"), []byte("x"), 0o600)
		if owner != "" {
			os.WriteFile(filepath.Join(d, "owner"), []byte(owner), 0o600)
		}
		old := time.Now().Add(-age)
		os.Chtimes(d, old, old)
		return d
	}
	dead := mk("pe-run-dead", "999999999", 0)
	alive := mk("pe-run-alive", fmt.Sprint(os.Getpid()), 0)
	fresh := mk("pe-run-fresh", "", 0)
	stale := mk("pe-run-stale", "", 2*time.Hour)
	other := mk("not-pe", "999999999", 0)
	_, err := New(Options{Images: StaticSource{}, Backend: &fakeBackend{}, Accel: "kvm", KernelInfo: env.kernel, InitBinary: env.init, CacheDir: env.cache, TempDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string]bool{dead: false, alive: true, fresh: true, stale: false, other: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v", filepath.Base(d), err == nil, want)
		}
	}
}

func TestSweepOwnedDirs(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, owner string, age time.Duration) string {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if owner != "" {
			if err := os.WriteFile(filepath.Join(p, runDirOwner), []byte(owner), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		old := time.Now().Add(-age)
		os.Chtimes(p, old, old)
		return p
	}
	gone := mk("snap.tmp-1", "2147483646", 0) // no such process
	mine := mk("snap.tmp-2", strconv.Itoa(os.Getpid()), 0)
	fresh := mk("snap.tmp-3", "", time.Minute) // its pe may be about to write the owner
	stale := mk("snap.tmp-4", "", 2*time.Hour)
	other := mk("other.tmp-5", "2147483646", 0) // does not match
	sweepOwnedDirs(filepath.Join(dir, "snap.tmp-*"), slog.New(slog.DiscardHandler))
	for p, want := range map[string]bool{gone: false, mine: true, fresh: true, stale: false, other: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
}

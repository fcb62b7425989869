package guestinit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/guest/guesttest"
	"github.com/pe-project/pe/guest/initramfs"
)

// The VM tests boot Debian's cloud kernel under QEMU (TCG here: a few seconds
// a boot) with the real pe-init, an initramfs from initramfs.Build and a
// busybox image, and check what comes back through the I/O file. They skip
// when QEMU, the kernel (scripts/get-kernel.sh), busybox-static or
// mkfs.erofs is missing, and under -short.

// kernelDir finds the kernel the way pe does: PE_KERNEL, else the data dir.
func kernelDir() string {
	if d := os.Getenv("PE_KERNEL"); d != "" {
		return d
	}
	data := os.Getenv("PE_DATA_DIR")
	if data == "" {
		x := os.Getenv("XDG_DATA_HOME")
		if x == "" {
			home, _ := os.UserHomeDir()
			x = filepath.Join(home, ".local", "share")
		}
		data = filepath.Join(x, "pe")
	}
	return filepath.Join(data, "kernel")
}

type vmFixture struct {
	dir                      string // removed by TestMain
	kernel, initramfs, image string
	err                      error
}

var (
	fixtureOnce sync.Once
	fixture     vmFixture
)

// vmSetup builds pe-init, the initramfs and the busybox image once.
func vmSetup(t *testing.T) *vmFixture {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	for _, tool := range []string{"qemu-system-x86_64", "mkfs.erofs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	kdir := kernelDir()
	if _, err := os.Stat(filepath.Join(kdir, "vmlinuz")); err != nil {
		t.Skipf("no guest kernel in %s (run scripts/get-kernel.sh)", kdir)
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static)")
	}
	fixtureOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pe-vmtest-")
		if err != nil {
			fixture.err = err
			return
		}
		fixture.dir = dir
		fixture.err = buildFixture(dir, kdir, bb)
	})
	if fixture.err != nil {
		t.Fatal(fixture.err)
	}
	return &fixture
}

func buildFixture(dir, kdir, busybox string) error {
	initBin := filepath.Join(dir, "pe-init")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", initBin, "github.com/pe-project/pe/guest/cmd/pe-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build pe-init: %v\n%s", err, out)
	}
	fixture.initramfs = filepath.Join(dir, "initramfs.cpio")
	if err := initramfs.Build(fixture.initramfs, initBin, filepath.Join(kdir, "modules"), nil); err != nil {
		return err
	}
	fixture.kernel = filepath.Join(kdir, "vmlinuz")

	root := filepath.Join(dir, "rootfs")
	if err := guesttest.MakeTree(root, busybox, []string{"etc", "home/alice", "work", "var/run"}, map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
		"etc/group":  "root:x:0:\nalice:x:1000:\n",
		"etc/motd":   "root owned\n",
	}); err != nil {
		return err
	}
	if err := os.Chown(filepath.Join(root, "home/alice"), 1000, 1000); err != nil {
		return err
	}
	fixture.image = filepath.Join(dir, "image.erofs")
	if out, err := exec.Command("mkfs.erofs", "--quiet", fixture.image, root).CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.erofs: %v\n%s", err, out)
	}
	return nil
}

// boot runs one request in a VM and returns the response and the console.
func (f *vmFixture) boot(t *testing.T, req *guest.Request, stdin []byte, inputDir string) (*guest.Response, string) {
	t.Helper()
	dir := t.TempDir()
	ioPath := filepath.Join(dir, "io.img")
	var in *bytes.Reader
	if stdin != nil {
		in = bytes.NewReader(stdin)
	}
	lim := guest.DefaultLimits()
	var err error
	if in != nil {
		err = guest.WriteIOFile(ioPath, req, in, inputDir, lim)
	} else {
		err = guest.WriteIOFile(ioPath, req, nil, inputDir, lim)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), req.Timeout+60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
		"-accel", "tcg", "-cpu", "max", "-m", "512M", "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
		"-kernel", f.kernel, "-initrd", f.initramfs,
		// microvm has neither HPET nor PM timer: without the TSC frequency
		// the kernel hangs calibrating its timers under TCG.
		"-append", "console=ttyS0 panic=-1 reboot=t quiet pe.debug=1 tsc=reliable tsc_early_khz="+hostTSCKHz(),
		"-no-reboot",
		"-drive", "id=img,file="+qemuPath(f.image)+",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=img",
		"-drive", "id=io,file="+qemuPath(ioPath)+",format=raw,if=none",
		"-device", "virtio-blk-device,drive=io",
	)
	var console bytes.Buffer
	cmd.Stdout, cmd.Stderr = &console, &console
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("qemu: %v\n%s", err, console.String())
	}
	t.Logf("VM ran %v", time.Since(start).Round(time.Millisecond))
	resp, err := guest.ReadResult(ioPath, lim)
	if err != nil {
		t.Fatalf("%v\nconsole:\n%s", err, console.String())
	}
	return resp, console.String()
}

// hostTSCKHz reads the host's TSC frequency for tsc_early_khz=.
func hostTSCKHz() string {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		return strings.TrimSpace(string(b))
	}
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return strconv.Itoa(int(mhz * 1000))
			}
		}
	}
	return "2000000"
}

// qemuPath escapes a path for a QEMU option list, where "," separates.
func qemuPath(p string) string { return strings.ReplaceAll(p, ",", ",,") }

func shReq(script string) *guest.Request {
	return &guest.Request{
		Argv:    []string{"sh", "-c", script},
		Env:     []string{"PATH=/bin"},
		Timeout: 20 * time.Second,
		Time:    time.Now(),
		Seed:    bytes.Repeat([]byte{1}, guest.SeedSize),
	}
}

// vmSlots bounds the VMs booting at once: TCG is CPU-bound.
var vmSlots = make(chan struct{}, 2)

func TestVM(t *testing.T) {
	f := vmSetup(t)
	inputs := t.TempDir()
	if err := os.WriteFile(filepath.Join(inputs, "run.sh"), []byte("#!/bin/sh\necho script ran as $(id -u) in $PWD\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(inputs, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../run.sh", filepath.Join(inputs, "sub", "link")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		req    *guest.Request
		stdin  []byte
		inputs string
		check  func(t *testing.T, r *guest.Response)
	}{
		{
			name: "streams, exit code, root-owned image files, hostname",
			req:  shReq(`echo hello; echo oops >&2; id; stat -c '%u:%g' /etc/motd; echo more >> /etc/motd && echo rw-ok; hostname; exit 3`),
			check: func(t *testing.T, r *guest.Response) {
				want := "hello\nuid=0(root) gid=0(root)\n0:0\nrw-ok\npe\n"
				if r.Result.ExitCode != 3 || string(r.Stdout) != want || string(r.Stderr) != "oops\n" {
					t.Errorf("exit %d stdout %q stderr %q, want 3 %q %q", r.Result.ExitCode, r.Stdout, r.Stderr, want, "oops\n")
				}
			},
		},
		{
			name: "user, env, workdir, stdin, inputs and outputs",
			req: &guest.Request{
				Argv: []string{"sh", "-c", `id -un; echo "$GREETING"; pwd; cat; /run/pe/input/run.sh; ls -l /run/pe/input/sub/link | grep -o 'link.*'; echo out > /run/pe/output/o.txt`},
				Env:  []string{"PATH=/bin", "GREETING=hi there"}, Cwd: "/home/alice", UID: 1000, GID: 1000,
				Timeout: 20 * time.Second, Time: time.Now(),
			},
			stdin:  []byte("typed\n"),
			inputs: inputs,
			check: func(t *testing.T, r *guest.Response) {
				want := "alice\nhi there\n/home/alice\ntyped\nscript ran as 1000 in /home/alice\nlink -> ../run.sh\n"
				if r.Result.ExitCode != 0 || string(r.Stdout) != want {
					t.Errorf("exit %d stdout %q stderr %q error %q, want 0 %q", r.Result.ExitCode, r.Stdout, r.Stderr, r.Result.Error, want)
				}
				out := t.TempDir()
				if err := r.ExtractOutputs(out); err != nil {
					t.Fatal(err)
				}
				if b, err := os.ReadFile(filepath.Join(out, "o.txt")); err != nil || string(b) != "out\n" {
					t.Errorf("output o.txt = %q, %v", b, err)
				}
			},
		},
		{
			name: "time limit: killed, output before it kept",
			req: func() *guest.Request {
				r := shReq(`echo before; sleep 60; echo after`)
				r.Timeout = 2 * time.Second
				return r
			}(),
			check: func(t *testing.T, r *guest.Response) {
				if !r.Result.TimedOut || r.Result.Signal != "SIGKILL" || string(r.Stdout) != "before\n" {
					t.Errorf("timed out %v signal %q stdout %q, want true SIGKILL \"before\\n\"", r.Result.TimedOut, r.Result.Signal, r.Stdout)
				}
			},
		},
		{
			name: "printing forever: cut at MaxOutput and flagged",
			req: func() *guest.Request {
				r := shReq(`yes`)
				r.Timeout = 3 * time.Second
				r.MaxOutput = 64 << 10
				return r
			}(),
			check: func(t *testing.T, r *guest.Response) {
				if !r.Result.StdoutTruncated || len(r.Stdout) != 64<<10 || !r.Result.TimedOut || r.Result.StdoutBytes <= 64<<10 {
					t.Errorf("truncated %v, %d bytes kept of %d, timed out %v", r.Result.StdoutTruncated, len(r.Stdout), r.Result.StdoutBytes, r.Result.TimedOut)
				}
			},
		},
		{
			name: "fork bomb: the pids limit holds, the time limit ends it",
			req: func() *guest.Request {
				r := shReq(`b() { b | b & }; b; sleep 60`)
				r.Timeout = 4 * time.Second
				r.PidsLimit = 64
				return r
			}(),
			check: func(t *testing.T, r *guest.Response) {
				if !r.Result.TimedOut || r.Result.Error != "" {
					t.Errorf("timed out %v error %q, want a clean time-out", r.Result.TimedOut, r.Result.Error)
				}
			},
		},
		{
			name: "memory hog: OOM-killed, reported",
			req: func() *guest.Request {
				r := shReq(`dd if=/dev/zero of=/dev/null bs=200M count=1`)
				r.MemoryLimit = 64 << 20
				return r
			}(),
			check: func(t *testing.T, r *guest.Response) {
				if r.Result.Rusage.OOMKills == 0 || r.Result.ExitCode == 0 {
					t.Errorf("exit %d signal %q oom kills %d, want an OOM kill", r.Result.ExitCode, r.Result.Signal, r.Result.Rusage.OOMKills)
				}
			},
		},
		{
			name: "the program cannot reach the I/O disk or the init",
			req:  shReq(`ls /dev/vd* /sys/block 2>&1; mknod /tmp/io b 254 16 2>&1; kill -9 -1; echo still here`),
			check: func(t *testing.T, r *guest.Response) {
				want := "ls: /dev/vd*: No such file or directory\nls: /sys/block: No such file or directory\nmknod: /tmp/io: Operation not permitted\nstill here\n"
				if r.Result.ExitCode != 0 || string(r.Stdout) != want {
					t.Errorf("exit %d stdout %q error %q, want 0 %q", r.Result.ExitCode, r.Stdout, r.Result.Error, want)
				}
			},
		},
		{
			name: "command not found",
			req:  &guest.Request{Argv: []string{"nosuch"}, Env: []string{"PATH=/bin"}, Timeout: 20 * time.Second},
			check: func(t *testing.T, r *guest.Response) {
				if r.Result.ExitCode != 127 || !strings.Contains(r.Result.Error, "not found") {
					t.Errorf("exit %d error %q, want 127 and not found", r.Result.ExitCode, r.Result.Error)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			vmSlots <- struct{}{}
			defer func() { <-vmSlots }()
			r, console := f.boot(t, tc.req, tc.stdin, tc.inputs)
			t.Logf("result %+v", r.Result)
			tc.check(t, r)
			if t.Failed() {
				t.Logf("console:\n%s", console)
			}
		})
	}
}

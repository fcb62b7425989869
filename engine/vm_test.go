package engine

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/guest"
)

// These tests boot real VMs (see helpers_test.go). Each run costs seconds
// under TCG, so related checks share a run where that stays readable.

func TestVMExitCodesAndStreams(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	for _, c := range []struct {
		name       string
		script     string
		wantStatus int
		wantSignal string
		wantStdout string
		wantStderr string
	}{
		{"zero", `echo out; echo err >&2`, 0, "", "out\n", "err\n"},
		{"three", `echo partial; exit 3`, 3, "", "partial\n", ""},
		// The program is PID 1 of its PID namespace, where it cannot get
		// SIGKILL from itself: a child it runs can.
		{"killed", `echo dying >&2; sh -c 'kill -9 $$'; exit $?`, 137, "", "", "dying\nKilled\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh(c.script)}})
			if got := res.ExitStatus(); got != c.wantStatus {
				t.Errorf("exit status %d, want %d", got, c.wantStatus)
			}
			if res.Signal != c.wantSignal {
				t.Errorf("signal %q, want %q", res.Signal, c.wantSignal)
			}
			if string(res.Stdout) != c.wantStdout || string(res.Stderr) != c.wantStderr {
				t.Errorf("stdout %q, stderr %q; want %q, %q", res.Stdout, res.Stderr, c.wantStdout, c.wantStderr)
			}
			// The engine stops the VM on the guest's result-ready line
			// (as the serial console writes it, "\r\n" and all), so the
			// guest never gets to power off by itself.
			if !bytes.Contains(res.Console, []byte(guest.ResultReady)) || bytes.Contains(res.Console, []byte("reboot: Power down")) {
				t.Errorf("the VM was not stopped on the result-ready line; console:\n%s", res.Console)
			}
		})
	}
}

func TestVMStdin(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	in := "line one\nline two\n\x00binary\xff\n"
	res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: []string{"cat"}}, Stdin: strings.NewReader(in)})
	if res.ExitStatus() != 0 || string(res.Stdout) != in {
		t.Errorf("cat: exit %d, stdout %q; want 0, %q", res.ExitStatus(), res.Stdout, in)
	}
}

// TestVMImageConfig checks the image's config as the program sees it:
// the default cmd, the environment with the default PATH and HOME, the
// working directory, root.
func TestVMImageConfig(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	cfg := busyboxConfig()
	cfg.Config.Cmd = sh(`echo "cmd=$0"; echo "pwd=$(pwd)"; echo "id=$(id)"; env | sort`)
	e := newTestEngine(t, f, StaticSource{"img": {Reference: "img", EROFSPath: f.erofs, Config: cfg}})
	res := run(t, e, &RunRequest{Image: "img"})
	want := []string{
		"cmd=sh",
		"pwd=/srv/app",
		"id=uid=0(root) gid=0(root)", // busybox id lists supplementary groups only
		"GREETING=hello from the image",
		"HOME=/root",
		"LANG=C",
		"PATH=" + DefaultPath,
	}
	for _, w := range want {
		if !bytes.Contains(res.Stdout, []byte(w+"\n")) {
			t.Errorf("stdout lacks %q:\n%s", w, res.Stdout)
		}
	}
}

// TestVMOverrides checks env, working directory and a user name from the
// image's /etc/passwd (with her groups from /etc/group) in one run.
func TestVMOverrides(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	res := run(t, e, &RunRequest{Overrides: Overrides{
		Cmd:     sh(`echo "pwd=$(pwd)"; echo "id=$(id)"; echo "g=$GREETING"; echo "x=$EXTRA"; echo "home=$HOME"; touch "$HOME/ok" && echo home-writable`),
		Env:     []string{"GREETING=overridden", "EXTRA=1"},
		Workdir: "/tmp",
		User:    "alice",
	}})
	want := "pwd=/tmp\nid=uid=1000(alice) gid=1000(alice) groups=50(staff)\ng=overridden\nx=1\nhome=/home/alice\nhome-writable\n"
	if diff := cmp.Diff(want, string(res.Stdout)); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
}

func TestVMEntrypoint(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	cfg := busyboxConfig()
	cfg.Config.Entrypoint = []string{"echo", "ep"}
	cfg.Config.Cmd = []string{"default"}
	e := newTestEngine(t, f, StaticSource{"ep": {Reference: "ep", EROFSPath: f.erofs, Config: cfg}})
	for _, c := range []struct {
		name string
		o    Overrides
		want string
	}{
		{"args replace cmd", Overrides{Cmd: []string{"x", "y"}}, "ep x y\n"},
		{"entrypoint replaces both", Overrides{Entrypoint: []string{"echo"}, Cmd: []string{"only"}}, "only\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			res := run(t, e, &RunRequest{Image: "ep", Overrides: c.o})
			if string(res.Stdout) != c.want {
				t.Errorf("stdout %q, want %q", res.Stdout, c.want)
			}
		})
	}
}

func TestVMInputOutput(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	in := t.TempDir()
	for _, err := range []error{
		os.WriteFile(filepath.Join(in, "run.sh"), []byte("#!/bin/sh\nset -e\ncd /run/pe/output\nmkdir sub\ntr a-z A-Z < /run/pe/input/data.txt > sub/upper.txt\nln -s sub/upper.txt link\nprintf '#!/bin/sh\\n' > tool && chmod 755 tool\necho done\n"), 0o755),
		os.WriteFile(filepath.Join(in, "data.txt"), []byte("some input\n"), 0o644),
		os.Symlink("data.txt", filepath.Join(in, "alias")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "out")
	res := run(t, e, &RunRequest{
		Overrides: Overrides{Cmd: sh(`ls -l /run/pe/input >&2; cat /run/pe/input/alias >&2; /run/pe/input/run.sh`)},
		InputDir:  in,
		OutputDir: out,
	})
	if res.ExitStatus() != 0 || string(res.Stdout) != "done\n" {
		t.Fatalf("exit %d, stdout %q", res.ExitStatus(), res.Stdout)
	}
	if !bytes.Contains(res.Stderr, []byte("-rwxr-xr-x")) || !bytes.Contains(res.Stderr, []byte("alias -> data.txt")) || !bytes.HasSuffix(res.Stderr, []byte("some input\n")) {
		t.Errorf("the inputs lost their modes or links:\n%s", res.Stderr)
	}
	b, err := os.ReadFile(filepath.Join(out, "sub/upper.txt"))
	if err != nil || string(b) != "SOME INPUT\n" {
		t.Errorf("sub/upper.txt: %q, %v", b, err)
	}
	if l, err := os.Readlink(filepath.Join(out, "link")); err != nil || l != "sub/upper.txt" {
		t.Errorf("link: %q, %v", l, err)
	}
	if fi, err := os.Stat(filepath.Join(out, "tool")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("tool: %v, %v; want mode 0755", fi, err)
	}
}

// TestVMTimeout runs a program past its time limit: exit 124, the output
// written before comes back, and the VM and its files are gone soon after
// the limit.
func TestVMTimeout(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	tmp := e.opts.TempDir
	start := time.Now()
	res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh(`echo before; echo err-before >&2; sleep 600; echo after`)}, Timeout: 2 * time.Second})
	took := time.Since(start)
	if !res.TimedOut || res.ExitStatus() != ExitTimedOut {
		t.Errorf("timed out %v, exit status %d; want true, 124", res.TimedOut, res.ExitStatus())
	}
	if string(res.Stdout) != "before\n" || string(res.Stderr) != "err-before\n" {
		t.Errorf("stdout %q, stderr %q; want the output from before the limit", res.Stdout, res.Stderr)
	}
	// Boot under TCG on a loaded machine takes seconds; the program's 600 s
	// must not.
	if took > 2*time.Second+GraceTCG {
		t.Errorf("the run took %v, over the limit plus grace", took)
	}
	if p := res.Durations["guest_program"]; p < 2*time.Second || p > 5*time.Second {
		t.Errorf("guest_program %v, want about the 2 s limit", p)
	}
	if left := walkFiles(tmp); len(left) > 0 {
		t.Errorf("files left behind: %q", left)
	}
}

// TestVMOutputFlood runs a program that prints forever: its output is cut
// at MaxOutput and flagged, the program keeps running until the limit.
func TestVMOutputFlood(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh(`echo start >&2; yes`)}, Timeout: 3 * time.Second, MaxOutput: 64 << 10})
	if !res.StdoutTruncated || res.StderrTruncated {
		t.Errorf("stdout truncated %v, stderr truncated %v; want true, false", res.StdoutTruncated, res.StderrTruncated)
	}
	if len(res.Stdout) != 64<<10 || !bytes.HasPrefix(res.Stdout, []byte("y\ny\n")) {
		t.Errorf("stdout is %d bytes starting %q; want 64 KiB of y", len(res.Stdout), clip(res.Stdout[:min(8, len(res.Stdout))]))
	}
	if !res.TimedOut || string(res.Stderr) != "start\n" {
		t.Errorf("timed out %v, stderr %q", res.TimedOut, res.Stderr)
	}
	if res.StdoutBytes <= 64<<10 {
		t.Errorf("StdoutBytes %d: the program should have kept writing", res.StdoutBytes)
	}
}

// TestVMResourceExhaustion runs a fork bomb and a memory hog: each ends
// with a clear status, and the next run works.
func TestVMResourceExhaustion(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)

	bomb := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh(`bomb() { bomb | bomb & }; bomb; sleep 1; echo survived`)}, Timeout: 4 * time.Second})
	if bomb.Error != "" && !bomb.TimedOut {
		t.Errorf("fork bomb: guest error %q", bomb.Error)
	}
	t.Logf("fork bomb: exit %d, timed out %v, signal %q", bomb.ExitStatus(), bomb.TimedOut, bomb.Signal)

	// dd reads a 200 MiB block from /dev/zero into one buffer: the kernel
	// grants the allocation (less than the VM's 256 MiB), and the read
	// touches it past the program's share.
	hog := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh(`dd if=/dev/zero of=/dev/null bs=200M count=1; echo "dd exited $?" >&2`)}, Timeout: 30 * time.Second, MemoryMiB: 256})
	if hog.TimedOut || hog.Rusage.OOMKills == 0 || !(hog.ExitStatus() == 137 || bytes.Contains(hog.Stderr, []byte("dd exited 137"))) {
		t.Errorf("memory hog: exit %d, timed out %v, oom kills %d, stderr %q; want an OOM kill", hog.ExitStatus(), hog.TimedOut, hog.Rusage.OOMKills, hog.Stderr)
	}

	next := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh(`echo still fine`)}})
	if next.ExitStatus() != 0 || string(next.Stdout) != "still fine\n" {
		t.Errorf("the run after: exit %d, stdout %q", next.ExitStatus(), next.Stdout)
	}
}

// TestVMSandbox checks the program cannot reach the I/O device or the
// init.
func TestVMSandbox(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh(`
		for d in /dev/vda /dev/vdb /dev/block/*; do [ -b "$d" ] && echo "DEVICE-VISIBLE $d"; done
		find / -xdev -type b 2>/dev/null | grep . && echo DEVICE-VISIBLE
		mknod /tmp/vdb b 254 16 2>/dev/null && echo garbage > /tmp/vdb 2>/dev/null && echo WROTE-NODE
		echo garbage > /dev/vdb 2>/dev/null
		kill -9 1 2>/dev/null; kill -9 -1 2>/dev/null
		echo alive
	`)}})
	if res.ExitStatus() != 0 {
		t.Errorf("exit status %d", res.ExitStatus())
	}
	for _, bad := range []string{"DEVICE-VISIBLE", "WROTE-NODE"} {
		if bytes.Contains(res.Stdout, []byte(bad)) {
			t.Errorf("the program could: %s", bad)
		}
	}
	if !bytes.Contains(res.Stdout, []byte("alive")) {
		t.Errorf("stdout %q, want alive", res.Stdout)
	}
}

func TestVMMissingCommand(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: []string{"no-such-program", "arg"}}})
	if res.ExitStatus() != 127 {
		t.Errorf("exit status %d, want 127", res.ExitStatus())
	}
	if !strings.Contains(res.Error+string(res.Stderr), "no-such-program") {
		t.Errorf("error %q, stderr %q: want a message naming the command", res.Error, res.Stderr)
	}
}

// TestVMBrokenKernel boots kernels that never produce a result: one QEMU
// cannot load, one that panics (no usable initramfs), one whose init never
// ends. pe fails with the console's end, after the deadline at most, and
// leaves no process or file behind.
func TestVMBrokenKernel(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	dir := t.TempDir()
	garbage, hangInit := brokenBoot(t, f, dir)
	for _, c := range []struct {
		name    string
		vmlinuz string
		init    string
		want    string // in the error
	}{
		{"garbage", garbage, f.init, "failed: qemu exited: exit status 1: qemu"},
		{"hangs", f.kernel.Vmlinuz, hangInit, "did not finish within"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			e, err := New(brokenOptions(f, c.vmlinuz, c.init, filepath.Join(dir, c.name+"-cache"), tmp, func(o *Options) { o.Grace = 8 * time.Second }))
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = runErr(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("echo never")}, Timeout: time.Second})
			took := time.Since(start)
			var vmErr *VMError
			if !errors.As(err, &vmErr) || !errors.Is(err, guest.ErrNoResult) {
				t.Fatalf("error %v (%T), want a *VMError wrapping guest.ErrNoResult", err, err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q lacks %q", err, c.want)
			}
			if took > time.Second+8*time.Second+10*time.Second {
				t.Errorf("took %v, want the deadline (9 s) plus little", took)
			}
			t.Logf("error: %v\nconsole tail:\n%s", err, vmErr.ConsoleTail(5))
			if left := walkFiles(tmp); len(left) > 0 {
				t.Errorf("files left behind: %q", left)
			}
		})
	}

	// With boot snapshots, the snapshot's boot fails first; the run then
	// boots, and fails as above. The failure is remembered: the next run
	// does not try again.
	t.Run("garbage, boot snapshots", func(t *testing.T) {
		t.Parallel()
		tmp, cache := t.TempDir(), filepath.Join(dir, "boot-cache")
		e, err := New(brokenOptions(f, garbage, f.init, cache, tmp, func(o *Options) { o.BootSnapshots = true }))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			_, err = runErr(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("echo never")}, Timeout: time.Second})
			if !errors.Is(err, guest.ErrNoResult) {
				t.Fatalf("run %d: %v, want guest.ErrNoResult", i, err)
			}
			notes, _ := filepath.Glob(filepath.Join(cache, bootSnapshotsDir, "*"+bootSnapshotFailedSuffix))
			if len(notes) != 1 {
				t.Fatalf("run %d: failure notes %q, want one", i, notes)
			}
			fi, _ := os.Stat(notes[0])
			if i == 0 {
				os.Chtimes(notes[0], fi.ModTime().Add(-time.Minute), fi.ModTime().Add(-time.Minute))
			} else if time.Since(fi.ModTime()) < time.Minute {
				t.Errorf("the second run tried the boot snapshot again (note written %v)", fi.ModTime())
			}
		}
		if _, err := e.bootSnapshot(t.Context(), DefaultMemoryMiB, DefaultCPUs); !errors.Is(err, errBootSnapshotFailed) || !strings.Contains(err.Error(), "qemu") {
			t.Errorf("bootSnapshot after a failure: %v, want errBootSnapshotFailed with QEMU's reason", err)
		}
		if left := walkFiles(tmp); len(left) > 0 {
			t.Errorf("files left behind: %q", left)
		}
		if snaps, _ := filepath.Glob(filepath.Join(cache, bootSnapshotsDir, "*")); len(snaps) != 1 {
			t.Errorf("boot snapshot directory holds %q, want the note alone", snaps)
		}
	})
}

// TestVMCompressedImage runs from an image whose files (busybox itself
// included) are lz4hc-compressed with 16 KiB pclusters and the compact
// index layout, what --compress lz4hc writes by default: the guest kernel
// must decompress the data pe's writer produced. The program checks a
// large compressible file and a file that does not compress.
//
// The full index layout is not run here: the writer uses one layout for a
// whole image, and the engine attaches one image per VM, so it would take
// a second boot. The guest kernel reads full indexes in erofs's
// TestGuestKernelReadsCompressed (PE_TEST_GUEST_KERNEL=1), the host kernel
// in TestCompressedMount.
func TestVMCompressedImage(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	text := []byte(strings.Repeat("the guest kernel reads pe's lz4hc clusters\n", 20000))
	noise := make([]byte, 300000)
	for i := range noise {
		noise[i] = byte(i*7919 ^ i>>5 ^ i>>13)
	}
	img := writeImage(t, f, erofs.WriterOptions{Compression: erofs.CompressionLZ4HC, PclusterSize: 16384, CompressIndex: erofs.IndexCompact},
		map[string][]byte{"data/text": text, "data/noise": noise})
	// The image must really be compressed, or this test proves nothing.
	check, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close()
	fsys, err := erofs.Open(check)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"data/text", "bin/busybox"} {
		fi, err := fsys.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if l := fi.Sys().(*erofs.Stat).Layout; l != 3 {
			t.Fatalf("%s has data layout %d, not 3 (compressed, compact indexes)", p, l)
		}
	}

	e := newTestEngine(t, f, StaticSource{"lz4hc": {Reference: "lz4hc", Digest: "sha256:lz4hc", EROFSPath: img, Config: busyboxConfig()}})
	res := run(t, e, &RunRequest{Image: "lz4hc", Overrides: Overrides{Cmd: sh("sha256sum /data/text /data/noise; echo done")}})
	want := fmt.Sprintf("%x  /data/text\n%x  /data/noise\ndone\n", sha256.Sum256(text), sha256.Sum256(noise))
	if res.ExitStatus() != 0 || string(res.Stdout) != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0, %q", res.ExitStatus(), res.Stdout, clip(res.Stderr), want)
	}
}

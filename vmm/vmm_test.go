package vmm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestRing(t *testing.T) {
	for _, c := range []struct {
		desc   string
		size   int
		writes []string
		want   string
	}{
		{"empty", 4, nil, ""},
		{"fits", 8, []string{"ab", "cd"}, "abcd"},
		{"exactly full", 4, []string{"ab", "cd"}, "abcd"},
		{"wraps", 4, []string{"abc", "def"}, "cdef"},
		{"wraps twice", 4, []string{"abc", "de", "fgh", "i"}, "fghi"},
		{"one big write", 4, []string{"a", "0123456789"}, "6789"},
		{"big then small", 4, []string{"0123456789", "ab"}, "89ab"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			r := NewRing(c.size)
			total := 0
			for _, w := range c.writes {
				n, err := r.Write([]byte(w))
				if n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
				total += n
			}
			if got := string(r.Bytes()); got != c.want {
				t.Errorf("Bytes() = %q, want %q", got, c.want)
			}
			if r.Total() != int64(total) {
				t.Errorf("Total() = %d, want %d", r.Total(), total)
			}
		})
	}
}

func TestStepsEditing(t *testing.T) {
	step := func(name string) Step {
		return Step{Name: name, Fn: func(context.Context, *Launch) error { return nil }}
	}
	base := Steps{step("a"), step("b"), step("c")}
	for _, c := range []struct {
		desc string
		got  Steps
		want []string
	}{
		{"append", base.Append(step("d")), []string{"a", "b", "c", "d"}},
		{"prepend", base.Prepend(step("z")), []string{"z", "a", "b", "c"}},
		{"insert after", base.InsertAfter("a", step("x")), []string{"a", "x", "b", "c"}},
		{"insert after missing", base.InsertAfter("nope", step("x")), []string{"a", "b", "c", "x"}},
		{"replace", base.Replace("b", step("y")), []string{"a", "y", "c"}},
		{"remove", base.Remove("b"), []string{"a", "c"}},
	} {
		if diff := cmp.Diff(c.want, c.got.Names()); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.desc, diff)
		}
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, base.Names()); diff != "" {
		t.Errorf("editing changed the original (-want +got):\n%s", diff)
	}
	if !base.Has("b") || base.Has("x") {
		t.Error("Has is wrong")
	}
}

// fakeMachine is a Machine that runs until killed.
type fakeMachine struct {
	killed atomic.Bool
	done   chan struct{}
}

func (m *fakeMachine) Wait(ctx context.Context) error {
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (m *fakeMachine) Kill() error {
	if m.killed.CompareAndSwap(false, true) {
		close(m.done)
	}
	return nil
}
func (m *fakeMachine) ConsoleLog() []byte { return nil }
func (m *fakeMachine) PID() int           { return 0 }

// TestStepsCleanupOnFailure checks that a failing step undoes what the
// earlier ones made: the work directory and a started machine.
func TestStepsCleanupOnFailure(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	m := &fakeMachine{done: make(chan struct{})}
	var cleaned []string
	steps := Steps{
		StepValidate,
		StepWorkDir,
		{Name: "register", Fn: func(ctx context.Context, l *Launch) error {
			l.OnCleanup(func() { cleaned = append(cleaned, "first") })
			l.OnCleanup(func() { cleaned = append(cleaned, "second") })
			return nil
		}},
		{Name: "start", Fn: func(ctx context.Context, l *Launch) error { l.Machine = m; return nil }},
		{Name: "fail", Fn: func(ctx context.Context, l *Launch) error { return errors.New("boom") }},
	}
	kernel := filepath.Join(tmp, "vmlinuz")
	os.WriteFile(kernel, []byte("k"), 0o644)
	_, err := steps.Run(t.Context(), &Launch{Config: (&Config{Kernel: kernel}).WithDefaults(), VMM: "fake"})
	if err == nil || !strings.Contains(err.Error(), "starting fake: fail: boom") {
		t.Fatalf("error %v, want one naming the step", err)
	}
	if !m.killed.Load() {
		t.Error("the started machine was not killed")
	}
	if diff := cmp.Diff([]string{"second", "first"}, cleaned); diff != "" {
		t.Errorf("cleanups (-want +got):\n%s", diff)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 1 { // the kernel file only
		t.Errorf("left in TMPDIR: %v", ents)
	}
}

func TestStepsNoMachine(t *testing.T) {
	_, err := Steps{}.Run(t.Context(), &Launch{Config: &Config{}, VMM: "fake"})
	if err == nil {
		t.Fatal("a chain that starts nothing succeeded")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Kernel: "k"}, ""},
		{Config{}, "no kernel"},
		{Config{Kernel: "k", MemoryMiB: 16}, "at least 64 MiB"},
		{Config{Kernel: "k", Accel: "hvf"}, "acceleration"},
		{Config{Kernel: "k", Cmdline: "a\nb"}, "newline"},
		{Config{Kernel: "k", Disks: []Disk{{}}}, "no path"},
		{Config{Kernel: "k", Disks: []Disk{{NBD: os.Stdin, ReadOnly: true}}}, ""},
		{Config{Kernel: "k", Disks: []Disk{{NBD: os.Stdin}}}, "must be read-only"},
		{Config{Kernel: "k", Disks: []Disk{{NBD: os.Stdin, Path: "p", ReadOnly: true}}}, "both a path and an NBD socket"},
	} {
		err := c.cfg.Validate()
		if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: error %v, want %q", c.cfg, err, c.want)
		}
	}
}

// startFake starts a real process through the default steps, standing in
// for a VMM: sh printing a console and exiting with a status.
func startFake(t *testing.T, script string) *Process {
	t.Helper()
	l := &Launch{Config: (&Config{Kernel: "/dev/null"}).WithDefaults(), VMM: "fake", Binary: "/bin/sh", Args: []string{"-c", script}, Log: nil}
	steps := Steps{StepWorkDir, StepStartProcess}
	m, err := steps.Run(t.Context(), l)
	if err != nil {
		t.Fatal(err)
	}
	return m.(*Process)
}

func TestProcessExit(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	p := startFake(t, `echo console line; echo oops >&2; exit 3`)
	err := p.Wait(t.Context())
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Killed || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("Wait: %v, want an *ExitError with stderr", err)
	}
	if got := string(p.ConsoleLog()); got != "console line\n" {
		t.Errorf("console %q", got)
	}
	if ents, _ := os.ReadDir(os.Getenv("TMPDIR")); len(ents) != 0 {
		t.Errorf("work directory left: %v", ents)
	}
	if p.Kill() != nil {
		t.Error("Kill after exit failed")
	}
}

func TestProcessKill(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	// A child that would outlive sh if only sh were killed.
	p := startFake(t, `sleep 600 & echo started; wait`)
	deadline := time.Now().Add(5 * time.Second)
	for !bytes.Contains(p.ConsoleLog(), []byte("started")) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	if err := p.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait on a running machine: %v", err)
	}
	cancel()
	start := time.Now()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("Kill took %v", time.Since(start))
	}
	err := p.Wait(t.Context())
	var ee *ExitError
	if !errors.As(err, &ee) || !ee.Killed {
		t.Errorf("Wait after Kill: %v, want a killed *ExitError", err)
	}
	// The process group is gone: no sleep left (once init has reaped it).
	for deadline := time.Now().Add(5 * time.Second); syscallKill0(-p.PID()) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Error("the VMM's process group survived Kill")
			break
		}
	}
	if ents, _ := os.ReadDir(os.Getenv("TMPDIR")); len(ents) != 0 {
		t.Errorf("work directory left: %v", ents)
	}
}

func TestProcessConsoleFile(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	var live bytes.Buffer
	l := &Launch{Config: (&Config{Kernel: "/dev/null", Console: &live}).WithDefaults(), VMM: "fake", Binary: "/bin/sh"}
	steps := Steps{StepWorkDir, {Name: "args", Fn: func(ctx context.Context, l *Launch) error {
		l.ConsoleFile = filepath.Join(l.WorkDir, "console.log")
		l.Args = []string{"-c", "echo from the file > " + l.ConsoleFile}
		return nil
	}}, StepStartProcess}
	m, err := steps.Run(t.Context(), l)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := string(m.ConsoleLog()); got != "from the file\n" {
		t.Errorf("console %q (the file is gone with the work directory; its end must be kept)", got)
	}
	if live.String() != "from the file\n" {
		t.Errorf("live console %q", live.String())
	}
}

func TestFindKernel(t *testing.T) {
	data := t.TempDir()
	t.Setenv("PE_DATA_DIR", data)
	t.Setenv("PE_KERNEL", "")
	_, err := FindKernel("")
	var nf *KernelNotFoundError
	if !errors.As(err, &nf) || !strings.Contains(err.Error(), "make kernel") {
		t.Fatalf("no kernel: %v, want a *KernelNotFoundError saying how to install one", err)
	}
	kdir := filepath.Join(data, "kernel")
	os.MkdirAll(filepath.Join(kdir, "modules"), 0o755)
	os.WriteFile(filepath.Join(kdir, "vmlinuz"), []byte("k"), 0o644)
	os.WriteFile(filepath.Join(kdir, "version"), []byte("6.1.0-test\n"), 0o644)
	k, err := FindKernel("")
	if err != nil {
		t.Fatal(err)
	}
	want := &Kernel{Dir: kdir, Vmlinuz: filepath.Join(kdir, "vmlinuz"), ModulesDir: filepath.Join(kdir, "modules"), Version: "6.1.0-test"}
	if diff := cmp.Diff(want, k); diff != "" {
		t.Errorf("FindKernel (-want +got):\n%s", diff)
	}
	// An override naming the image file.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "bzImage"), []byte("k"), 0o644)
	k, err = FindKernel(filepath.Join(other, "bzImage"))
	if err != nil || k.Vmlinuz != filepath.Join(other, "bzImage") || k.ModulesDir != "" {
		t.Errorf("FindKernel(file) = %+v, %v", k, err)
	}
	t.Setenv("PE_KERNEL", filepath.Join(other, "missing"))
	if _, err := FindKernel(""); !errors.As(err, &nf) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("PE_KERNEL not used: %v", err)
	}
}

func TestCPUInfoKHz(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"processor\t: 0\ncpu MHz\t\t: 2445.426\n", 2445426},
		{"cpu MHz : 3000.000\ncpu MHz : 1200\n", 3000000},
		{"flags : fpu\n", 0},
		{"cpu MHz : nan\n", 0},
	} {
		if got := cpuinfoKHz([]byte(c.in)); got != c.want {
			t.Errorf("cpuinfoKHz(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

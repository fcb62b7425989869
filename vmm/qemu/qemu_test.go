package qemu

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/vmm"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got, one argument a line, with testdata/name.golden.
func golden(t *testing.T, name string, got []string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	text := strings.Join(got, "\n") + "\n"
	if *update {
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), text); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

func TestArgs(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  vmm.Config
	}{
		{"tcg-run", vmm.Config{
			Kernel: "/k/vmlinuz", Initramfs: "/c/initramfs.cpio",
			Cmdline: "quiet panic=-1 pe.image=/dev/vda pe.io=/dev/vdb",
			Disks:   []vmm.Disk{{Path: "/images/rootfs.erofs", ReadOnly: true}, {Path: "/tmp/run,1/io.img"}},
			Accel:   vmm.AccelTCG,
		}},
		{"kvm-run", vmm.Config{
			Kernel: "/k/vmlinuz", Initramfs: "/c/initramfs.cpio",
			Cmdline: "quiet panic=-1 pe.image=/dev/vda pe.io=/dev/vdb pe.debug=1",
			Disks:   []vmm.Disk{{Path: "/images/rootfs.erofs", ReadOnly: true}, {Path: "/tmp/run/io.img"}},
			Accel:   vmm.AccelKVM, CPUs: 2, MemoryMiB: 1024,
		}},
		{"kvm-probe", vmm.Config{Kernel: "/k/vmlinuz", Cmdline: vmm.ProbeCmdline, Accel: vmm.AccelKVM, MemoryMiB: 128}},
	} {
		t.Run(c.name, func(t *testing.T) {
			golden(t, c.name, unconfinedArgs(c.cfg.WithDefaults(), 2445426))
		})
	}
}

func TestCmdline(t *testing.T) {
	for _, c := range []struct {
		cmdline, accel string
		tsc            int64
		want           string
	}{
		{"quiet", vmm.AccelTCG, 1000, "console=ttyS0 reboot=t tsc_early_khz=1000 tsc=reliable quiet"},
		{"quiet", vmm.AccelKVM, 1000, "console=ttyS0 reboot=t quiet"},
		{"quiet", vmm.AccelTCG, 0, "console=ttyS0 reboot=t quiet"},
		{"console=hvc0 reboot=k tsc_early_khz=5 x", vmm.AccelTCG, 1000, "console=hvc0 reboot=k tsc_early_khz=5 x"},
	} {
		if got := Cmdline(&vmm.Config{Cmdline: c.cmdline, Accel: c.accel}, c.tsc); got != c.want {
			t.Errorf("Cmdline(%q, %s, %d) = %q, want %q", c.cmdline, c.accel, c.tsc, got, c.want)
		}
	}
}

func TestFindMissing(t *testing.T) {
	_, err := Find("no-such-qemu-binary")
	if err == nil || !strings.Contains(err.Error(), InstallHint) {
		t.Errorf("Find: %v, want an error with %q", err, InstallHint)
	}
}

func TestStepsCanBeEdited(t *testing.T) {
	b := New("")
	var seen []string
	b.Steps = b.DefaultSteps().Replace(vmm.StepStartProcess.Name, vmm.Step{Name: "record", Fn: func(ctx context.Context, l *vmm.Launch) error {
		seen = l.Args
		return context.Canceled
	}}).Remove(StepBinaryName)
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, nil, 0o644)
	_, err := b.Start(t.Context(), &vmm.Config{Kernel: kernel})
	if err == nil || !strings.Contains(err.Error(), "record") {
		t.Fatalf("Start: %v", err)
	}
	if !slices.Contains(seen, "-M") {
		t.Errorf("the args step did not run before the replaced one: %q", seen)
	}
}

// TestBoot boots the guest kernel under TCG with the probe command line
// (no initramfs: the kernel ends in a root-mount panic and QEMU exits).
func TestBoot(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	if _, err := Find(""); err != nil {
		t.Skip(err)
	}
	k, err := vmm.FindKernel("")
	if err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := New("").Start(ctx, &vmm.Config{Kernel: k.Vmlinuz, Cmdline: vmm.ProbeCmdline, Accel: vmm.AccelTCG, MemoryMiB: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Kill()
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v\nconsole:\n%s", err, m.ConsoleLog())
	}
	t.Logf("booted to the panic in %v", time.Since(start))
	if !strings.Contains(string(m.ConsoleLog()), "Kernel panic") {
		t.Errorf("console lacks the panic:\n%s", m.ConsoleLog())
	}
}

// unconfinedArgs returns QEMU's arguments for cfg naming its files by
// their host paths, as an unconfined QEMU gets them.
func unconfinedArgs(cfg *vmm.Config, tscKHz int64) []string {
	a, err := pathAccess(cfg, fdTable{&vmm.Launch{}})
	if err != nil {
		panic(err) // only NBD sockets fail, and the callers pass none
	}
	return argsWith(cfg, tscKHz, a)
}

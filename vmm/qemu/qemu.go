// Package qemu is pe's QEMU backend: micro-VMs on QEMU's microvm machine
// (virtio-mmio devices, no PCI, no firmware menus, no network), with KVM
// or with TCG, QEMU's CPU emulator, where KVM does not work.
//
// The guest console is the machine's 8250 serial port (ttyS0), wired to
// QEMU's standard output, which the machine keeps. QEMU exits when the
// guest powers off or reboots (-no-reboot), so no QMP monitor is needed.
package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/pe-project/pe/vmm"
)

// Name is the backend's name.
const Name = "qemu"

// DefaultBinary is the QEMU executable looked up in PATH.
const DefaultBinary = "qemu-system-x86_64"

// InstallHint says how to install QEMU on Debian.
const InstallHint = "apt-get install -y qemu-system-x86"

// Names of the steps of DefaultSteps.
const (
	StepBinaryName = "qemu.Binary"
	StepArgsName   = "qemu.Args"
)

// Backend starts VMs with QEMU. The zero value is ready to use.
type Backend struct {
	// Binary is the QEMU executable; "" looks DefaultBinary up in PATH.
	Binary string
	// Steps is the start-up chain; nil means DefaultSteps.
	Steps vmm.Steps
	// TSCKHz returns the host TSC frequency given to TCG guests; nil means
	// vmm.HostTSCKHz.
	TSCKHz func() int64
}

// New returns a QEMU backend using binary ("" for DefaultBinary from PATH).
func New(binary string) *Backend { return &Backend{Binary: binary} }

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// DefaultSteps is the start-up chain: check the config, find QEMU, build
// its arguments, start it.
func (b *Backend) DefaultSteps() vmm.Steps {
	return vmm.Steps{
		vmm.StepValidate,
		{Name: StepBinaryName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			path, err := Find(b.Binary)
			if err != nil {
				return err
			}
			l.Binary = path
			return nil
		}},
		{Name: StepArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			tsc := vmm.HostTSCKHz
			if b.TSCKHz != nil {
				tsc = b.TSCKHz
			}
			l.Args = Args(l.Config, tsc())
			return nil
		}},
		vmm.StepStartProcess,
	}
}

// Start implements vmm.Backend.
func (b *Backend) Start(ctx context.Context, cfg *vmm.Config) (vmm.Machine, error) {
	steps := b.Steps
	if steps == nil {
		steps = b.DefaultSteps()
	}
	c := cfg.WithDefaults()
	return steps.Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
}

// Find returns the path of the QEMU executable binary ("" for
// DefaultBinary), with an error saying how to install it.
func Find(binary string) (string, error) {
	return vmm.FindBinary(binary, DefaultBinary, "install it: "+InstallHint)
}

// Version returns QEMU's version ("7.2.22"), running binary --version.
func Version(ctx context.Context, binary string) (string, error) {
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", binary, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	if _, v, ok := strings.Cut(first, "version "); ok {
		v, _, _ = strings.Cut(v, " ")
		return v, nil
	}
	return strings.TrimSpace(first), nil
}

// Cmdline returns the kernel command line QEMU gets for cfg: cfg.Cmdline
// with the serial console, reboot by triple fault (which -no-reboot turns
// into QEMU exiting) and, under TCG, the host's TSC frequency (see
// vmm.HostTSCKHz) added unless cfg.Cmdline sets them.
//
// Under TCG the guest's TSC is the host's, so it is the guest's best clock;
// but timer interrupts arrive late on a loaded host, so the kernel's
// watchdog, which checks the TSC against jiffies, would call the TSC
// unstable and fall back to jiffies, which then lose time (and a program's
// time limit would stretch). tsc=reliable keeps the TSC.
func Cmdline(cfg *vmm.Config, tscKHz int64) string {
	var extra []string
	has := func(key string) bool {
		for _, f := range strings.Fields(cfg.Cmdline) {
			if strings.HasPrefix(f, key) {
				return true
			}
		}
		return false
	}
	if !has("console=") {
		extra = append(extra, "console=ttyS0")
	}
	if !has("reboot=") {
		extra = append(extra, "reboot=t")
	}
	if cfg.Accel != vmm.AccelKVM && tscKHz > 0 && !has("tsc_early_khz=") {
		extra = append(extra, "tsc_early_khz="+strconv.FormatInt(tscKHz, 10))
		if !has("tsc=") {
			extra = append(extra, "tsc=reliable")
		}
	}
	return strings.TrimSpace(strings.Join(extra, " ") + " " + cfg.Cmdline)
}

// Args returns QEMU's arguments for cfg (defaults applied), without
// argv[0]: the microvm machine without option ROMs, with the ISA serial
// port and the RTC (the guest's wall clock), KVM with the host CPU or TCG
// with every emulated feature, no default devices, no network, the kernel
// booted directly, the console on standard output, and each disk as a
// virtio-blk-device. Read-write disks use cache=unsafe: the guest's flushes
// are skipped, since the file is only read once QEMU has exited.
func Args(cfg *vmm.Config, tscKHz int64) []string {
	accel, cpu := "tcg", "max"
	if cfg.Accel == vmm.AccelKVM {
		accel, cpu = "kvm", "host"
	}
	args := []string{
		"-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", strconv.Itoa(cfg.MemoryMiB) + "M",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", cfg.Kernel,
	}
	if cfg.Initramfs != "" {
		args = append(args, "-initrd", cfg.Initramfs)
	}
	args = append(args,
		"-append", Cmdline(cfg, tscKHz),
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
	)
	for i, d := range cfg.Disks {
		id := "disk" + strconv.Itoa(i)
		drive := "id=" + id + ",file=" + escape(d.Path) + ",format=raw,if=none"
		if d.ReadOnly {
			drive += ",readonly=on"
		} else {
			drive += ",cache=unsafe"
		}
		args = append(args, "-drive", drive, "-device", "virtio-blk-device,drive="+id)
	}
	return args
}

// escape doubles commas, QEMU's option separator, in a value.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

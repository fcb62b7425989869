// Package qemu is pe's QEMU backend: micro-VMs on QEMU's microvm machine
// (virtio-mmio devices, no PCI, no firmware menus, no network), with KVM
// or with TCG, QEMU's CPU emulator, where KVM does not work.
//
// The guest console is the machine's 8250 serial port (ttyS0), wired to
// QEMU's standard output, which the machine keeps. QEMU exits when the
// guest powers off or reboots (-no-reboot), so no QMP monitor is needed
// (snapshots use one, on an inherited socket).
//
// QEMU runs confined unless PE_QEMU_CONFINE=0 (see Confinement and
// docs/security.md): its seccomp sandbox always; when pe is root, or can
// make a user namespace, also the vmm/jail trampoline (own namespaces, a
// private root, another user or no capabilities), with every file of the
// machine passed as an inherited descriptor.
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
	// NoConfine runs QEMU as pe's user, in pe's namespaces, without its
	// seccomp sandbox: a debugging aid (see Confinement).
	NoConfine bool
}

// New returns a QEMU backend using binary ("" for DefaultBinary from
// PATH), confined unless the environment variable ConfineEnv says 0.
func New(binary string) *Backend { return &Backend{Binary: binary, NoConfine: confineOff()} }

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// DefaultSteps is the start-up chain: check the config, find QEMU, make
// the work directory, build its arguments (and its confinement), start it.
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
		vmm.StepWorkDir,
		{Name: StepArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			a, err := b.confine(l)
			if err != nil {
				return err
			}
			l.Args = append(b.prefix(), argsWith(l.Config, b.tsc(), a)...)
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

// confine prepares the confinement of l's QEMU (b.Confinement): with the
// jail, the files go as descriptors and l.Jail is set; otherwise QEMU gets
// host paths.
func (b *Backend) confine(l *vmm.Launch) (access, error) {
	c := b.Confinement()
	l.Log.Debug("qemu confinement", "confinement", c.String())
	if !c.Jail {
		return pathAccess(l.Config, fdTable{l})
	}
	spec, err := jailSpec(l, c.UserNS)
	if err != nil {
		return access{}, err
	}
	l.Jail = spec
	return fdAccess(l.Config, fdTable{l})
}

// prefix returns the arguments that come before the machine's: the
// sandbox, when on.
func (b *Backend) prefix() []string {
	if b.Confinement().Sandbox {
		return []string{"-sandbox", SandboxOptions}
	}
	return nil
}

// argsWith returns QEMU's arguments for cfg (defaults applied), reaching
// its files as a says, without argv[0]: the microvm machine without option
// ROMs, with the ISA serial port and the RTC (the guest's wall clock), KVM
// with the host CPU or TCG with every emulated feature, no default
// devices, no network, the kernel booted directly, the console on standard
// output, and each disk as a virtio-blk-device (an NBD disk through
// QEMU's NBD client on its inherited socket). Read-write disks use
// cache=unsafe: the guest's flushes are skipped, since the file is only
// read once QEMU has exited. File disks keep their host page cache across
// a restore (drop-cache=off).
func argsWith(cfg *vmm.Config, tscKHz int64, a access) []string {
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
	}
	args = append(args, a.addFD...)
	args = append(args, "-kernel", a.kernel)
	if a.initramfs != "" {
		args = append(args, "-initrd", a.initramfs)
	}
	args = append(args,
		"-append", Cmdline(cfg, tscKHz),
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
	)
	for i, d := range cfg.Disks {
		id := "disk" + strconv.Itoa(i)
		// drop-cache=off: a restore (an incoming migration) would
		// otherwise drop the host's page cache of the file
		// (POSIX_FADV_DONTNEED, for storage shared between hosts), and
		// every run restored from a snapshot would read its image from
		// disk again.
		drive := "id=" + id + ",file=" + escape(a.disks[i]) + ",file.drop-cache=off,format=raw,if=none"
		if d.NBD != nil {
			// QEMU's NBD client on the inherited, connected socket. It
			// cannot reconnect: the descriptor is gone once closed.
			drive = "id=" + id + ",format=raw,if=none,file.driver=nbd,file.server.type=fd,file.server.str=" + a.disks[i]
			if d.Export != "" {
				drive += ",file.export=" + escape(d.Export)
			}
		}
		if d.ReadOnly {
			drive += ",readonly=on"
		} else {
			drive += ",cache=unsafe"
		}
		// A geometry of its own: else QEMU guesses one from the disk's
		// first sector as it starts, a read an NBD disk may only answer
		// once its VM is to run (engine: an image resolved while its VM
		// starts). The guest does not use it.
		args = append(args, "-drive", drive, "-device", "virtio-blk-device,drive="+id+",cyls=16383,heads=16,secs=63")
	}
	// The data channel: a virtio-serial port the guest finds by its
	// name, after the disks so that they keep their names. It is there
	// without a stream too, so that every machine has the same devices
	// (a snapshot's and the VMs restored from it must).
	chardev := "null,id=" + streamChardev
	if a.stream != "" {
		// A connected socket QEMU inherits, as the QMP monitor's.
		chardev = "socket,id=" + streamChardev + ",fd=" + a.stream + ",server=off"
	}
	args = append(args,
		"-device", "virtio-serial-device",
		"-chardev", chardev,
		"-device", "virtserialport,chardev="+streamChardev+",name="+vmm.StreamPortName,
	)
	return args
}

// streamChardev is the id of the data channel's chardev.
const streamChardev = "pe-stream"

// escape doubles commas, QEMU's option separator, in a value.
func escape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Info describes the QEMU backend to the code that chooses and reports
// VMMs (see vmm.BackendInfo). pe run needs QEMU: it is the VMM that works
// on every host, with TCG where KVM does not.
func Info() vmm.BackendInfo {
	return vmm.BackendInfo{
		Name:    Name,
		Binary:  DefaultBinary,
		Find:    Find,
		Version: Version,
		New:     func(path string) vmm.Backend { return New(path) },
		Install: InstallHint,
		// The microvm machine's devices are all virtio-mmio: the guest
		// loads no PCI transport (each module costs boot time).
		GuestModules: []string{"virtio_mmio", "virtio_blk", "virtio_console"},
		Facts: func(path string) []vmm.Fact {
			return []vmm.Fact{New(path).Confinement().Fact()}
		},
	}
}

// Fact is c as pe doctor shows it: OK with the full confinement, else
// with the step that gets it.
func (c Confinement) Fact() vmm.Fact {
	fix := ""
	switch {
	case !c.Sandbox:
		fix = "unset " + ConfineEnv
	case !c.Jail:
		fix = "run pe as root for the full confinement (docs/security.md)"
	}
	return vmm.Fact{Name: "qemu confinement", OK: c.Jail, Detail: c.String(), Fix: fix}
}

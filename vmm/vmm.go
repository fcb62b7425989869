package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// Accelerations a [Config] may ask for.
const (
	// AccelKVM runs the guest with hardware virtualisation (/dev/kvm).
	AccelKVM = "kvm"
	// AccelTCG emulates the CPU in software: slower (a boot takes seconds),
	// but it works everywhere.
	AccelTCG = "tcg"
	// AccelAuto lets pe choose: KVM when a probe boot shows it works, else
	// TCG (see [Prober]). Backends never see it.
	AccelAuto = "auto"
)

// Disk is a raw disk image attached to the guest as a virtio block device:
// a file, or an NBD export. The guest sees them in order: /dev/vda,
// /dev/vdb, ...
type Disk struct {
	// Path is the image file on the host; "" for an NBD disk.
	Path string
	// NBD, when set, is a connected stream socket (one end of a socket
	// pair, say) on whose other end an NBD server serves the disk as
	// Export: the VMM inherits a copy of it, so that a confined VMM, which
	// can reach no socket file, reads the disk all the same. The caller
	// keeps NBD; it should close it once Start (or RestoreSnapshot) has
	// returned, so that the server sees the connection end when the VMM
	// does (and the server's own end must be held by nothing but the
	// server, so that the VMM sees it end). Only read-only disks may be
	// NBD disks, and only the QEMU backend reads them.
	NBD *os.File
	// Export is the name of the NBD export ("" is the default export).
	Export string
	// ReadOnly attaches it read-only: the guest cannot write it.
	ReadOnly bool
}

// Config describes one micro-VM.
type Config struct {
	// Kernel is the guest kernel (a bzImage).
	Kernel string
	// Initramfs is the initial RAM file system (a newc cpio), "" for none.
	Initramfs string
	// Cmdline is the kernel command line. Backends add what their machine
	// needs (the console device, timer hints) to it.
	Cmdline string
	// Disks are attached in order.
	Disks []Disk
	// CPUs is the number of vCPUs (0 means 1).
	CPUs int
	// MemoryMiB is the guest's RAM in MiB (0 means 512).
	MemoryMiB int
	// Accel is AccelKVM or AccelTCG ("" means AccelTCG).
	Accel string
	// WorkDir is a directory the backend may create files in (console log,
	// API socket). It must exist; "" makes the backend create a temporary
	// directory of its own, removed when the machine is gone.
	WorkDir string
	// Console, when set, receives the guest console as it is written, on
	// top of the copy the machine keeps (pe run --debug).
	Console io.Writer
	// Stream, when set, is pe's way to the guest's data channel (see
	// guest/stream.go): a connected stream socket (one end of a socket
	// pair) whose other end pe reads and writes. The VMM inherits a copy
	// of it as the backend of the channel's device (QEMU: the
	// virtio-serial port guest.StreamPortName; cloud-hypervisor: its
	// virtio-console), so a confined VMM needs no socket file. The caller
	// keeps Stream and closes it once Start (or RestoreSnapshot) has
	// returned, so that its own end reads EOF when the VMM is gone. The
	// device is there with or without Stream (a snapshot's machine and a
	// restored one must have the same devices); without, nothing is
	// behind it.
	Stream *os.File
	// Log receives the backend's debug messages; nil discards them.
	Log *slog.Logger
	// OnStep, when set, is told how long each start-up step took (see
	// Steps.Run): the break-down of a boot or a restore.
	OnStep func(step string, took time.Duration)
	// BeforeResume, when set, is called by RestoreSnapshot once the VMM
	// runs with the snapshot's state loaded, before the guest resumes (a
	// boot does not call it). Until it returns, the guest reads nothing:
	// the caller may still serve its NBD disks' reads late and, with
	// QEMU, which takes each writable disk's size anew after it, write
	// its writable disks' files, which the VMM holds open
	// (cloud-hypervisor keeps the sizes it opened them with). Its error
	// ends the restore with that error, unwrapped.
	BeforeResume func(ctx context.Context) error
}

// StreamPortName is the name of the data channel's virtio-serial port,
// as the guest looks for it: guest.StreamPortName (package vmm does not
// import package guest; engine's tests check they agree).
const StreamPortName = "pe.stream"

// CmdlineStream is the kernel command line parameter that names the data
// channel's device where it is no named virtio-serial port (the guest's
// guest.CmdlineStream).
const CmdlineStream = "pe.stream"

// Defaults applied to a [Config]'s zero fields.
const (
	DefaultCPUs      = 1
	DefaultMemoryMiB = 512
)

// WithDefaults returns a copy of c with zero fields set to their defaults.
func (c *Config) WithDefaults() *Config {
	d := *c
	if d.CPUs <= 0 {
		d.CPUs = DefaultCPUs
	}
	if d.MemoryMiB <= 0 {
		d.MemoryMiB = DefaultMemoryMiB
	}
	if d.Accel == "" {
		d.Accel = AccelTCG
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	d.Disks = append([]Disk(nil), c.Disks...)
	return &d
}

// Validate checks the fields every backend needs.
func (c *Config) Validate() error {
	switch {
	case c.Kernel == "":
		return errors.New("no kernel given")
	case c.CPUs < 0 || c.CPUs > 255:
		return fmt.Errorf("%d vCPUs: want 1 to 255", c.CPUs)
	case c.MemoryMiB < 0 || (c.MemoryMiB > 0 && c.MemoryMiB < 64):
		return fmt.Errorf("%d MiB of memory: want at least 64 MiB", c.MemoryMiB)
	case c.Accel != "" && c.Accel != AccelKVM && c.Accel != AccelTCG:
		return fmt.Errorf("acceleration %q: want %s or %s", c.Accel, AccelKVM, AccelTCG)
	case strings.ContainsAny(c.Cmdline, "\n\x00"):
		return errors.New("kernel command line holds a newline or NUL")
	}
	for i, d := range c.Disks {
		switch {
		case d.NBD != nil && d.Path != "":
			return fmt.Errorf("disk %d has both a path and an NBD socket", i)
		case d.NBD != nil && !d.ReadOnly:
			return fmt.Errorf("disk %d: an NBD disk must be read-only", i)
		case d.NBD == nil && d.Path == "":
			return fmt.Errorf("disk %d has no path", i)
		}
	}
	return nil
}

// Backend starts micro-VMs with one VMM.
type Backend interface {
	// Name is the VMM's name as the --vmm flag spells it: "qemu",
	// "cloud-hypervisor".
	Name() string
	// Start boots a VM. ctx bounds the start-up only: once Start has
	// returned, the machine runs until it stops by itself or is killed.
	// On error nothing Start made is left behind.
	Start(ctx context.Context, cfg *Config) (Machine, error)
}

// Machine is a running micro-VM: a VMM process.
type Machine interface {
	// Wait waits until the VMM process has exited, or ctx is done (the
	// machine keeps running then: call Kill). It returns nil when the VMM
	// exited normally (the guest powered off or rebooted) and an *ExitError
	// otherwise. Once the process has exited, every file the backend made
	// is gone.
	Wait(ctx context.Context) error
	// Kill stops the VM at once (SIGKILL to the VMM's process group) and
	// waits for the process to be gone. It may be called any number of
	// times, before or after the machine has stopped.
	Kill() error
	// ConsoleLog returns the end of the guest's console output, at most
	// ConsoleLogSize bytes.
	ConsoleLog() []byte
	// PID is the VMM process's ID.
	PID() int
}

// ExitError reports a VMM process that did not exit normally.
type ExitError struct {
	// VMM is the backend's name.
	VMM string
	// Err is the process's exit error (*exec.ExitError, usually).
	Err error
	// Killed says pe killed it (Kill was called).
	Killed bool
	// Stderr is the end of what the VMM printed on standard error.
	Stderr string
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("%s exited: %v", e.VMM, e.Err)
	if e.Killed {
		msg = fmt.Sprintf("%s was killed", e.VMM)
	}
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + lastLines(s, 3)
	}
	return msg
}

func (e *ExitError) Unwrap() error { return e.Err }

// lastLines returns the last n lines of s, joined with "; ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, "; ")
}

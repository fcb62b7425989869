// Package cloudhypervisor is pe's cloud-hypervisor backend. cloud-hypervisor
// needs working KVM; pe picks it with --vmm auto only when its binary is
// installed and a KVM probe boot succeeded.
//
// A VM is started from the command line (the flags of cloud-hypervisor's
// documented CLI: --kernel, --initramfs, --cmdline, --cpus, --memory,
// --disk, --console, --serial, --api-socket); the REST API on the
// --api-socket (Client) tells when the VMM is up and can stop the VM. The
// guest console is the 8250 serial port written to a file in the work
// directory.
//
// cloud-hypervisor reboots a guest that reboots (there is no -no-reboot),
// so a guest kernel that panics with panic=-1 boots again until pe's
// deadline kills the VM; pe's guest powers off, which ends the VMM.
package cloudhypervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/vmm"
)

// Name is the backend's name.
const Name = "cloud-hypervisor"

// DefaultBinary is the cloud-hypervisor executable looked up in PATH.
const DefaultBinary = "cloud-hypervisor"

// InstallHint says how to install cloud-hypervisor (Debian 12 does not
// package it).
const InstallHint = "download the static binary from https://github.com/cloud-hypervisor/cloud-hypervisor/releases into PATH as cloud-hypervisor (it needs working KVM)"

// Names of the steps of DefaultSteps.
const (
	StepRequireKVMName = "cloudhypervisor.RequireKVM"
	StepBinaryName     = "cloudhypervisor.Binary"
	StepArgsName       = "cloudhypervisor.Args"
	StepWaitAPIName    = "cloudhypervisor.WaitAPI"
	StepStreamName     = "cloudhypervisor.Stream"
)

// Files the backend makes in the work directory.
const (
	ConsoleFileName = "console.log"
	APISocketName   = "api.sock"
	// StreamSocketName is the socket of the virtio-console, the data
	// channel (see vmm.Config.Stream), which cloud-hypervisor listens on.
	StreamSocketName = "stream.sock"
)

// StreamDevice is the guest's device of the data channel: the
// virtio-console, the first hvc terminal. The command line names it
// (vmm.CmdlineStream), since it is no named virtio-serial port.
const StreamDevice = "/dev/hvc0"

// ErrNeedsKVM is returned when a config asks cloud-hypervisor for TCG.
var ErrNeedsKVM = errors.New("cloud-hypervisor runs guests with KVM only; use --vmm qemu for TCG")

// apiWait bounds how long the start-up waits for the API socket.
const apiWait = 5 * time.Second

// Backend starts VMs with cloud-hypervisor. The zero value is ready to use.
type Backend struct {
	// Binary is the executable; "" looks DefaultBinary up in PATH.
	Binary string
	// Steps is the start-up chain; nil means DefaultSteps.
	Steps vmm.Steps
}

// New returns a cloud-hypervisor backend using binary ("" for
// DefaultBinary from PATH).
func New(binary string) *Backend { return &Backend{Binary: binary} }

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// Start implements vmm.Backend.
func (b *Backend) Start(ctx context.Context, cfg *vmm.Config) (vmm.Machine, error) {
	steps := b.Steps
	if steps == nil {
		steps = b.DefaultSteps()
	}
	c := cfg.WithDefaults()
	return steps.Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
}

// DefaultSteps is the start-up chain: check the config (KVM only), find
// the binary, make the work directory, build the flags, start the VMM,
// wait for its API socket to answer.
func (b *Backend) DefaultSteps() vmm.Steps {
	return vmm.Steps{
		vmm.StepValidate,
		stepRequireKVM,
		b.stepBinary(),
		vmm.StepWorkDir,
		{Name: StepArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			for i, d := range l.Config.Disks {
				if d.NBD != nil {
					return fmt.Errorf("disk %d is an NBD export, which cloud-hypervisor cannot read", i)
				}
			}
			l.ConsoleFile = filepath.Join(l.WorkDir, ConsoleFileName)
			l.Args = Args(l.Config, l.ConsoleFile, filepath.Join(l.WorkDir, APISocketName), filepath.Join(l.WorkDir, StreamSocketName))
			return nil
		}},
		vmm.StepStartProcess,
		stepWaitAPI,
		stepStream,
	}
}

// stepStream connects the data channel: cloud-hypervisor listens on the
// console's socket, and pe copies between it and the config's Stream
// (a copy of it, kept until the machine is gone) both ways.
var stepStream = vmm.Step{Name: StepStreamName, Fn: func(ctx context.Context, l *vmm.Launch) error {
	if l.Config.Stream == nil {
		return nil
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", filepath.Join(l.WorkDir, StreamSocketName))
	if err != nil {
		return fmt.Errorf("data channel: %w", err)
	}
	fd, err := unix.FcntlInt(l.Config.Stream.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		conn.Close()
		return fmt.Errorf("data channel: %w", err)
	}
	// Non-blocking, so that the runtime's poller has it and a Close ends
	// the Read in progress of the other copy.
	unix.SetNonblock(fd, true)
	stream := os.NewFile(uintptr(fd), "stream")
	l.OnCleanup(func() {
		conn.Close()
		stream.Close()
	})
	go func() {
		io.Copy(conn, stream)
		conn.(*net.UnixConn).CloseWrite()
	}()
	go func() {
		io.Copy(stream, conn)
		// The guest's side is gone: pe's end reads EOF.
		stream.Close()
	}()
	return nil
}}

var stepRequireKVM = vmm.Step{Name: StepRequireKVMName, Fn: func(ctx context.Context, l *vmm.Launch) error {
	if l.Config.Accel != vmm.AccelKVM {
		return ErrNeedsKVM
	}
	return nil
}}

func (b *Backend) stepBinary() vmm.Step {
	return vmm.Step{Name: StepBinaryName, Fn: func(ctx context.Context, l *vmm.Launch) error {
		path, err := Find(b.Binary)
		if err != nil {
			return err
		}
		l.Binary = path
		return nil
	}}
}

// stepWaitAPI waits until the API socket answers vmm.ping, or the VMM
// exits (its error then says why).
var stepWaitAPI = vmm.Step{Name: StepWaitAPIName, Fn: func(ctx context.Context, l *vmm.Launch) error {
	c := NewClient(filepath.Join(l.WorkDir, APISocketName))
	ctx, cancel := context.WithTimeout(ctx, apiWait)
	defer cancel()
	for {
		pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := c.Ping(pctx)
		pcancel()
		if err == nil {
			return nil
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Millisecond)
		werr := l.Machine.Wait(wctx)
		wcancel()
		if ctx.Err() != nil {
			return fmt.Errorf("API socket not answering after %v: %w", apiWait, err)
		}
		if !errors.Is(werr, context.DeadlineExceeded) {
			if werr == nil {
				werr = errors.New("exited")
			}
			return fmt.Errorf("VMM stopped before its API answered: %w", werr)
		}
	}
}}

// Find returns the path of the cloud-hypervisor executable binary (""
// for DefaultBinary), with an error saying how to install it.
func Find(binary string) (string, error) {
	return vmm.FindBinary(binary, DefaultBinary, InstallHint)
}

// Version returns cloud-hypervisor's version ("v43.0"), running binary
// --version.
func Version(ctx context.Context, binary string) (string, error) {
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", binary, err)
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return "", fmt.Errorf("%s --version printed nothing", binary)
	}
	return f[len(f)-1], nil
}

// Cmdline returns the kernel command line for cfg: cfg.Cmdline with the
// serial console and the data channel's device (StreamDevice) added
// unless it names them.
func Cmdline(cfg *vmm.Config) string {
	var extra []string
	for _, p := range []struct{ key, value string }{{"console=", "ttyS0"}, {vmm.CmdlineStream + "=", StreamDevice}} {
		found := false
		for _, f := range strings.Fields(cfg.Cmdline) {
			found = found || strings.HasPrefix(f, p.key)
		}
		if !found {
			extra = append(extra, p.key+p.value)
		}
	}
	return strings.TrimSpace(strings.Join(extra, " ") + " " + cfg.Cmdline)
}

// Args returns cloud-hypervisor's arguments for cfg (defaults applied),
// without argv[0]: the kernel, initramfs and command line, vCPUs, memory,
// the disks after one --disk flag, the virtio console (the data channel)
// on streamSocket, the serial console into consoleFile, and the API on
// apiSocket. The virtio console is there with or without a stream, so
// that every machine has the same devices.
func Args(cfg *vmm.Config, consoleFile, apiSocket, streamSocket string) []string {
	args := []string{"--kernel", cfg.Kernel}
	if cfg.Initramfs != "" {
		args = append(args, "--initramfs", cfg.Initramfs)
	}
	args = append(args,
		"--cmdline", Cmdline(cfg),
		"--cpus", "boot="+strconv.Itoa(cfg.CPUs),
		"--memory", "size="+strconv.Itoa(cfg.MemoryMiB)+"M",
	)
	if len(cfg.Disks) > 0 {
		args = append(args, "--disk")
		for _, d := range cfg.Disks {
			v := "path=" + value(d.Path)
			if d.ReadOnly {
				v += ",readonly=on"
			}
			args = append(args, v)
		}
	}
	args = append(args,
		"--console", "socket="+value(streamSocket),
		"--serial", "file="+value(consoleFile),
		"--api-socket", "path="+value(apiSocket),
	)
	return args
}

// value quotes an option value holding cloud-hypervisor's separators
// (',' and '=') or quotes, the way its option parser reads quoted values.
func value(s string) string {
	if !strings.ContainsAny(s, `,="`) {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

// Info describes the cloud-hypervisor backend to the code that chooses and
// reports VMMs (see vmm.BackendInfo): optional, KVM only.
func Info() vmm.BackendInfo {
	return vmm.BackendInfo{
		Name:     Name,
		Binary:   DefaultBinary,
		Find:     Find,
		Version:  Version,
		New:      func(path string) vmm.Backend { return New(path) },
		Install:  InstallHint,
		Optional: "faster VMs where KVM works",
		NeedsKVM: ErrNeedsKVM,
		// Its devices are virtio-pci. The guest loads virtio_mmio as well,
		// as it always has for cloud-hypervisor (the initramfs it boots
		// is the one with both transports).
		GuestModules: []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_console"},
	}
}

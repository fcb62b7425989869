package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/pe-project/pe/guest/initramfs"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/backends"
)

// VMMAuto is the --vmm value that lets pe choose the VMM.
const VMMAuto = "auto"

// ErrNoVMM means no usable VMM is installed.
var ErrNoVMM = errors.New("no VMM available")

// ChooseOptions says what to choose between.
type ChooseOptions struct {
	// VMM is auto or a backend's name ("" means auto).
	VMM string
	// Accel is auto, kvm or tcg ("" means auto).
	Accel string
	// Kernel is the guest kernel, booted by the KVM probe.
	Kernel *vmm.Kernel
	// Backends are the VMMs to choose from (nil: backends.All()).
	Backends []vmm.BackendInfo
	// CacheDir keeps the KVM probe's verdict; "" means vmm.CacheDir().
	CacheDir string
	// ProbeTimeout bounds the KVM probe boot (0: vmm.DefaultProbeTimeout).
	ProbeTimeout time.Duration
	// KVMDevice is the KVM device ("" means /dev/kvm).
	KVMDevice string
	// Log receives debug messages.
	Log *slog.Logger
}

// Choice is the VMM and acceleration a run uses, and why.
type Choice struct {
	Backend vmm.Backend
	// VMM is the backend's name, Binary its executable.
	VMM, Binary string
	// Accel is vmm.AccelKVM or vmm.AccelTCG.
	Accel string
	// Reason explains the choice in a sentence.
	Reason string
	// Verdict is the KVM probe's, when one was needed.
	Verdict *vmm.Verdict
}

// foundVMM is a backend and where its executable is (or why it is not).
type foundVMM struct {
	vmm.BackendInfo
	Path string
	Err  error
}

// findVMMs looks for each backend's executable in PATH.
func findVMMs(list []vmm.BackendInfo) []foundVMM {
	found := make([]foundVMM, len(list))
	for i, b := range list {
		found[i].BackendInfo = b
		found[i].Path, found[i].Err = b.Find("")
	}
	return found
}

// backendList returns list, or pe's backends when it is nil.
func backendList(list []vmm.BackendInfo) []vmm.BackendInfo {
	if list == nil {
		return backends.All()
	}
	return list
}

// guestModules returns the kernel modules the guest of the backend named
// name loads: those of its machine's devices, then the container root's;
// nil (initramfs.DefaultModules) for a backend not in list.
func guestModules(list []vmm.BackendInfo, name string) []string {
	for _, b := range backendList(list) {
		if b.Name == name && b.GuestModules != nil {
			return append(slices.Clip(b.GuestModules), initramfs.RootModules...)
		}
	}
	return nil
}

// Choose picks the backend and acceleration: with --vmm auto, a VMM that
// needs KVM (cloud-hypervisor) when it is installed and KVM works, else
// one that can emulate the CPU (QEMU); with --accel auto, KVM when a probe
// boot shows it works (see vmm.Prober), else TCG. It probes only when the
// answer depends on it.
func Choose(ctx context.Context, o ChooseOptions) (*Choice, error) {
	return choose(ctx, o, findVMMs(backendList(o.Backends)))
}

// choose is Choose among the backends found.
func choose(ctx context.Context, o ChooseOptions, found []foundVMM) (*Choice, error) {
	if o.VMM == "" {
		o.VMM = VMMAuto
	}
	if o.Accel == "" {
		o.Accel = vmm.AccelAuto
	}
	names := []string{VMMAuto}
	for _, b := range found {
		names = append(names, b.Name)
	}
	if !slices.Contains(names, o.VMM) {
		return nil, fmt.Errorf("VMM %q: want %s or %s", o.VMM, strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
	}
	switch o.Accel {
	case vmm.AccelAuto, vmm.AccelKVM, vmm.AccelTCG:
	default:
		return nil, fmt.Errorf("acceleration %q: want auto, kvm or tcg", o.Accel)
	}
	c := &chooser{ctx: ctx, o: o, found: found}
	if o.VMM == VMMAuto {
		return c.auto()
	}
	return c.named(o.VMM)
}

// chooser holds what choosing has learnt: the KVM probe's verdict, once
// it was needed.
type chooser struct {
	ctx     context.Context
	o       ChooseOptions
	found   []foundVMM
	verdict *vmm.Verdict
}

// kvmWorks says whether runs get KVM, and why: as --accel says, else as
// the KVM probe (run the first time it is asked) found.
func (c *chooser) kvmWorks() (bool, string) {
	switch c.o.Accel {
	case vmm.AccelKVM:
		return true, "--accel kvm"
	case vmm.AccelTCG:
		return false, "--accel tcg"
	}
	if c.verdict == nil {
		v := probeKVM(c.ctx, c.o, c.found)
		c.verdict = &v
	}
	return c.verdict.KVM, c.verdict.Reason
}

// use chooses b, for the reason why.
func (c *chooser) use(b foundVMM, why string) (*Choice, error) {
	if b.Err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoVMM, b.Err)
	}
	ch := &Choice{Backend: b.New(b.Path), VMM: b.Name, Binary: b.Path, Accel: vmm.AccelKVM, Reason: why}
	if b.NeedsKVM == nil {
		kvm, reason := c.kvmWorks()
		if !kvm {
			ch.Accel = vmm.AccelTCG
		}
		ch.Reason = fmt.Sprintf("%s; %s because %s", why, strings.ToUpper(ch.Accel), reason)
	}
	ch.Verdict = c.verdict
	return ch, nil
}

// named chooses the backend --vmm names.
func (c *chooser) named(name string) (*Choice, error) {
	i := slices.IndexFunc(c.found, func(b foundVMM) bool { return b.Name == name })
	b := c.found[i]
	if b.NeedsKVM != nil {
		if b.Err != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoVMM, b.Err)
		}
		if c.o.Accel == vmm.AccelTCG {
			return nil, b.NeedsKVM
		}
		if kvm, reason := c.kvmWorks(); !kvm {
			msg := fmt.Sprintf("%s needs KVM, which does not work here: %s", name, reason)
			if e := c.emulator(); e != nil {
				msg += fmt.Sprintf(" (use --vmm %s)", e.Name)
			}
			return nil, errors.New(msg)
		}
	}
	return c.use(b, "--vmm "+name)
}

// emulator returns the first backend that can run guests without KVM,
// installed or not; nil when there is none.
func (c *chooser) emulator() *foundVMM {
	for i := range c.found {
		if c.found[i].NeedsKVM == nil {
			return &c.found[i]
		}
	}
	return nil
}

// auto chooses for --vmm auto: the first installed VMM that needs KVM,
// where KVM works; else the first installed one that can emulate.
func (c *chooser) auto() (*Choice, error) {
	var skipped []string
	for _, b := range c.found {
		if b.NeedsKVM == nil {
			continue
		}
		switch {
		case b.Err != nil:
			skipped = append(skipped, b.Name+" is not installed")
		case c.o.Accel == vmm.AccelTCG:
			skipped = append(skipped, "--accel tcg, which "+b.Name+" cannot do")
		default:
			if kvm, reason := c.kvmWorks(); kvm {
				return c.use(b, "installed, and KVM works: "+reason)
			}
			skipped = append(skipped, b.Name+" is installed but KVM does not work")
		}
	}
	why := strings.Join(skipped, "; ")
	if why == "" {
		why = "--vmm auto"
	}
	for _, b := range c.found {
		if b.NeedsKVM == nil && b.Err == nil {
			return c.use(b, why)
		}
	}
	if e := c.emulator(); e != nil {
		return c.use(*e, why) // not installed: the error says how to install it
	}
	return nil, fmt.Errorf("%w: %s", ErrNoVMM, why)
}

// probeKVM runs (or reads from the cache) the KVM probe for o's kernel,
// booting it with the first installed VMM that can also run guests without
// KVM (QEMU, whose boots fail for KVM's reasons only), else with the
// first installed one.
func probeKVM(ctx context.Context, o ChooseOptions, found []foundVMM) vmm.Verdict {
	cacheDir := o.CacheDir
	if cacheDir == "" {
		cacheDir = vmm.CacheDir()
	}
	p := &vmm.Prober{Device: o.KVMDevice, Timeout: o.ProbeTimeout, CacheDir: cacheDir, Log: o.Log}
	if err := vmm.CheckKVMDevice(o.KVMDevice); err != nil {
		return vmm.Verdict{Reason: err.Error(), CheckedAt: time.Now()}
	}
	if o.Kernel == nil {
		return vmm.Verdict{Reason: "no guest kernel to probe KVM with", CheckedAt: time.Now()}
	}
	var installed []foundVMM
	for _, b := range found {
		if b.Err == nil {
			installed = append(installed, b)
		}
	}
	// A stable sort keeps the list's order within each kind.
	slices.SortStableFunc(installed, func(a, b foundVMM) int {
		return boolRank(a.NeedsKVM != nil) - boolRank(b.NeedsKVM != nil)
	})
	if len(installed) == 0 {
		return vmm.Verdict{Reason: "no VMM to probe KVM with", CheckedAt: time.Now()}
	}
	b := installed[0]
	backend := b.New(b.Path)
	p.Key = b.Name + " " + vmm.ProbeKey(o.Kernel.Vmlinuz, b.Path)
	p.Boot = func(ctx context.Context) error { return vmm.ProbeBoot(ctx, backend, o.Kernel.Vmlinuz) }
	return p.Probe(ctx)
}

// boolRank orders false before true.
func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

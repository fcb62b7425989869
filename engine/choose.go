package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/cloudhypervisor"
	"github.com/pe-project/pe/vmm/qemu"
)

// VMM names the --vmm flag accepts.
const (
	VMMAuto            = "auto"
	VMMQEMU            = qemu.Name
	VMMCloudHypervisor = cloudhypervisor.Name
)

// ErrNoVMM means no usable VMM is installed.
var ErrNoVMM = errors.New("no VMM available")

// ChooseOptions says what to choose between.
type ChooseOptions struct {
	// VMM is auto, qemu or cloud-hypervisor ("" means auto).
	VMM string
	// Accel is auto, kvm or tcg ("" means auto).
	Accel string
	// Kernel is the guest kernel, booted by the KVM probe.
	Kernel *vmm.Kernel
	// QEMUBinary and CloudHypervisorBinary override the executables
	// looked up in PATH.
	QEMUBinary, CloudHypervisorBinary string
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

// Choose picks the backend and acceleration: with --vmm auto,
// cloud-hypervisor when it is installed and KVM works, else QEMU; with
// --accel auto, KVM when a probe boot shows it works (see vmm.Prober),
// else TCG. It probes only when the answer depends on it.
func Choose(ctx context.Context, o ChooseOptions) (*Choice, error) {
	if o.VMM == "" {
		o.VMM = VMMAuto
	}
	if o.Accel == "" {
		o.Accel = vmm.AccelAuto
	}
	switch o.VMM {
	case VMMAuto, VMMQEMU, VMMCloudHypervisor:
	default:
		return nil, fmt.Errorf("VMM %q: want auto, qemu or cloud-hypervisor", o.VMM)
	}
	switch o.Accel {
	case vmm.AccelAuto, vmm.AccelKVM, vmm.AccelTCG:
	default:
		return nil, fmt.Errorf("acceleration %q: want auto, kvm or tcg", o.Accel)
	}
	qemuPath, qemuErr := qemu.Find(o.QEMUBinary)
	chPath, chErr := cloudhypervisor.Find(o.CloudHypervisorBinary)

	var verdict *vmm.Verdict
	probe := func() *vmm.Verdict {
		if verdict == nil {
			v := ProbeKVM(ctx, o, qemuPath, chPath)
			verdict = &v
		}
		return verdict
	}
	kvmWorks := func() (bool, string) {
		if o.Accel == vmm.AccelKVM {
			return true, "--accel kvm"
		}
		if o.Accel == vmm.AccelTCG {
			return false, "--accel tcg"
		}
		v := probe()
		return v.KVM, v.Reason
	}
	c := &Choice{}
	useQEMU := func(why string) (*Choice, error) {
		if qemuErr != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoVMM, qemuErr)
		}
		kvm, reason := kvmWorks()
		c.Backend, c.VMM, c.Binary = qemu.New(qemuPath), VMMQEMU, qemuPath
		c.Accel = vmm.AccelTCG
		if kvm {
			c.Accel = vmm.AccelKVM
		}
		c.Reason = fmt.Sprintf("%s; %s because %s", why, strings.ToUpper(c.Accel), reason)
		c.Verdict = verdict
		return c, nil
	}
	useCH := func(why string) (*Choice, error) {
		c.Backend, c.VMM, c.Binary, c.Accel = cloudhypervisor.New(chPath), VMMCloudHypervisor, chPath, vmm.AccelKVM
		c.Reason = why
		c.Verdict = verdict
		return c, nil
	}

	switch o.VMM {
	case VMMQEMU:
		return useQEMU("--vmm qemu")
	case VMMCloudHypervisor:
		if chErr != nil {
			return nil, fmt.Errorf("%w: %v", ErrNoVMM, chErr)
		}
		if o.Accel == vmm.AccelTCG {
			return nil, cloudhypervisor.ErrNeedsKVM
		}
		if kvm, reason := kvmWorks(); !kvm {
			return nil, fmt.Errorf("cloud-hypervisor needs KVM, which does not work here: %s (use --vmm qemu)", reason)
		}
		return useCH("--vmm cloud-hypervisor")
	}
	// auto
	if chErr == nil && o.Accel != vmm.AccelTCG {
		if kvm, reason := kvmWorks(); kvm {
			return useCH("installed, and KVM works: " + reason)
		}
		return useQEMU("cloud-hypervisor is installed but KVM does not work")
	}
	if chErr != nil {
		return useQEMU("cloud-hypervisor is not installed")
	}
	return useQEMU("--accel tcg, which cloud-hypervisor cannot do")
}

// ProbeKVM runs (or reads from the cache) the KVM probe for o's kernel,
// booting it with QEMU when qemuPath is set, else with cloud-hypervisor.
func ProbeKVM(ctx context.Context, o ChooseOptions, qemuPath, chPath string) vmm.Verdict {
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
	var backend vmm.Backend
	switch {
	case qemuPath != "":
		backend = qemu.New(qemuPath)
		p.Key = "qemu " + vmm.ProbeKey(o.Kernel.Vmlinuz, qemuPath)
	case chPath != "":
		backend = cloudhypervisor.New(chPath)
		p.Key = "cloud-hypervisor " + vmm.ProbeKey(o.Kernel.Vmlinuz, chPath)
	default:
		return vmm.Verdict{Reason: "no VMM to probe KVM with", CheckedAt: time.Now()}
	}
	p.Boot = func(ctx context.Context) error { return vmm.ProbeBoot(ctx, backend, o.Kernel.Vmlinuz) }
	return p.Probe(ctx)
}

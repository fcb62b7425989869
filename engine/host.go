package engine

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/guest/initramfs"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/internal/units"
	"github.com/pe-project/pe/vmm"
)

// InspectOptions says what host Inspect describes: the flags of pe run
// that pick its VMM, kernel and guest init.
type InspectOptions struct {
	// VMM is auto or a backend's name; Accel auto, kvm or tcg ("" means
	// auto).
	VMM, Accel string
	// Kernel is the guest kernel directory ("" finds it, see
	// vmm.FindKernel); KernelInfo, when set, is used as is.
	Kernel     string
	KernelInfo *vmm.Kernel
	// InitBinary is the guest init ("" finds it, see FindInit).
	InitBinary string
	// NoPVH boots the kernel image as it is (see Options.NoPVH).
	NoPVH bool
	// CacheDir keeps the extracted kernel, initramfs files, boot snapshots,
	// the image cache and the KVM probe's verdict ("" for vmm.CacheDir()).
	CacheDir string
	// Backends are the VMMs pe may use (nil: backends.All()).
	Backends []vmm.BackendInfo
	// KVMDevice is the KVM device ("" means /dev/kvm).
	KVMDevice string
	// Log receives debug messages; nil discards them.
	Log *slog.Logger
	// GuestOnly stops at what engine.New needs: the guest kernel, the
	// kernel image VMs boot and the guest init. Inspect then runs nothing
	// and returns at once.
	GuestOnly bool
}

// Host is what Inspect found: every fact about the host pe run depends
// on, in the order pe doctor shows them, and what pe run would do with
// them. Its JSON form is pe doctor --json's.
type Host struct {
	// Ready says pe run can run programs: every required fact is OK and a
	// VMM could be chosen.
	Ready bool `json:"ready"`
	// VMM and Accel are what pe run would use, Reason why (or why no VMM
	// could be chosen).
	VMM    string `json:"vmm,omitempty"`
	Accel  string `json:"accel,omitempty"`
	Reason string `json:"reason"`
	// KernelImage is the kernel file VMs boot (the PVH kernel extracted
	// from the installed image, or that image).
	KernelImage string `json:"kernel_image,omitempty"`
	// Checks are the facts, each with its error and its fix.
	Checks []vmm.Fact `json:"checks"`

	// Kernel is the guest kernel, InitBinary the guest init (nil and ""
	// when missing: see their facts).
	Kernel     *vmm.Kernel `json:"-"`
	InitBinary string      `json:"-"`
	// Choice is pe run's VMM and acceleration (nil when none could be
	// chosen, or with GuestOnly).
	Choice *Choice `json:"-"`
}

// Err returns the error of the first required fact that is not OK, nil
// when there is none.
func (h *Host) Err() error {
	for _, f := range h.Checks {
		if f.Required && !f.OK {
			if f.Err != nil {
				return f.Err
			}
			return fmt.Errorf("%s: %s", f.Name, f.Detail)
		}
	}
	return nil
}

// versionTimeout bounds each VMM's --version.
const versionTimeout = 5 * time.Second

// Inspect describes the host: the VMMs installed (with their versions),
// the guest kernel, /dev/kvm, the guest init, the initramfs built from
// them, the image cache, the boot snapshots, the tools the tests use
// (erofs-utils, loop mounts), and which VMM and acceleration pe run would
// use, and why (probing KVM when that depends on it). It runs each VMM's
// --version, may boot a probe VM and builds the initramfs, so it takes up
// to seconds, unless o.GuestOnly.
func Inspect(ctx context.Context, o InspectOptions) *Host {
	if o.CacheDir == "" {
		o.CacheDir = vmm.CacheDir()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	h := &Host{}
	if o.GuestOnly {
		h.Checks = append(h.Checks, h.inspectKernel(o), h.inspectInit(o))
		return h
	}
	found := findVMMs(backendList(o.Backends))
	h.Checks = append(h.Checks, vmmFacts(ctx, found)...)
	h.Checks = append(h.Checks, h.inspectKernel(o), kvmDeviceFact(o.KVMDevice), h.inspectInit(o))

	choice, chooseErr := choose(ctx, ChooseOptions{
		VMM: o.VMM, Accel: o.Accel, Kernel: h.Kernel, Backends: o.Backends,
		CacheDir: o.CacheDir, KVMDevice: o.KVMDevice, Log: o.Log,
	}, found)
	if h.Kernel != nil && h.InitBinary != "" {
		var modules []string // nil: initramfs.DefaultModules
		if choice != nil {
			modules = guestModules(o.Backends, choice.VMM)
		}
		h.Checks = append(h.Checks, initramfsFact(o.CacheDir, h.Kernel, h.InitBinary, modules))
	}
	h.Checks = append(h.Checks,
		imageCacheFact(o.CacheDir),
		bootSnapshotsFact(BootSnapshotsDir(o.CacheDir)),
		erofsUtilsFact(),
		loopMountFact(ctx),
	)
	h.Ready = h.Err() == nil
	if chooseErr != nil {
		h.Reason, h.Ready = chooseErr.Error(), false
		return h
	}
	h.Choice = choice
	h.VMM, h.Accel, h.Reason = choice.VMM, choice.Accel, choice.Reason
	if v := choice.Verdict; v != nil {
		h.Checks = append(h.Checks, kvmWorksFact(v))
	}
	return h
}

// vmmFacts describes each backend: where it is and its version, or how to
// install it; and what else it says about itself (QEMU's confinement).
func vmmFacts(ctx context.Context, found []foundVMM) []vmm.Fact {
	var facts []vmm.Fact
	for _, b := range found {
		f := vmm.Fact{Name: b.Name, Required: b.Optional == ""}
		if b.Err != nil {
			f.Detail, f.Fix, f.Err = b.Binary+" is not in PATH", b.Install, b.Err
			if !f.Required {
				f.Detail = "not installed (optional: " + b.Optional + ")"
			}
			facts = append(facts, f)
			continue
		}
		vctx, cancel := context.WithTimeout(ctx, versionTimeout)
		v, err := b.Version(vctx, b.Path)
		cancel()
		if err != nil {
			v = err.Error()
		}
		f.OK, f.Detail = true, fmt.Sprintf("%s, version %s", b.Path, v)
		facts = append(facts, f)
		if b.Facts != nil {
			facts = append(facts, b.Facts(b.Path)...)
		}
	}
	return facts
}

// inspectKernel finds the guest kernel and the image VMs boot (see
// vmm.BootImage), into h.Kernel and h.KernelImage.
func (h *Host) inspectKernel(o InspectOptions) vmm.Fact {
	f := vmm.Fact{Name: "guest kernel", Required: true}
	k := o.KernelInfo
	if k == nil {
		var err error
		if k, err = vmm.FindKernel(o.Kernel); err != nil {
			f.Detail, f.Fix, f.Err = err.Error(), "make kernel (or: scripts/get-kernel.sh)", err
			return f
		}
	}
	h.Kernel, h.KernelImage = k, k.Vmlinuz
	v := k.Version
	if v == "" {
		v = "unknown version"
	}
	f.OK, f.Detail = true, fmt.Sprintf("%s (%s)", k.Vmlinuz, v)
	if o.NoPVH {
		f.Detail += "; booted as it is"
		return f
	}
	img, err := vmm.BootImage(k, o.CacheDir)
	h.KernelImage = img
	if err != nil {
		o.Log.Debug("booting the kernel image as it is", "reason", err)
		f.Detail += "; booted as it is: " + err.Error()
	} else {
		f.Detail += "; booted through its PVH entry from " + img
	}
	return f
}

// inspectInit finds the guest init, into h.InitBinary.
func (h *Host) inspectInit(o InspectOptions) vmm.Fact {
	p, err := FindInit(o.InitBinary)
	if err != nil {
		return vmm.Fact{Name: "guest init", Required: true, Detail: err.Error(), Fix: "make build", Err: err}
	}
	h.InitBinary = p
	return vmm.Fact{Name: "guest init", OK: true, Required: true, Detail: p}
}

// kvmDeviceFact checks that the KVM device opens (see vmm.CheckKVMDevice).
func kvmDeviceFact(device string) vmm.Fact {
	if err := vmm.CheckKVMDevice(device); err != nil {
		return vmm.Fact{Name: "/dev/kvm", Detail: err.Error() + " (optional: without KVM pe emulates the CPU with TCG, slower)",
			Fix: "enable virtualisation (VT-x/AMD-V, nested virtualisation on a VM) and load kvm_intel or kvm_amd; as a user, join the kvm group",
			Err: err}
	}
	return vmm.Fact{Name: "/dev/kvm", OK: true, Detail: "opens read-write, KVM API 12"}
}

// kvmWorksFact is the KVM probe's verdict.
func kvmWorksFact(v *vmm.Verdict) vmm.Fact {
	f := vmm.Fact{Name: "KVM works", OK: v.KVM, Detail: v.Reason}
	if v.Cached {
		f.Detail += fmt.Sprintf(" (cached verdict from %s)", v.CheckedAt.Local().Format(time.DateTime))
	}
	if !v.KVM {
		f.Fix = "nothing needed: pe uses TCG; to use KVM, run pe on a host where guests boot under it (a nested or paravirtual hypervisor such as kvm-pvm runs only kernels built for it)"
	}
	return f
}

// initramfsFact builds (or finds in the cache) the initramfs pe run boots.
func initramfsFact(cacheDir string, k *vmm.Kernel, initBinary string, modules []string) vmm.Fact {
	start := time.Now()
	p, err := initramfs.Path(filepath.Join(cacheDir, "initramfs"), k.ID(), initBinary, k.ModulesDir, modules)
	if err != nil {
		return vmm.Fact{Name: "initramfs", Required: true, Detail: err.Error(), Err: err,
			Fix: "make kernel (the kernel's modules are missing or broken), then make build"}
	}
	size := int64(0)
	if fi, err := os.Stat(p); err == nil {
		size = fi.Size()
	}
	return vmm.Fact{Name: "initramfs", OK: true, Required: true,
		Detail: fmt.Sprintf("%s (%s, ready in %v)", p, units.HumanSize(size), time.Since(start).Round(time.Millisecond))}
}

// imageCacheFact opens the image cache.
func imageCacheFact(cacheDir string) vmm.Fact {
	c, err := image.OpenCache(cacheDir)
	if err != nil {
		return vmm.Fact{Name: "image cache", Required: true, Detail: err.Error(), Err: err,
			Fix: "choose a writable directory with --cache-dir or PE_CACHE_DIR"}
	}
	return vmm.Fact{Name: "image cache", OK: true, Required: true, Detail: c.Dir()}
}

// bootSnapshotsFact describes the boot snapshots in dir: how many, for
// which machines, and their room on disk.
func bootSnapshotsFact(dir string) vmm.Fact {
	f := vmm.Fact{Name: "boot snapshots", OK: true}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		f.OK, f.Detail, f.Err = false, err.Error(), err
		f.Fix = "choose a writable directory with --cache-dir or PE_CACHE_DIR (pe run boots each VM meanwhile)"
		return f
	}
	var machines []string
	var disk int64
	for _, ent := range entries {
		m, err := ReadSnapshotManifest(filepath.Join(dir, ent.Name()))
		if err != nil || !m.Boot {
			continue
		}
		machines = append(machines, fmt.Sprintf("%d MiB/%d vCPU", m.MemoryMiB, m.CPUs))
		disk += diskUsage(filepath.Join(dir, ent.Name()))
	}
	if len(machines) == 0 {
		f.Detail = fmt.Sprintf("none yet in %s: the first pe run makes one (about a second more than a boot)", dir)
		return f
	}
	f.Detail = fmt.Sprintf("%d in %s (%s; %s on disk)", len(machines), dir, strings.Join(machines, ", "), units.HumanSize(disk))
	return f
}

// diskUsage returns the room the files under dir take on disk (sparse
// files count their blocks, not their size).
func diskUsage(dir string) int64 {
	var disk int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					disk += st.Blocks * 512
				}
			}
		}
		return nil
	})
	return disk
}

// erofsUtilsFact looks for mkfs.erofs.
func erofsUtilsFact() vmm.Fact {
	p, err := exec.LookPath("mkfs.erofs")
	if err != nil {
		return vmm.Fact{Name: "erofs-utils", Err: err, Fix: "apt-get install -y erofs-utils",
			Detail: "mkfs.erofs not found (optional: the tests and benchmarks compare pe's EROFS writer with it)"}
	}
	return vmm.Fact{Name: "erofs-utils", OK: true, Detail: p}
}

// loopMountFact checks that the host kernel mounts EROFS images.
func loopMountFact(ctx context.Context) vmm.Fact {
	if err := tryLoopMount(ctx); err != nil {
		return vmm.Fact{Name: "loop mount", Err: err,
			Detail: err.Error() + " (optional: the tests check EROFS images with the host kernel)",
			Fix:    "run the tests as root on a kernel with erofs and loop (modprobe erofs loop)"}
	}
	return vmm.Fact{Name: "loop mount", OK: true, Detail: "mount -t erofs -o loop works"}
}

// tryLoopMount builds a tiny EROFS image with pe's writer and mounts it
// read-only through a loop device.
func tryLoopMount(ctx context.Context) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("not root")
	}
	dir, err := os.MkdirTemp("", "pe-doctor-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "test.erofs")
	if err := writeTestImage(img); err != nil {
		return fmt.Errorf("building a test image: %w", err)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(mctx, "mount", "-t", "erofs", "-o", "loop,ro", img, mnt).CombinedOutput(); err != nil {
		return fmt.Errorf("mount -t erofs -o loop: %s", strings.TrimSpace(string(out)))
	}
	defer exec.Command("umount", mnt).Run()
	b, err := os.ReadFile(filepath.Join(mnt, "hello"))
	if err != nil || string(b) != "hi\n" {
		return fmt.Errorf("reading the mounted test image: %q, %v", b, err)
	}
	return nil
}

// writeTestImage writes an EROFS image holding the file hello ("hi\n").
func writeTestImage(img string) error {
	f, err := os.Create(img)
	if err != nil {
		return err
	}
	w, err := erofs.NewWriter(f, erofs.WriterOptions{})
	if err == nil {
		err = w.Add(erofs.Entry{Path: "hello", Mode: 0o644, Size: 3}, strings.NewReader("hi\n"))
		if err == nil {
			err = w.Close()
		} else {
			w.Discard()
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/guest/initramfs"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/cloudhypervisor"
	"github.com/pe-project/pe/vmm/qemu"
)

// doctorCheck is one line of pe doctor's report.
type doctorCheck struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Required says pe run cannot work without it.
	Required bool   `json:"required"`
	Detail   string `json:"detail"`
	// Fix is the command (or step) that fixes it.
	Fix string `json:"fix,omitempty"`
}

// doctorReport is pe doctor's whole report.
type doctorReport struct {
	// Ready says pe run can run programs.
	Ready bool `json:"ready"`
	// VMM and Accel are what pe run would use, Reason why.
	VMM    string `json:"vmm,omitempty"`
	Accel  string `json:"accel,omitempty"`
	Reason string `json:"reason"`
	// KernelImage is the kernel file VMs boot (the PVH kernel extracted
	// from the installed image, or that image).
	KernelImage string        `json:"kernel_image,omitempty"`
	Checks      []doctorCheck `json:"checks"`
}

// newDoctorCmd returns "pe doctor".
func newDoctorCmd(a *app) *cobra.Command {
	var (
		vf       vmFlags
		cacheDir string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what pe run needs: VMM, KVM, guest kernel, guest init",
		Long: `Check what pe run needs and say what to do about anything missing: QEMU and
cloud-hypervisor (with their versions), /dev/kvm and whether guests really
boot under it (a probe boot, cached per kernel, VMM and host boot), the guest
kernel, the guest init and the initramfs built from them, and the tools the
tests use (erofs-utils, loop mounts). Then which VMM and acceleration pe run
would use, and why.

Exits with status 1 when pe run cannot work.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep := doctor(cmd.Context(), &vf, engineCacheDir(cacheDir))
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else if err := printDoctor(out, rep); err != nil {
				return err
			}
			if !rep.Ready {
				return &ExitStatus{Code: 1}
			}
			return nil
		},
	}
	vf.register(cmd)
	cmd.Flags().StringVar(&cacheDir, "cache-dir", "", "the cache directory (default $XDG_CACHE_HOME/pe or ~/.cache/pe)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as one JSON object")
	return cmd
}

// doctor runs the checks.
func doctor(ctx context.Context, vf *vmFlags, cacheDir string) *doctorReport {
	rep := &doctorReport{}
	add := func(c doctorCheck) { rep.Checks = append(rep.Checks, c) }
	vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	qemuPath, err := qemu.Find("")
	if err != nil {
		add(doctorCheck{Name: "qemu", Required: true, Detail: "qemu-system-x86_64 is not in PATH", Fix: qemu.InstallHint})
	} else {
		v, verr := qemu.Version(vctx, qemuPath)
		if verr != nil {
			v = verr.Error()
		}
		add(doctorCheck{Name: "qemu", OK: true, Required: true, Detail: fmt.Sprintf("%s, version %s", qemuPath, v)})
		c := qemu.New(qemuPath).Confinement()
		fix := ""
		switch {
		case !c.Sandbox:
			fix = "unset " + qemu.ConfineEnv
		case !c.Jail:
			fix = "run pe as root for the full confinement (docs/security.md)"
		}
		add(doctorCheck{Name: "qemu confinement", OK: c.Jail, Detail: c.String(), Fix: fix})
	}
	chPath, err := cloudhypervisor.Find("")
	if err != nil {
		add(doctorCheck{Name: "cloud-hypervisor", Detail: "not installed (optional: faster VMs where KVM works)", Fix: cloudhypervisor.InstallHint})
	} else {
		v, verr := cloudhypervisor.Version(vctx, chPath)
		if verr != nil {
			v = verr.Error()
		}
		add(doctorCheck{Name: "cloud-hypervisor", OK: true, Detail: fmt.Sprintf("%s, version %s", chPath, v)})
	}

	kernel, kerr := vmm.FindKernel(vf.kernel)
	if kerr != nil {
		add(doctorCheck{Name: "guest kernel", Required: true, Detail: kerr.Error(), Fix: "make kernel (or: scripts/get-kernel.sh)"})
	} else {
		v := kernel.Version
		if v == "" {
			v = "unknown version"
		}
		detail := fmt.Sprintf("%s (%s)", kernel.Vmlinuz, v)
		img, err := vmm.BootImage(kernel, cacheDir)
		if err != nil {
			detail += "; booted as it is: " + err.Error()
		} else {
			detail += "; booted through its PVH entry from " + img
		}
		rep.KernelImage = img
		add(doctorCheck{Name: "guest kernel", OK: true, Required: true, Detail: detail})
	}

	if err := vmm.CheckKVMDevice(""); err != nil {
		add(doctorCheck{Name: "/dev/kvm", Detail: err.Error() + " (optional: without KVM pe emulates the CPU with TCG, slower)",
			Fix: "enable virtualisation (VT-x/AMD-V, nested virtualisation on a VM) and load kvm_intel or kvm_amd; as a user, join the kvm group"})
	} else {
		add(doctorCheck{Name: "/dev/kvm", OK: true, Detail: "opens read-write, KVM API 12"})
	}

	initPath, ierr := engine.FindInit(vf.init)
	if ierr != nil {
		add(doctorCheck{Name: "guest init", Required: true, Detail: ierr.Error(), Fix: "make build"})
	} else {
		add(doctorCheck{Name: "guest init", OK: true, Required: true, Detail: initPath})
	}
	if kerr == nil && ierr == nil {
		start := time.Now()
		p, err := initramfs.Path(filepath.Join(cacheDir, "initramfs"), kernel.ID(), initPath, kernel.ModulesDir, nil)
		if err != nil {
			add(doctorCheck{Name: "initramfs", Required: true, Detail: err.Error(), Fix: "make kernel (the kernel's modules are missing or broken), then make build"})
		} else {
			size := int64(0)
			if fi, err := os.Stat(p); err == nil {
				size = fi.Size()
			}
			add(doctorCheck{Name: "initramfs", OK: true, Required: true, Detail: fmt.Sprintf("%s (%s, ready in %v)", p, humanBytes(size), time.Since(start).Round(time.Millisecond))})
		}
	}

	if c, err := image.OpenCache(cacheDir); err != nil {
		add(doctorCheck{Name: "image cache", Required: true, Detail: err.Error(), Fix: "choose a writable directory with --cache-dir or PE_CACHE_DIR"})
	} else {
		add(doctorCheck{Name: "image cache", OK: true, Required: true, Detail: c.Dir()})
	}

	add(bootSnapshotsCheck(engine.BootSnapshotsDir(cacheDir)))

	if p, err := exec.LookPath("mkfs.erofs"); err != nil {
		add(doctorCheck{Name: "erofs-utils", Detail: "mkfs.erofs not found (optional: the tests and benchmarks compare pe's EROFS writer with it)", Fix: "apt-get install -y erofs-utils"})
	} else {
		add(doctorCheck{Name: "erofs-utils", OK: true, Detail: p})
	}
	if err := tryLoopMount(ctx); err != nil {
		add(doctorCheck{Name: "loop mount", Detail: err.Error() + " (optional: the tests check EROFS images with the host kernel)", Fix: "run the tests as root on a kernel with erofs and loop (modprobe erofs loop)"})
	} else {
		add(doctorCheck{Name: "loop mount", OK: true, Detail: "mount -t erofs -o loop works"})
	}

	ready := true
	for _, c := range rep.Checks {
		if c.Required && !c.OK {
			ready = false
		}
	}
	if kerr != nil {
		kernel = nil
	}
	choice, err := engine.Choose(ctx, engine.ChooseOptions{VMM: vf.vmm, Accel: vf.accel, Kernel: kernel, CacheDir: cacheDir})
	if err != nil {
		rep.Reason = err.Error()
		ready = false
	} else {
		rep.VMM, rep.Accel, rep.Reason = choice.VMM, choice.Accel, choice.Reason
		if v := choice.Verdict; v != nil {
			detail := v.Reason
			if v.Cached {
				detail += fmt.Sprintf(" (cached verdict from %s)", v.CheckedAt.Local().Format(time.DateTime))
			}
			c := doctorCheck{Name: "KVM works", OK: v.KVM, Detail: detail}
			if !v.KVM {
				c.Fix = "nothing needed: pe uses TCG; to use KVM, run pe on a host where guests boot under it (a nested or paravirtual hypervisor such as kvm-pvm runs only kernels built for it)"
			}
			rep.Checks = append(rep.Checks, c)
		}
	}
	rep.Ready = ready
	return rep
}

// bootSnapshotsCheck describes the boot snapshots in dir: how many, for
// which machines, and their room on disk.
func bootSnapshotsCheck(dir string) doctorCheck {
	c := doctorCheck{Name: "boot snapshots", OK: true}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		c.OK, c.Detail = false, err.Error()
		c.Fix = "choose a writable directory with --cache-dir or PE_CACHE_DIR (pe run boots each VM meanwhile)"
		return c
	}
	var machines []string
	var disk int64
	for _, ent := range entries {
		m, err := engine.ReadSnapshotManifest(filepath.Join(dir, ent.Name()))
		if err != nil || !m.Boot {
			continue
		}
		machines = append(machines, fmt.Sprintf("%d MiB/%d vCPU", m.MemoryMiB, m.CPUs))
		filepath.WalkDir(filepath.Join(dir, ent.Name()), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if fi, err := d.Info(); err == nil {
					if st, ok := fi.Sys().(*syscall.Stat_t); ok {
						disk += st.Blocks * 512
					}
				}
			}
			return nil
		})
	}
	if len(machines) == 0 {
		c.Detail = fmt.Sprintf("none yet in %s: the first pe run makes one (about a second more than a boot)", dir)
		return c
	}
	c.Detail = fmt.Sprintf("%d in %s (%s; %s on disk)", len(machines), dir, strings.Join(machines, ", "), humanBytes(disk))
	return c
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
	if err != nil {
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

// printDoctor prints the report for people.
func printDoctor(w io.Writer, rep *doctorReport) error {
	width := 0
	for _, c := range rep.Checks {
		width = max(width, len(c.Name))
	}
	var b strings.Builder
	for _, c := range rep.Checks {
		mark := "ok"
		switch {
		case !c.OK && c.Required:
			mark = "!!"
		case !c.OK:
			mark = "--"
		}
		fmt.Fprintf(&b, "[%s] %-*s  %s\n", mark, width, c.Name, c.Detail)
		if !c.OK && c.Fix != "" {
			fmt.Fprintf(&b, "     %-*s  fix: %s\n", width, "", c.Fix)
		}
	}
	b.WriteString("\n")
	if rep.VMM != "" {
		fmt.Fprintf(&b, "pe run will use %s with %s: %s.\n", rep.VMM, rep.Accel, rep.Reason)
	} else {
		fmt.Fprintf(&b, "pe run has no VMM: %s.\n", rep.Reason)
	}
	if rep.Ready {
		b.WriteString("pe run is ready.\n")
	} else {
		b.WriteString("pe run cannot work yet: fix the [!!] lines.\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

package engine

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/guest/initramfs"
	"github.com/pe-project/pe/vmm"
)

// TestGuestModules gives each backend's guest the modules it always had:
// QEMU's microvm only the MMIO transport, cloud-hypervisor both.
func TestGuestModules(t *testing.T) {
	for _, c := range []struct {
		vmm  string
		want []string
	}{
		{"qemu", initramfs.MMIOModules},
		{"cloud-hypervisor", initramfs.DefaultModules},
		{"firecracker", nil},
	} {
		if diff := cmp.Diff(c.want, guestModules(nil, c.vmm)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.vmm, diff)
		}
	}
}

// fakeVMMs puts stand-in VMM executables in PATH (and nothing else) that
// answer --version the way the real ones do.
func fakeVMMs(t *testing.T, versions map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, out := range versions {
		script := "#!/bin/sh\necho '" + out + "'\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	return dir
}

// factNames returns the names of the facts.
func factNames(facts []vmm.Fact) []string {
	var names []string
	for _, f := range facts {
		names = append(names, f.Name)
	}
	return names
}

// TestInspect describes a host with QEMU but no guest kernel: QEMU found
// with its version, the kernel missing with its fix, pe run not ready.
func TestInspect(t *testing.T) {
	bin := fakeVMMs(t, map[string]string{"qemu-system-x86_64": "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"})
	t.Setenv("PE_INIT", "")
	init := filepath.Join(t.TempDir(), "pe-init")
	os.WriteFile(init, []byte("init"), 0o755)
	noKVM := filepath.Join(t.TempDir(), "no-kvm")
	h := Inspect(t.Context(), InspectOptions{
		Accel: "tcg", Kernel: filepath.Join(t.TempDir(), "no-kernel"), InitBinary: init,
		CacheDir: t.TempDir(), KVMDevice: noKVM,
	})
	want := []string{"qemu", "qemu confinement", "cloud-hypervisor", "guest kernel", "/dev/kvm", "guest init",
		"image cache", "boot snapshots", "erofs-utils", "loop mount"}
	if diff := cmp.Diff(want, factNames(h.Checks)); diff != "" {
		t.Errorf("facts (-want +got):\n%s", diff)
	}
	facts := map[string]vmm.Fact{}
	for _, f := range h.Checks {
		facts[f.Name] = f
	}
	if f := facts["qemu"]; !f.OK || !f.Required || f.Detail != filepath.Join(bin, "qemu-system-x86_64")+", version 7.2.22" {
		t.Errorf("qemu: %+v", f)
	}
	if f := facts["cloud-hypervisor"]; f.OK || f.Required || f.Detail != "not installed (optional: faster VMs where KVM works)" || !strings.Contains(f.Fix, "releases") {
		t.Errorf("cloud-hypervisor: %+v", f)
	}
	var notFound *vmm.KernelNotFoundError
	if f := facts["guest kernel"]; f.OK || !f.Required || !strings.HasPrefix(f.Fix, "make kernel") || !errors.As(f.Err, &notFound) {
		t.Errorf("guest kernel: %+v", f)
	}
	if f := facts["/dev/kvm"]; f.OK || f.Required || !strings.Contains(f.Detail, noKVM) {
		t.Errorf("/dev/kvm: %+v", f)
	}
	if f := facts["guest init"]; !f.OK || f.Detail != init {
		t.Errorf("guest init: %+v", f)
	}
	if h.Ready || !errors.As(h.Err(), &notFound) {
		t.Errorf("ready %v, error %v; want not ready for want of a kernel", h.Ready, h.Err())
	}
	if h.VMM != "qemu" || h.Accel != "tcg" || h.Choice == nil || !strings.Contains(h.Reason, "cloud-hypervisor is not installed") {
		t.Errorf("chose %s/%s (%q)", h.VMM, h.Accel, h.Reason)
	}
}

// TestInspectNoVMM says how to install QEMU when no VMM is installed.
func TestInspectNoVMM(t *testing.T) {
	fakeVMMs(t, nil)
	h := Inspect(t.Context(), InspectOptions{CacheDir: t.TempDir(), KVMDevice: filepath.Join(t.TempDir(), "no-kvm")})
	if f := h.Checks[0]; f.Name != "qemu" || f.OK || !f.Required || f.Detail != "qemu-system-x86_64 is not in PATH" || f.Fix != "apt-get install -y qemu-system-x86" {
		t.Errorf("qemu: %+v", f)
	}
	if h.Ready || h.VMM != "" || h.Choice != nil || !strings.Contains(h.Reason, ErrNoVMM.Error()) {
		t.Errorf("ready %v, VMM %q, reason %q; want no VMM", h.Ready, h.VMM, h.Reason)
	}
}

// TestInspectGuestOnly finds the kernel and the guest init, nothing else,
// and stops on the first missing one as engine.New does.
func TestInspectGuestOnly(t *testing.T) {
	t.Setenv("PE_INIT", "")
	h := Inspect(t.Context(), InspectOptions{
		Kernel: filepath.Join(t.TempDir(), "no-kernel"), InitBinary: filepath.Join(t.TempDir(), "no-init"), GuestOnly: true,
	})
	if diff := cmp.Diff([]string{"guest kernel", "guest init"}, factNames(h.Checks)); diff != "" {
		t.Errorf("facts (-want +got):\n%s", diff)
	}
	var notFound *vmm.KernelNotFoundError
	if !errors.As(h.Err(), &notFound) {
		t.Errorf("Err() = %v, want the kernel's error", h.Err())
	}
	_, err := New(Options{Images: &FileSource{}, Kernel: filepath.Join(t.TempDir(), "no-kernel")})
	if !errors.As(err, &notFound) {
		t.Errorf("New: %v, want the kernel's error", err)
	}

	vmlinuz := filepath.Join(t.TempDir(), "vmlinuz")
	os.WriteFile(vmlinuz, []byte("not a kernel"), 0o644)
	h = Inspect(t.Context(), InspectOptions{KernelInfo: &vmm.Kernel{Vmlinuz: vmlinuz}, InitBinary: filepath.Join(t.TempDir(), "no-init"), CacheDir: t.TempDir(), GuestOnly: true})
	if h.Kernel == nil || h.KernelImage != vmlinuz || !strings.Contains(h.Checks[0].Detail, "booted as it is") {
		t.Errorf("kernel %+v, image %q, fact %+v: want the image booted as it is", h.Kernel, h.KernelImage, h.Checks[0])
	}
	if f := h.Checks[1]; f.OK || f.Fix != "make build" || h.Err() != f.Err || f.Err == nil {
		t.Errorf("guest init: %+v; Err() = %v", f, h.Err())
	}
}

// TestInspectBootSnapshots lists the boot snapshots in the cache, and only
// those: an image's snapshot or a stray directory is not one.
func TestInspectBootSnapshots(t *testing.T) {
	dir := t.TempDir()
	if c := bootSnapshotsFact(filepath.Join(dir, "missing")); !c.OK || !strings.Contains(c.Detail, "none yet") {
		t.Errorf("no directory: %+v", c)
	}
	write := func(name, manifest string) {
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "manifest.json"), []byte(manifest), 0o644)
		os.WriteFile(filepath.Join(dir, name, "mem"), bytes.Repeat([]byte("x"), 1<<20), 0o644)
	}
	write("512m-1c-a", `{"format":1,"boot":true,"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`)
	write("1024m-2c-b", `{"format":1,"boot":true,"memory_mib":1024,"cpus":2,"io_size":1,"vmm":"qemu"}`)
	write("image", `{"format":1,"image_file":{"path":"/i.erofs","size":1},"memory_mib":512,"cpus":1,"io_size":1,"vmm":"qemu"}`)
	os.Mkdir(filepath.Join(dir, "stray"), 0o755)
	c := bootSnapshotsFact(dir)
	if want := "2 in " + dir + " (1024 MiB/2 vCPU, 512 MiB/1 vCPU; 2.0 MiB on disk)"; !c.OK || c.Detail != want {
		t.Errorf("check %+v, want detail %q", c, want)
	}
}

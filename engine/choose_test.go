package engine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/cloudhypervisor"
)

// fakePath puts stand-in VMM executables (never run) in PATH.
func fakePath(t *testing.T, names ...string) {
	t.Helper()
	dir := t.TempDir()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
}

func TestChoose(t *testing.T) {
	const (
		q  = "qemu-system-x86_64"
		ch = "cloud-hypervisor"
	)
	noKVM := filepath.Join(t.TempDir(), "no-kvm") // a KVM device that does not exist: the probe says no without booting
	for _, c := range []struct {
		desc       string
		installed  []string
		vmm, accel string
		device     string
		wantVMM    string
		wantAccel  string
		inReason   string
		wantErr    error
	}{
		{"auto, only qemu, no KVM", []string{q}, "auto", "auto", noKVM, "qemu", "tcg", "cloud-hypervisor is not installed; TCG because", nil},
		{"auto, both, KVM forced", []string{q, ch}, "auto", "kvm", noKVM, "cloud-hypervisor", "kvm", "installed, and KVM works: --accel kvm", nil},
		{"auto, both, no KVM", []string{q, ch}, "auto", "auto", noKVM, "qemu", "tcg", "cloud-hypervisor is installed but KVM does not work", nil},
		{"auto, both, TCG asked", []string{q, ch}, "auto", "tcg", noKVM, "qemu", "tcg", "--accel tcg", nil},
		{"qemu with kvm", []string{q}, "qemu", "kvm", noKVM, "qemu", "kvm", "--vmm qemu; KVM because --accel kvm", nil},
		{"qemu missing", nil, "qemu", "auto", noKVM, "", "", "", ErrNoVMM},
		{"nothing installed", nil, "auto", "auto", noKVM, "", "", "", ErrNoVMM},
		{"cloud-hypervisor with tcg", []string{ch}, "cloud-hypervisor", "tcg", noKVM, "", "", "", cloudhypervisor.ErrNeedsKVM},
		{"cloud-hypervisor missing", []string{q}, "cloud-hypervisor", "kvm", noKVM, "", "", "", ErrNoVMM},
	} {
		t.Run(c.desc, func(t *testing.T) {
			fakePath(t, c.installed...)
			got, err := Choose(t.Context(), ChooseOptions{VMM: c.vmm, Accel: c.accel, KVMDevice: c.device, CacheDir: t.TempDir(),
				Kernel: &vmm.Kernel{Vmlinuz: "/nonexistent/vmlinuz"}})
			if c.wantErr != nil {
				if !errors.Is(err, c.wantErr) {
					t.Errorf("error %v, want %v", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.VMM != c.wantVMM || got.Accel != c.wantAccel || got.Backend.Name() != c.wantVMM || !strings.Contains(got.Reason, c.inReason) {
				t.Errorf("chose %s/%s (%q), want %s/%s with %q", got.VMM, got.Accel, got.Reason, c.wantVMM, c.wantAccel, c.inReason)
			}
		})
	}
	t.Run("cloud-hypervisor without working KVM", func(t *testing.T) {
		fakePath(t, ch)
		_, err := Choose(t.Context(), ChooseOptions{VMM: "cloud-hypervisor", KVMDevice: noKVM, Kernel: &vmm.Kernel{Vmlinuz: "/x"}})
		if err == nil || !strings.Contains(err.Error(), "needs KVM, which does not work here") {
			t.Errorf("error %v", err)
		}
	})
	for _, bad := range []ChooseOptions{{VMM: "firecracker"}, {Accel: "hvf"}} {
		if _, err := Choose(t.Context(), bad); err == nil {
			t.Errorf("Choose(%+v) accepted", bad)
		}
	}
}

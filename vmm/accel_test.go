package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }

// kvmDevice returns a path CheckKVMDevice accepts, or skips: the probe
// logic past the device check needs one. /dev/kvm itself is fine: the
// fakes below never boot anything.
func kvmDevice(t *testing.T) string {
	t.Helper()
	if err := CheckKVMDevice(""); err != nil {
		t.Skipf("no usable /dev/kvm to get past the device check: %v", err)
	}
	return "/dev/kvm"
}

func TestProbeNoDevice(t *testing.T) {
	booted := false
	p := &Prober{Device: filepath.Join(t.TempDir(), "kvm"), Boot: func(context.Context) error { booted = true; return nil }}
	v := p.Probe(t.Context())
	if v.KVM || booted || !strings.Contains(v.Reason, "no such file") {
		t.Errorf("verdict %+v, booted %v; want no KVM without a boot", v, booted)
	}
	if err := CheckKVMDevice("/dev/null"); err == nil {
		t.Error("/dev/null passed as a KVM device")
	}
}

func TestProbeVerdicts(t *testing.T) {
	dev := kvmDevice(t)
	for _, c := range []struct {
		desc     string
		boot     func(ctx context.Context) error
		wantKVM  bool
		inReason string
	}{
		{"boots", func(context.Context) error { return nil }, true, "ran the kernel"},
		{"hangs", func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, false, "did not finish within"},
		{"fails", func(context.Context) error { return errors.New("failed to set MSR 0x10a") }, false, "MSR 0x10a"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			cache := t.TempDir()
			boots := 0
			p := &Prober{Device: dev, Timeout: 200 * time.Millisecond, CacheDir: cache, Key: "kernel+qemu",
				Boot: func(ctx context.Context) error { boots++; return c.boot(ctx) }}
			start := time.Now()
			v := p.Probe(t.Context())
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("the probe took %v with a 200ms timeout", took)
			}
			if v.KVM != c.wantKVM || !strings.Contains(v.Reason, c.inReason) || v.Cached {
				t.Errorf("verdict %+v, want KVM %v, reason with %q", v, c.wantKVM, c.inReason)
			}
			// The second probe reads the cache.
			v2 := p.Probe(t.Context())
			if boots != 1 || !v2.Cached || v2.KVM != v.KVM || v2.Reason != v.Reason {
				t.Errorf("second probe: %+v after %d boots, want the cached verdict", v2, boots)
			}
			// Another key (another kernel or VMM) probes again.
			p.Key = "other kernel"
			if v3 := p.Probe(t.Context()); v3.Cached || boots != 2 {
				t.Errorf("another key: %+v after %d boots, want a new probe", v3, boots)
			}
		})
	}
}

func TestProbeInterruptedNotCached(t *testing.T) {
	dev := kvmDevice(t)
	cache := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	p := &Prober{Device: dev, CacheDir: cache, Key: "k", Boot: func(bctx context.Context) error {
		cancel()
		<-bctx.Done()
		return bctx.Err()
	}}
	v := p.Probe(ctx)
	if v.KVM || !strings.Contains(v.Reason, "interrupted") {
		t.Errorf("verdict %+v", v)
	}
	if _, ok := p.Cached(); ok {
		t.Error("an interrupted probe was cached")
	}
}

func TestProbeBadCacheEntry(t *testing.T) {
	dev := kvmDevice(t)
	cache := t.TempDir()
	p := &Prober{Device: dev, CacheDir: cache, Key: "k", Boot: func(context.Context) error { return nil }}
	path := p.cachePath()
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte("{not json"), 0o644)
	if v := p.Probe(t.Context()); !v.KVM || v.Cached {
		t.Errorf("verdict %+v: a corrupt cache entry must be replaced by a probe", v)
	}
}

// fakeBackend starts machines that print console to a Ring and exit or
// hang.
type fakeBackend struct {
	console string
	hang    bool
	exitErr error
}

type fakeConsoleMachine struct {
	fakeMachine
	console string
	exitErr error
}

func (m *fakeConsoleMachine) ConsoleLog() []byte { return []byte(m.console) }
func (m *fakeConsoleMachine) Wait(ctx context.Context) error {
	if err := m.fakeMachine.Wait(ctx); err != nil {
		return err
	}
	return m.exitErr
}

func (b *fakeBackend) Name() string { return "fake" }
func (b *fakeBackend) Start(ctx context.Context, cfg *Config) (Machine, error) {
	if cfg.Accel != AccelKVM || cfg.Cmdline != ProbeCmdline || cfg.Initramfs != "" {
		return nil, errors.New("not a probe config")
	}
	m := &fakeConsoleMachine{fakeMachine: fakeMachine{done: make(chan struct{})}, console: b.console, exitErr: b.exitErr}
	if !b.hang {
		m.Kill()
	}
	return m, nil
}

func TestProbeBoot(t *testing.T) {
	for _, c := range []struct {
		desc    string
		b       *fakeBackend
		wantErr string
	}{
		{"panics as expected", &fakeBackend{console: "Linux version 6.1\nKernel panic - not syncing: VFS: Unable to mount root fs\n"}, ""},
		{"panic seen while running", &fakeBackend{console: "Kernel panic - not syncing", hang: true}, ""},
		{"hangs", &fakeBackend{console: "tsc: Marking TSC unstable", hang: true}, "deadline"},
		{"VMM fails", &fakeBackend{exitErr: errors.New("qemu exited: MSR 0x10a")}, "MSR 0x10a"},
		{"stops early", &fakeBackend{console: "Linux version 6.1\n"}, "before the kernel's end"},
	} {
		t.Run(c.desc, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			err := ProbeBoot(ctx, c.b, "/vmlinuz")
			if (err == nil) != (c.wantErr == "") || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("ProbeBoot: %v, want error with %q", err, c.wantErr)
			}
		})
	}
}

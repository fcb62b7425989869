package vmm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultProbeTimeout bounds a KVM probe boot. A kernel that works under
// KVM reaches its root-mount panic in well under a second; one that hangs
// (kvm-pvm and a stock kernel) never does.
const DefaultProbeTimeout = 3 * time.Second

// ProbeCmdline is the kernel command line of a probe boot: no initramfs and
// a root device that does not exist, so a kernel that runs ends quickly in
// "Kernel panic - not syncing: VFS: Unable to mount root fs".
const ProbeCmdline = "console=ttyS0 panic=-1 reboot=t root=/dev/pe-kvm-probe"

// probeDone is what a probe boot prints when the kernel ran to its end.
var probeDone = []byte("Kernel panic")

// Verdict is the outcome of a KVM probe.
type Verdict struct {
	// KVM says KVM works: guests boot under it.
	KVM bool `json:"kvm"`
	// Reason says why, in a phrase: "a probe boot reached the kernel's
	// end in 412ms", "/dev/kvm: no such file or directory", ...
	Reason string `json:"reason"`
	// CheckedAt is when the probe ran.
	CheckedAt time.Time `json:"checked_at"`
	// Cached says the verdict came from the cache.
	Cached bool `json:"-"`
}

// Prober decides whether KVM really works on this host. /dev/kvm may exist
// and answer ioctls while guests hang under it (a nested paravirtual
// hypervisor such as kvm-pvm with a stock kernel), so after checking the
// device it boots the guest kernel under KVM with a short deadline (Boot)
// and caches the verdict per Key and host boot.
type Prober struct {
	// Device is the KVM device; "" means /dev/kvm.
	Device string
	// Boot boots the kernel under KVM and returns nil when it ran to its
	// end before ctx's deadline (see ProbeBoot).
	Boot func(ctx context.Context) error
	// Timeout bounds Boot; 0 means DefaultProbeTimeout.
	Timeout time.Duration
	// CacheDir keeps verdicts; "" disables the cache.
	CacheDir string
	// Key identifies what the verdict depends on besides the host's boot:
	// the kernel and the VMM (see ProbeKey).
	Key string
	// Log receives debug messages; nil discards them.
	Log *slog.Logger
}

// CheckKVMDevice checks that the KVM device at path (""
// means /dev/kvm) opens read-write and speaks KVM API version 12.
func CheckKVMDevice(path string) error {
	if path == "" {
		path = "/dev/kvm"
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	const kvmGetAPIVersion = 0xAE00
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("%s: KVM_GET_API_VERSION: %w", path, err)
	}
	if v != 12 {
		return fmt.Errorf("%s: KVM API version %d, want 12", path, v)
	}
	return nil
}

// Probe returns the verdict: from the cache when there is one for this Key
// and host boot, else by checking the device and booting. It never takes
// much longer than Timeout.
func (p *Prober) Probe(ctx context.Context) Verdict {
	log := p.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := CheckKVMDevice(p.Device); err != nil {
		return Verdict{Reason: err.Error(), CheckedAt: time.Now()}
	}
	if v, ok := p.Cached(); ok {
		log.Debug("KVM probe verdict from the cache", "kvm", v.KVM, "reason", v.Reason)
		return v
	}
	if p.Boot == nil {
		return Verdict{Reason: "no way to boot a probe VM", CheckedAt: time.Now()}
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	bctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	err := p.Boot(bctx)
	took := time.Since(start).Round(time.Millisecond)
	v := Verdict{CheckedAt: start}
	switch {
	case err == nil:
		v.KVM, v.Reason = true, fmt.Sprintf("a probe boot under KVM ran the kernel in %v", took)
	case ctx.Err() != nil:
		// Interrupted: say so, and do not cache it.
		return Verdict{Reason: "KVM probe interrupted: " + ctx.Err().Error(), CheckedAt: start}
	case errors.Is(err, context.DeadlineExceeded):
		v.Reason = fmt.Sprintf("a probe boot under KVM did not finish within %v: guests hang under this /dev/kvm (a nested or paravirtual hypervisor?)", timeout)
	default:
		v.Reason = "a probe boot under KVM failed: " + err.Error()
	}
	log.Debug("KVM probe", "kvm", v.KVM, "reason", v.Reason)
	p.store(v)
	return v
}

// cachePath is where the verdict for p.Key and this host boot lives.
func (p *Prober) cachePath() string {
	if p.CacheDir == "" {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "pe-kvm-probe-1\x00%s\x00%s\x00%s", p.Key, hostBootID(), hostRelease())
	return filepath.Join(p.CacheDir, "kvm-probe", hex.EncodeToString(h.Sum(nil))[:32]+".json")
}

// Cached returns the cached verdict, if any.
func (p *Prober) Cached() (Verdict, bool) {
	path := p.cachePath()
	if path == "" {
		return Verdict{}, false
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Verdict{}, false
	}
	var v Verdict
	if err := json.Unmarshal(b, &v); err != nil || v.Reason == "" {
		return Verdict{}, false
	}
	v.Cached = true
	return v, true
}

// store caches v, atomically; failures only cost a later probe.
func (p *Prober) store(v Verdict) {
	path := p.cachePath()
	if path == "" {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	storeAtomic(path, b)
}

// ProbeKey identifies a kernel image and a VMM binary by path, size and
// modification time, for Prober.Key.
func ProbeKey(kernel, vmmBinary string) string {
	var b strings.Builder
	for _, p := range []string{kernel, vmmBinary} {
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(&b, "%s:?;", p)
			continue
		}
		fmt.Fprintf(&b, "%s:%d:%d;", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return b.String()
}

// ProbeBoot boots kernel under KVM with backend, without initramfs or
// disks and with ProbeCmdline, and returns nil once the console shows the
// kernel reached its end (the root-mount panic). It kills the VM when ctx
// is done, and leaves nothing behind either way.
func ProbeBoot(ctx context.Context, backend Backend, kernel string) error {
	m, err := backend.Start(ctx, &Config{
		Kernel:    kernel,
		Cmdline:   ProbeCmdline,
		CPUs:      1,
		MemoryMiB: 128,
		Accel:     AccelKVM,
	})
	if err != nil {
		return err
	}
	defer m.Kill()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	exited := make(chan error, 1)
	go func() { exited <- m.Wait(context.Background()) }()
	for {
		select {
		case err := <-exited:
			if bytes.Contains(m.ConsoleLog(), probeDone) {
				return nil
			}
			if err == nil {
				err = errors.New("the VM stopped before the kernel's end")
			}
			return fmt.Errorf("%w%s", err, consoleTail(m.ConsoleLog()))
		case <-tick.C:
			if bytes.Contains(m.ConsoleLog(), probeDone) {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// consoleTail formats the last lines of a console for an error message.
func consoleTail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return ""
	}
	return " (console: " + lastLines(s, 2) + ")"
}

// hostBootID identifies the host's current boot: a verdict may change
// when the host reboots (a new kernel, KVM module options).
func hostBootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// hostRelease is the host kernel's release.
func hostRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

package qemu

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pe-project/pe/vmm"
)

// TestRestoreBeforeResume restores a snapshot onto a writable disk that is
// an empty file when QEMU opens it, and writes the disk in
// Config.BeforeResume: the woken guest must read what was written then
// (QEMU takes the disk's size after the hook). A hook that fails ends the
// restore with its error, and leaves no QEMU behind.
func TestRestoreBeforeResume(t *testing.T) {
	k, busybox := nbdVMNeeds(t)
	dir := t.TempDir()
	data := randomImage(1<<20, 7, 8)
	want := fmt.Sprintf("%x  -", sha256.Sum256(data))
	initrd := hashInitrd(t, k, busybox, "echo snap-ready\nread line\nhead -c 1048576 /dev/vda | sha256sum\npoweroff -f\n")
	cfg := func(disk string) *vmm.Config {
		return &vmm.Config{
			Kernel: k.Vmlinuz, Initramfs: initrd, Cmdline: "panic=-1 quiet",
			Disks: []vmm.Disk{{Path: disk}},
			Accel: vmm.AccelTCG, MemoryMiB: 256,
		}
	}
	saved := filepath.Join(dir, "saved.img")
	if err := os.WriteFile(saved, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	b := New("")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	snap := t.TempDir()
	if err := b.SaveSnapshot(ctx, cfg(saved), snap, []byte("snap-ready")); err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}

	t.Run("written before resume", func(t *testing.T) {
		disk := filepath.Join(t.TempDir(), "late.img")
		if err := os.WriteFile(disk, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		var steps []string
		c := cfg(disk)
		c.OnStep = func(step string, _ time.Duration) { steps = append(steps, step) }
		c.BeforeResume = func(context.Context) error {
			steps = append(steps, "hook")
			return os.WriteFile(disk, data, 0o600) // the same file: QEMU holds it open
		}
		m, err := b.RestoreSnapshot(ctx, c, snap, []byte("\n"))
		if err != nil {
			t.Fatalf("RestoreSnapshot: %v", err)
		}
		defer m.Kill()
		if err := m.Wait(ctx); err != nil {
			t.Fatalf("Wait: %v\nconsole:\n%s", err, m.ConsoleLog())
		}
		if !strings.Contains(string(m.ConsoleLog()), want) {
			t.Errorf("the woken guest did not read what BeforeResume wrote (hash %s); console:\n%s", want, m.ConsoleLog())
		}
		hook := slices.Index(steps, "hook")
		if hook < 0 || hook < slices.Index(steps, StepIncomingName) || slices.Index(steps, StepResumeName) < hook {
			t.Errorf("steps %v: want the hook after %s and before %s", steps, StepIncomingName, StepResumeName)
		}
	})

	t.Run("hook fails", func(t *testing.T) {
		c := cfg(filepath.Join(t.TempDir(), "late.img"))
		if err := os.WriteFile(c.Disks[0].Path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		errHook := errors.New("the image could not be resolved")
		c.BeforeResume = func(context.Context) error { return errHook }
		m, err := b.RestoreSnapshot(ctx, c, snap, []byte("\n"))
		if !errors.Is(err, errHook) {
			if m != nil {
				m.Kill()
			}
			t.Fatalf("RestoreSnapshot: %v, want the hook's error", err)
		}
		if m != nil {
			t.Errorf("RestoreSnapshot returned a machine with its error")
		}
		assertNoQEMU(t, c.Disks[0].Path)
	})
}

// assertNoQEMU fails when a QEMU process still holds path open.
func assertNoQEMU(t *testing.T, path string) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range procs {
		if target, err := os.Readlink(fd); err == nil && target == path {
			t.Errorf("%s still holds %s open after the failed restore", fd, path)
		}
	}
}

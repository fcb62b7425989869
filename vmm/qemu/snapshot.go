package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pe-project/pe/vmm"
)

// Snapshots: a VM to be saved runs with its RAM in a shared file mapping
// (memory-backend-file, share=on) of the snapshot's mem file, so its memory
// is already on disk when it is paused; the migration that saves it skips
// that RAM (the x-ignore-shared capability) and writes only the device
// state, tens of KiB. A restored VM maps the same file privately
// (share=off): pages are read on demand and copied on write, the file
// never changes, and any number of VMs share its page cache. The device
// state comes in by an incoming migration (-incoming defer, then
// migrate-incoming) into a VM started paused (-S), which cont resumes.

// Names of the steps of the snapshot chains.
const (
	StepSnapshotArgsName = "qemu.SnapshotArgs"
	StepRestoreArgsName  = "qemu.RestoreArgs"
	StepIncomingName     = "qemu.Incoming"
	StepResumeName       = "qemu.Resume"
	StepWakeName         = "qemu.Wake"
)

// qmpSocketName is the QMP socket in the work directory.
const qmpSocketName = "qmp.sock"

// memObjectID names the memory backend object.
const memObjectID = "pe-mem"

// SnapshotArgs returns QEMU's arguments for a VM whose RAM is the file
// memPath, shared (written through, share=on) or private (copy-on-write),
// with a QMP monitor on qmpSocket; incoming adds -S and -incoming defer.
func SnapshotArgs(cfg *vmm.Config, tscKHz int64, memPath string, share bool, qmpSocket string, incoming bool) []string {
	args := Args(cfg, tscKHz)
	for i := range args {
		if i > 0 && args[i-1] == "-M" {
			args[i] += ",memory-backend=" + memObjectID
		}
	}
	shareOpt := "off"
	if share {
		shareOpt = "on"
	}
	args = append(args,
		"-object", "memory-backend-file,id="+memObjectID+",size="+strconv.Itoa(cfg.MemoryMiB)+"M,mem-path="+escape(memPath)+",share="+shareOpt,
		"-qmp", "unix:"+escape(qmpSocket)+",server=on,wait=off",
	)
	if incoming {
		args = append(args, "-S", "-incoming", "defer")
	}
	return args
}

// shellQuote quotes s for /bin/sh, which runs QEMU's exec: migrations.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// ignoreShared is the migration capability that leaves shared RAM out of
// the stream.
var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// SaveSnapshot implements vmm.Snapshotter: it boots cfg with its RAM in
// dir/mem, waits for ready on the console, stops the VM, migrates its
// device state into dir/state and kills it.
func (b *Backend) SaveSnapshot(ctx context.Context, cfg *vmm.Config, dir string, ready []byte) (err error) {
	c := cfg.WithDefaults()
	marker := vmm.NewMarkerWriter(ready)
	if c.Console != nil {
		c.Console = io.MultiWriter(marker, c.Console)
	} else {
		c.Console = marker
	}
	memPath := filepath.Join(dir, vmm.SnapshotMemFile)
	statePath := filepath.Join(dir, vmm.SnapshotStateFile)
	var qmpPath string
	steps := b.stepsWith(vmm.Step{Name: StepSnapshotArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
		qmpPath = filepath.Join(l.WorkDir, qmpSocketName)
		l.Args = SnapshotArgs(l.Config, b.tsc(), memPath, true, qmpPath, false)
		return nil
	}})
	m, err := steps.Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
	if err != nil {
		return err
	}
	defer m.Kill()
	q, err := dialMachineQMP(ctx, qmpPath, m)
	if err != nil {
		return err
	}
	defer q.Close()
	exited := make(chan error, 1)
	go func() { exited <- m.Wait(ctx) }()
	select {
	case <-marker.Seen():
	case err := <-exited:
		if err == nil {
			err = errors.New("the VM stopped")
		}
		return fmt.Errorf("waiting for the guest to be ready: %w; console: %s", err, tail(m.ConsoleLog()))
	case <-ctx.Done():
		return fmt.Errorf("waiting for the guest to be ready: %w; console: %s", ctx.Err(), tail(m.ConsoleLog()))
	}
	if _, err := q.Execute(ctx, "stop", nil); err != nil {
		return err
	}
	if _, err := q.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "exec:cat > " + shellQuote(statePath)}); err != nil {
		return err
	}
	if err := q.WaitMigration(ctx); err != nil {
		return fmt.Errorf("saving the device state: %w", err)
	}
	q.Execute(ctx, "quit", nil) // the connection may close before the reply
	if err := m.Kill(); err != nil {
		return err
	}
	fi, err := os.Stat(statePath)
	if err != nil {
		return fmt.Errorf("device state: %w", err)
	}
	if fi.Size() == 0 {
		return errors.New("device state: QEMU wrote nothing")
	}
	return nil
}

// stateFD is the descriptor a restoring QEMU reads the device state from:
// its first inherited file.
const stateFD = 3

// RestoreSnapshot implements vmm.Snapshotter: it starts QEMU paused with
// dir/mem mapped privately, loads dir/state, resumes the VM and writes wake
// to the serial console (QEMU's standard input).
func (b *Backend) RestoreSnapshot(ctx context.Context, cfg *vmm.Config, dir string, wake []byte) (vmm.Machine, error) {
	c := cfg.WithDefaults()
	memPath := filepath.Join(dir, vmm.SnapshotMemFile)
	statePath := filepath.Join(dir, vmm.SnapshotStateFile)
	for _, p := range []string{memPath, statePath} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer pr.Close() // QEMU has its own copy once started
	var qmpPath string
	var q *QMP
	defer func() {
		if q != nil {
			q.Close()
		}
	}()
	steps := b.stepsWith(vmm.Step{Name: StepRestoreArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
		qmpPath = filepath.Join(l.WorkDir, qmpSocketName)
		l.Args = SnapshotArgs(l.Config, b.tsc(), memPath, false, qmpPath, true)
		l.Stdin = pr
		l.OnCleanup(func() { pw.Close() })
		// QEMU reads the device state from an inherited descriptor: no
		// shell and cat to start, as an exec: URI would.
		state, err := os.Open(statePath)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		l.ExtraFiles = []*os.File{state}
		l.OnCleanup(func() { state.Close() })
		return nil
	}}).Append(
		vmm.Step{Name: StepIncomingName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			var err error
			if q, err = dialMachineQMP(ctx, qmpPath, l.Machine); err != nil {
				return err
			}
			if _, err := q.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
				return err
			}
			if _, err := q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(stateFD)}); err != nil {
				return err
			}
			if err := q.WaitMigration(ctx); err != nil {
				return fmt.Errorf("loading the device state: %w", exitReason(ctx, l.Machine, err))
			}
			return resizeDisks(ctx, q, l.Config.Disks)
		}},
		vmm.Step{Name: StepResumeName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			_, err := q.Execute(ctx, "cont", nil)
			return err
		}},
		vmm.Step{Name: StepWakeName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			if _, err := pw.Write(wake); err != nil {
				return fmt.Errorf("waking the guest: %w", err)
			}
			return nil
		}},
	)
	m, err := steps.Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
	if err != nil {
		pw.Close()
		return nil, err
	}
	return m, nil
}

// resizeDisks tells a restored guest the size of each of its writable
// disks, which may be other files than the snapshot's, of other sizes: its
// kernel kept the sizes it saw before the snapshot. block_resize to the
// file's own size changes no file, and raises a virtio config change, on
// which the guest kernel reads the capacity again. (QEMU refuses requests
// past the end of a file anyway; told, the guest refuses them itself, and
// no failed write-back spoils its later writes.)
func resizeDisks(ctx context.Context, q *QMP, disks []vmm.Disk) error {
	for i, d := range disks {
		if d.ReadOnly {
			continue
		}
		fi, err := os.Stat(d.Path)
		if err != nil {
			return err
		}
		if _, err := q.Execute(ctx, "block_resize", map[string]any{"device": "disk" + strconv.Itoa(i), "size": fi.Size()}); err != nil {
			return fmt.Errorf("disk %s: %w", d.Path, err)
		}
	}
	return nil
}

// Version implements vmm.Snapshotter: QEMU's version ("7.2.22").
func (b *Backend) Version(ctx context.Context) (string, error) {
	path, err := Find(b.Binary)
	if err != nil {
		return "", err
	}
	return Version(ctx, path)
}

// dialMachineQMP dials the QMP socket of m, giving up at once when m's
// QEMU exits (a kernel it cannot load, bad arguments) with its error.
func dialMachineQMP(ctx context.Context, path string, m vmm.Machine) (*QMP, error) {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exited := make(chan error, 1)
	go func() {
		err := m.Wait(dctx)
		if dctx.Err() == nil {
			exited <- err
			cancel()
		}
	}()
	q, err := DialQMP(dctx, path)
	if err == nil {
		return q, nil
	}
	// A connection QEMU reset may be QEMU dying: give it a moment to say so.
	select {
	case werr := <-exited:
		if werr == nil {
			werr = errors.New("QEMU exited")
		}
		return nil, fmt.Errorf("QEMU stopped before its QMP socket answered: %w; console: %s", werr, tail(m.ConsoleLog()))
	case <-ctx.Done():
		return nil, err
	case <-time.After(2 * time.Second):
		return nil, err
	}
}

// exitReason returns the exit error of m when m exits within a moment
// (QEMU exits when an incoming migration fails, and says why on its
// standard error), else err.
func exitReason(ctx context.Context, m vmm.Machine, err error) error {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if werr := m.Wait(wctx); wctx.Err() == nil && werr != nil {
		return werr
	}
	return err
}

// stepsWith returns the start-up chain (b.Steps or DefaultSteps) with a
// work directory and argStep in place of the argument step.
func (b *Backend) stepsWith(argStep vmm.Step) vmm.Steps {
	steps := b.Steps
	if steps == nil {
		steps = b.DefaultSteps()
	}
	if !steps.Has(vmm.StepWorkDir.Name) {
		steps = steps.InsertAfter(StepBinaryName, vmm.StepWorkDir)
	}
	return steps.Replace(StepArgsName, argStep)
}

func (b *Backend) tsc() int64 {
	if b.TSCKHz != nil {
		return b.TSCKHz()
	}
	return vmm.HostTSCKHz()
}

// tail returns the last lines of a console, on one line.
func tail(console []byte) string {
	lines := strings.Split(strings.TrimSpace(string(console)), "\n")
	if len(lines) > 3 {
		lines = lines[len(lines)-3:]
	}
	return strings.Join(lines, " | ")
}

var _ vmm.Snapshotter = (*Backend)(nil)

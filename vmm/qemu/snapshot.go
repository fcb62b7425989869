package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

// memObjectID names the memory backend object.
const memObjectID = "pe-mem"

// SnapshotArgs returns QEMU's arguments, unconfined, for a VM whose RAM is
// the file memPath, shared (written through, share=on) or private
// (copy-on-write), with a QMP monitor on the inherited socket qmpFD;
// incoming adds -S and -incoming defer.
func SnapshotArgs(cfg *vmm.Config, tscKHz int64, memPath string, share bool, qmpFD int, incoming bool) []string {
	return snapshotArgs(Args(cfg, tscKHz), cfg, memPath, share, qmpFD, incoming)
}

// snapshotArgs adds to a machine's arguments args its RAM in memPath and
// the QMP monitor.
func snapshotArgs(args []string, cfg *vmm.Config, memPath string, share bool, qmpFD int, incoming bool) []string {
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
		// A connected socket QEMU inherits: no socket file to create,
		// nothing for a confined QEMU to see.
		"-chardev", "socket,id=qmp,fd="+strconv.Itoa(qmpFD)+",server=off",
		"-mon", "chardev=qmp,mode=control",
	)
	if incoming {
		args = append(args, "-S", "-incoming", "defer")
	}
	return args
}

// ignoreShared is the migration capability that leaves shared RAM out of
// the stream.
var ignoreShared = map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}

// SaveSnapshot implements vmm.Snapshotter: it boots cfg with its RAM in
// dir/mem, waits for ready on the console, stops the VM, migrates its
// device state into dir/state and kills it.
//
// The device state goes to a descriptor pe passes over QMP (getfd): an
// exec: migration would need a shell, which the sandbox forbids. A
// confined QEMU maps dir/mem through a descriptor too, and owns the file
// while it saves (it opens it again, for writing, as its own user); pe
// takes it back afterwards.
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
	var (
		conn   *net.UnixConn
		theirs *os.File
		// made: pe made the memory file; lent: to QEMU's user.
		made, lent bool
	)
	defer func() {
		// Runs after the Kill below: QEMU is gone.
		if lent {
			if cerr := os.Chown(memPath, os.Geteuid(), os.Getegid()); cerr != nil && err == nil {
				err = fmt.Errorf("taking the memory file back: %w", cerr)
			}
		}
		if made {
			os.Chmod(memPath, 0o644) // as QEMU makes it, unconfined
		}
	}()
	steps := b.stepsWith(vmm.Step{Name: StepSnapshotArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
		a, err := b.confine(l)
		if err != nil {
			return err
		}
		t := fdTable{l}
		qfd, qc, th, err := qmpPair(t)
		if err != nil {
			return err
		}
		conn, theirs = qc, th
		mem := memPath
		if l.Jail != nil {
			f, err := os.OpenFile(memPath, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
			if err != nil {
				return fmt.Errorf("snapshot memory: %w", err)
			}
			made = true
			if l.Jail.UID != 0 {
				lent = true
				if err := f.Chown(l.Jail.UID, l.Jail.GID); err != nil {
					f.Close()
					return fmt.Errorf("snapshot memory: %w", err)
				}
			}
			mem = procFD(t.add(f))
		}
		l.Args = append(b.prefix(), snapshotArgs(argsWith(l.Config, b.tsc(), a), l.Config, mem, true, qfd, false)...)
		return nil
	}})
	m, err := steps.Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
	if err != nil {
		return err
	}
	defer m.Kill()
	theirs.Close()
	q, err := connectQMP(ctx, conn, m)
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
	state, err := os.OpenFile(statePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("device state: %w", err)
	}
	defer state.Close()
	if err := q.SendFile(ctx, "state", state); err != nil {
		return err
	}
	if _, err := q.Execute(ctx, "migrate", map[string]any{"uri": "fd:state"}); err != nil {
		return err
	}
	if err := q.WaitMigration(ctx); err != nil {
		return fmt.Errorf("saving the device state: %w", err)
	}
	q.Execute(ctx, "quit", nil) // the connection may close before the reply
	if err := m.Kill(); err != nil {
		return err
	}
	fi, err := state.Stat()
	if err != nil {
		return fmt.Errorf("device state: %w", err)
	}
	if fi.Size() == 0 {
		return errors.New("device state: QEMU wrote nothing")
	}
	return nil
}

// RestoreSnapshot implements vmm.Snapshotter: it starts QEMU paused with
// dir/mem mapped privately, loads dir/state, resumes the VM and writes wake
// to the serial console (QEMU's standard input).
//
// QEMU 7.2 opens the memory file for writing even to map it privately, so
// a confined QEMU, whose user may not write the snapshot, gets a sealed
// in-memory copy of it (sealedCopy: the pages that are not zero), which it
// can map but never change; the snapshot itself stays out of its reach.
// The device state comes in through an inherited descriptor: no shell and
// cat to start, as an exec: URI would.
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
	var (
		conn      *net.UnixConn
		theirs    *os.File
		stateFD   int
		q         *QMP
		memCopied func() error
	)
	defer func() {
		if q != nil {
			q.Close()
		}
	}()
	steps := b.stepsWith(vmm.Step{Name: StepRestoreArgsName, Fn: func(ctx context.Context, l *vmm.Launch) error {
		a, err := b.confine(l)
		if err != nil {
			return err
		}
		t := fdTable{l}
		l.Stdin = pr
		l.OnCleanup(func() { pw.Close() })
		qfd, qc, th, err := qmpPair(t)
		if err != nil {
			return err
		}
		conn, theirs = qc, th
		if stateFD, err = t.open(statePath, os.O_RDONLY); err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		mem := memPath
		if l.Jail != nil {
			src, err := os.Open(memPath)
			if err != nil {
				return fmt.Errorf("snapshot: %w", err)
			}
			// The copy runs while QEMU starts; the incoming step waits
			// for it before QEMU reads the memory.
			cp, wait, err := startSealedCopy("pe-mem", src)
			if err != nil {
				return fmt.Errorf("snapshot memory: %w", err)
			}
			mem = procFD(t.add(cp))
			memCopied = wait
			l.OnCleanup(func() { wait() }) // before cp is closed
		}
		l.Args = append(b.prefix(), snapshotArgs(argsWith(l.Config, b.tsc(), a), l.Config, mem, false, qfd, true)...)
		return nil
	}}).Append(
		vmm.Step{Name: StepIncomingName, Fn: func(ctx context.Context, l *vmm.Launch) error {
			theirs.Close()
			var err error
			if q, err = connectQMP(ctx, conn, l.Machine); err != nil {
				return err
			}
			if _, err := q.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
				return err
			}
			// Loading the device state reads guest memory (virtio
			// rings): the copy must be complete and sealed.
			if memCopied != nil {
				if err := memCopied(); err != nil {
					return fmt.Errorf("snapshot memory: %w", err)
				}
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

// connectQMP starts a QMP session on conn, QEMU's monitor, giving up at
// once when m's QEMU exits (a kernel it cannot load, bad arguments) with
// its error.
func connectQMP(ctx context.Context, conn *net.UnixConn, m vmm.Machine) (*QMP, error) {
	q, err := NewQMP(ctx, conn)
	if err == nil {
		return q, nil
	}
	// End-of-file is QEMU dying: give it a moment to say why.
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if werr := m.Wait(wctx); wctx.Err() == nil {
		if werr == nil {
			werr = errors.New("QEMU exited")
		}
		return nil, fmt.Errorf("QEMU stopped before its monitor answered: %w; console: %s", werr, tail(m.ConsoleLog()))
	}
	return nil, err
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

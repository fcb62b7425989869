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
	StepDiskSizesName    = "qemu.DiskSizes"
	StepResumeName       = "qemu.Resume"
	StepWakeName         = "qemu.Wake"
)

// memObjectID names the memory backend object.
const memObjectID = "pe-mem"

// snapshotArgs adds to a machine's arguments args its RAM, the file
// memPath, shared (written through, share=on) or private (copy-on-write),
// and a QMP monitor on the inherited socket qmpFD; incoming adds -S and
// -incoming defer.
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
	s := &save{
		b:         b,
		memPath:   filepath.Join(dir, vmm.SnapshotMemFile),
		statePath: filepath.Join(dir, vmm.SnapshotStateFile),
		marker:    vmm.NewMarkerWriter(ready),
	}
	c := cfg.WithDefaults()
	if c.Console != nil {
		c.Console = io.MultiWriter(s.marker, c.Console)
	} else {
		c.Console = s.marker
	}
	defer s.takeMemBack(&err) // runs after the Kill below: QEMU is gone
	steps := b.stepsWith(vmm.Step{Name: StepSnapshotArgsName, Fn: s.args})
	m, err := steps.Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
	if err != nil {
		return err
	}
	defer m.Kill()
	s.theirs.Close()
	q, err := connectQMP(ctx, s.conn, m)
	if err != nil {
		return err
	}
	defer q.Close()
	if err := s.waitReady(ctx, m); err != nil {
		return err
	}
	return s.saveState(ctx, q, m)
}

// save is one SaveSnapshot: what its steps share.
type save struct {
	b                  *Backend
	memPath, statePath string
	// marker sees ready on the console.
	marker *vmm.MarkerWriter
	// conn is pe's end of the QMP socket pair, theirs QEMU's.
	conn   *net.UnixConn
	theirs *os.File
	// made: pe made the memory file; lent: to QEMU's user.
	made, lent bool
}

// args is the argument step: QEMU's arguments, its confinement, the QMP
// socket pair and, confined, the memory file passed as a descriptor.
func (s *save) args(ctx context.Context, l *vmm.Launch) error {
	a, err := s.b.confine(l)
	if err != nil {
		return err
	}
	t := fdTable{l}
	qfd, qc, th, err := qmpPair(t)
	if err != nil {
		return err
	}
	s.conn, s.theirs = qc, th
	mem := s.memPath
	if l.Jail != nil {
		if mem, err = s.lendMem(t, l.Jail.UID, l.Jail.GID); err != nil {
			return err
		}
	}
	l.Args = append(s.b.prefix(), snapshotArgs(argsWith(l.Config, s.b.tsc(), a), l.Config, mem, true, qfd, false)...)
	return nil
}

// lendMem makes the memory file for a confined QEMU, owned by its user
// uid (unless root), and returns the path QEMU opens it by.
func (s *save) lendMem(t fdTable, uid, gid int) (string, error) {
	f, err := os.OpenFile(s.memPath, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return "", fmt.Errorf("snapshot memory: %w", err)
	}
	s.made = true
	if uid != 0 {
		s.lent = true
		if err := f.Chown(uid, gid); err != nil {
			f.Close()
			return "", fmt.Errorf("snapshot memory: %w", err)
		}
	}
	return procFD(t.add(f)), nil
}

// takeMemBack gives the memory file back to pe's user, with the mode
// QEMU gives it unconfined, once QEMU is gone; its error goes to *err
// unless that is set.
func (s *save) takeMemBack(err *error) {
	if s.lent {
		if cerr := os.Chown(s.memPath, os.Geteuid(), os.Getegid()); cerr != nil && *err == nil {
			*err = fmt.Errorf("taking the memory file back: %w", cerr)
		}
	}
	if s.made {
		os.Chmod(s.memPath, 0o644) // as QEMU makes it, unconfined
	}
}

// waitReady waits until the guest writes the ready marker on its console.
func (s *save) waitReady(ctx context.Context, m vmm.Machine) error {
	exited := make(chan error, 1)
	go func() { exited <- m.Wait(ctx) }()
	select {
	case <-s.marker.Seen():
		return nil
	case err := <-exited:
		if err == nil {
			err = errors.New("the VM stopped")
		}
		return fmt.Errorf("waiting for the guest to be ready: %w; console: %s", err, tail(m.ConsoleLog()))
	case <-ctx.Done():
		return fmt.Errorf("waiting for the guest to be ready: %w; console: %s", ctx.Err(), tail(m.ConsoleLog()))
	}
}

// saveState stops the VM, migrates its device state (without the shared
// RAM) into the state file, and kills QEMU.
func (s *save) saveState(ctx context.Context, q *QMP, m vmm.Machine) error {
	if _, err := q.Execute(ctx, "stop", nil); err != nil {
		return err
	}
	if _, err := q.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	state, err := os.OpenFile(s.statePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
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
	r := &restore{
		b:         b,
		memPath:   filepath.Join(dir, vmm.SnapshotMemFile),
		statePath: filepath.Join(dir, vmm.SnapshotStateFile),
		wake:      wake,
	}
	for _, p := range []string{r.memPath, r.statePath} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
	}
	var err error
	if r.pr, r.pw, err = os.Pipe(); err != nil {
		return nil, err
	}
	defer r.close()
	m, err := r.steps().Run(ctx, &vmm.Launch{Config: c, VMM: Name, Log: c.Log})
	if err != nil {
		r.pw.Close()
		return nil, err
	}
	return m, nil
}

// restore is one RestoreSnapshot: what its steps share.
type restore struct {
	b                  *Backend
	memPath, statePath string
	wake               []byte
	// pr is QEMU's standard input, the guest's serial console; pe writes
	// wake into pw.
	pr, pw *os.File
	// conn is pe's end of the QMP socket pair, theirs QEMU's; q is the
	// QMP session on conn.
	conn   *net.UnixConn
	theirs *os.File
	q      *QMP
	// stateFD is QEMU's descriptor of the state file.
	stateFD int
	// memCopied, when set, waits for the sealed copy of the memory.
	memCopied func() error
}

// steps is the restore chain: the start-up chain with the restore's
// arguments, then the incoming migration, the caller's last word
// (Config.BeforeResume), the writable disks' sizes, the resume and the
// wake-up.
func (r *restore) steps() vmm.Steps {
	return r.b.stepsWith(vmm.Step{Name: StepRestoreArgsName, Fn: r.args}).Append(
		vmm.Step{Name: StepIncomingName, Fn: r.incoming},
		vmm.StepBeforeResume,
		vmm.Step{Name: StepDiskSizesName, Fn: r.diskSizes},
		vmm.Step{Name: StepResumeName, Fn: r.resume},
		vmm.Step{Name: StepWakeName, Fn: r.wakeGuest},
	)
}

// close releases what pe holds once the restore is done or has failed:
// QEMU has its own copy of pr once started.
func (r *restore) close() {
	if r.q != nil {
		r.q.Close()
	}
	r.pr.Close()
}

// args is the argument step: QEMU's arguments, its confinement, its
// standard input, the QMP socket pair, the state file and, confined, the
// sealed copy of the memory, all passed as descriptors.
func (r *restore) args(ctx context.Context, l *vmm.Launch) error {
	a, err := r.b.confine(l)
	if err != nil {
		return err
	}
	t := fdTable{l}
	l.Stdin = r.pr
	l.OnCleanup(func() { r.pw.Close() })
	qfd, qc, th, err := qmpPair(t)
	if err != nil {
		return err
	}
	r.conn, r.theirs = qc, th
	if r.stateFD, err = t.open(r.statePath, os.O_RDONLY); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	mem := r.memPath
	if l.Jail != nil {
		if mem, err = r.copyMem(t, l); err != nil {
			return err
		}
	}
	l.Args = append(r.b.prefix(), snapshotArgs(argsWith(l.Config, r.b.tsc(), a), l.Config, mem, false, qfd, true)...)
	return nil
}

// copyMem starts the sealed copy of the memory for a confined QEMU and
// returns the path QEMU opens it by. The copy runs while QEMU starts; the
// incoming step waits for it before QEMU reads the memory.
func (r *restore) copyMem(t fdTable, l *vmm.Launch) (string, error) {
	src, err := os.Open(r.memPath)
	if err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	cp, wait, err := startSealedCopy("pe-mem", src)
	if err != nil {
		return "", fmt.Errorf("snapshot memory: %w", err)
	}
	mem := procFD(t.add(cp))
	r.memCopied = wait
	l.OnCleanup(func() { wait() }) // before cp is closed
	return mem, nil
}

// incoming is the incoming-migration step: it connects QMP and loads the
// device state.
func (r *restore) incoming(ctx context.Context, l *vmm.Launch) error {
	r.theirs.Close()
	var err error
	if r.q, err = connectQMP(ctx, r.conn, l.Machine); err != nil {
		return err
	}
	if _, err := r.q.Execute(ctx, "migrate-set-capabilities", ignoreShared); err != nil {
		return err
	}
	// Loading the device state reads guest memory (virtio rings): the
	// copy must be complete and sealed.
	if r.memCopied != nil {
		if err := r.memCopied(); err != nil {
			return fmt.Errorf("snapshot memory: %w", err)
		}
	}
	if _, err := r.q.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(r.stateFD)}); err != nil {
		return err
	}
	if err := r.q.WaitMigration(ctx); err != nil {
		return fmt.Errorf("loading the device state: %w", exitReason(ctx, l.Machine, err))
	}
	return nil
}

// diskSizes is the disk-size step: it tells the guest its writable disks'
// sizes, as their files are now.
func (r *restore) diskSizes(ctx context.Context, l *vmm.Launch) error {
	return resizeDisks(ctx, r.q, l.Config.Disks)
}

// resume is the resume step: the paused VM runs.
func (r *restore) resume(ctx context.Context, l *vmm.Launch) error {
	_, err := r.q.Execute(ctx, "cont", nil)
	return err
}

// wakeGuest is the wake step: wake goes to the guest's serial console.
func (r *restore) wakeGuest(ctx context.Context, l *vmm.Launch) error {
	if _, err := r.pw.Write(r.wake); err != nil {
		return fmt.Errorf("waking the guest: %w", err)
	}
	return nil
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

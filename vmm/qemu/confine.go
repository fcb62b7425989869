package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/jail"
)

// SandboxOptions turn on QEMU's seccomp filter: no obsolete system calls,
// no set*id, no fork or exec (so no exec: migration, no helper scripts),
// no scheduler or resource-limit changes.
const SandboxOptions = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// ConfineEnv is the environment variable that turns confinement off when
// set to 0, false or off: a debugging aid, and the reference the cost of
// confinement is measured against (docs/benchmarks.md).
const ConfineEnv = "PE_QEMU_CONFINE"

// Confinement says what confines the QEMU processes of a backend.
type Confinement struct {
	// Sandbox is QEMU's seccomp filter (-sandbox SandboxOptions).
	Sandbox bool
	// Jail is the jail package's confinement: own mount, PID, network,
	// IPC and UTS namespaces, a private root, user jail.UID, files passed
	// as descriptors. It needs pe to run as root.
	Jail bool
	// UserNS says the jail is in a user namespace, as pe's user without
	// capabilities, instead of as jail.UID (pe is not root).
	UserNS bool
	// Reason says why something is off, "" when everything is on.
	Reason string
}

// String describes c in a few words, for logs and pe doctor.
func (c Confinement) String() string {
	var s string
	switch {
	case c.Jail && c.UserNS:
		s = "seccomp sandbox, own user/mount/PID/network/IPC/UTS namespaces, private root, no capabilities"
	case c.Jail && c.Sandbox:
		s = fmt.Sprintf("seccomp sandbox, own mount/PID/network/IPC/UTS namespaces, private root, uid %d", jail.UID)
	case c.Sandbox:
		s = "seccomp sandbox only"
	default:
		s = "none"
	}
	if c.Reason != "" {
		s += " (" + c.Reason + ")"
	}
	return s
}

// confineOff reports whether the environment turns confinement off.
func confineOff() bool {
	switch strings.ToLower(os.Getenv(ConfineEnv)) {
	case "0", "false", "off", "no":
		return true
	}
	return false
}

// Confinement returns what confines this backend's QEMU processes.
func (b *Backend) Confinement() Confinement {
	if b.NoConfine {
		return Confinement{Reason: "turned off by " + ConfineEnv + "=0"}
	}
	switch level, why := jail.Available(); level {
	case jail.LevelFull:
		return Confinement{Sandbox: true, Jail: true}
	case jail.LevelUserNS:
		return Confinement{Sandbox: true, Jail: true, UserNS: true, Reason: why}
	default:
		return Confinement{Sandbox: true, Reason: why}
	}
}

// access says how QEMU reaches the files of a machine: the paths or
// descriptor references its arguments name, and the -add-fd options that
// come first.
type access struct {
	kernel, initramfs string
	disks             []string
	addFD             []string
	// stream is the data channel's socket descriptor, "" for none.
	stream string
}

// pathAccess names every file by its host path; NBD sockets are passed
// as descriptors all the same (see nbdFD).
func pathAccess(cfg *vmm.Config, t fdTable) (access, error) {
	a := access{kernel: cfg.Kernel, initramfs: cfg.Initramfs}
	for _, d := range cfg.Disks {
		if d.NBD == nil {
			a.disks = append(a.disks, d.Path)
			continue
		}
		fd, err := nbdFD(d, t)
		if err != nil {
			return a, err
		}
		a.disks = append(a.disks, fd)
	}
	return a, streamFD(cfg, &a, t)
}

// streamFD passes a copy of cfg's data channel socket, if any, to QEMU
// (the caller keeps cfg.Stream) and sets a.stream to its number there.
func streamFD(cfg *vmm.Config, a *access, t fdTable) error {
	if cfg.Stream == nil {
		return nil
	}
	fd, err := unix.FcntlInt(cfg.Stream.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("data channel socket: %w", err)
	}
	a.stream = strconv.Itoa(t.add(os.NewFile(uintptr(fd), "stream")))
	return nil
}

// nbdFD passes a copy of d's NBD socket to QEMU (the caller keeps d.NBD)
// and returns its descriptor number there, the str of QEMU's socket
// address of type fd: parsing its command line, with no monitor command
// running, QEMU takes a number there for an inherited descriptor.
func nbdFD(d vmm.Disk, t fdTable) (string, error) {
	fd, err := unix.FcntlInt(d.NBD.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("NBD socket of export %q: %w", d.Export, err)
	}
	return strconv.Itoa(t.add(os.NewFile(uintptr(fd), "nbd"))), nil
}

// fdTable hands files to QEMU as inherited descriptors (3, 4, ...); the
// files are closed once the machine is gone.
type fdTable struct{ l *vmm.Launch }

// add passes f to QEMU and returns its descriptor number there.
func (t fdTable) add(f *os.File) int {
	t.l.ExtraFiles = append(t.l.ExtraFiles, f)
	t.l.OnCleanup(func() { f.Close() })
	return 2 + len(t.l.ExtraFiles)
}

// procFD is the path through which QEMU opens its inherited descriptor fd.
func procFD(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// open opens path with flag and passes it to QEMU.
func (t fdTable) open(path string, flag int) (int, error) {
	f, err := os.OpenFile(path, flag|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	return t.add(f), nil
}

// readable passes path to QEMU for reading by path (-kernel, -initrd),
// as /proc/self/fd/N. Opening that link checks the file's permissions
// again, against QEMU's user: a file others may not read is passed as a
// sealed in-memory copy instead.
func (t fdTable) readable(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return "", err
	}
	if fi.Mode().Perm()&0o004 == 0 {
		c, err := sealedCopy("pe-file", f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("copying %s for QEMU: %w", path, err)
		}
		f = c
	}
	return procFD(t.add(f)), nil
}

// fdAccess passes the kernel, the initramfs and the disks as descriptors
// (NBD disks as their sockets, see nbdFD; file disks as follows):
// read-only disks as an fd set holding one read-only descriptor,
// read-write disks as a set holding a read-only and a read-write one
// (QEMU's block layer opens an image read-only first and reopens it for
// writing once a device asks for it).
func fdAccess(cfg *vmm.Config, t fdTable) (access, error) {
	var a access
	var err error
	if a.kernel, err = t.readable(cfg.Kernel); err != nil {
		return a, fmt.Errorf("kernel: %w", err)
	}
	if cfg.Initramfs != "" {
		if a.initramfs, err = t.readable(cfg.Initramfs); err != nil {
			return a, fmt.Errorf("initramfs: %w", err)
		}
	}
	for i, d := range cfg.Disks {
		if d.NBD != nil {
			fd, err := nbdFD(d, t)
			if err != nil {
				return a, err
			}
			a.disks = append(a.disks, fd)
			continue
		}
		set := strconv.Itoa(i + 1)
		flags := []int{os.O_RDONLY}
		if !d.ReadOnly {
			flags = append(flags, os.O_RDWR)
		}
		for _, fl := range flags {
			fd, err := t.open(d.Path, fl)
			if err != nil {
				return a, fmt.Errorf("disk: %w", err)
			}
			a.addFD = append(a.addFD, "-add-fd", "fd="+strconv.Itoa(fd)+",set="+set)
		}
		a.disks = append(a.disks, "/dev/fdset/"+set)
	}
	return a, streamFD(cfg, &a, t)
}

// jailSpec returns the jail for a machine of cfg, its mount point a new
// directory in the work directory (removed with the machine).
func jailSpec(l *vmm.Launch, userNS bool) (*jail.Spec, error) {
	root, err := os.MkdirTemp(l.WorkDir, "root-")
	if err != nil {
		return nil, fmt.Errorf("jail root: %w", err)
	}
	l.OnCleanup(func() { os.RemoveAll(root) })
	kvm := l.Config.Accel == vmm.AccelKVM
	devices := jail.Devices(kvm)
	// Under TCG, QEMU asks for huge pages for the code it translates
	// (tens of MB in a compiler's run), which the vCPU thread faults in
	// as it writes it, 2 MiB at a time, zeroed. On a host whose memory is
	// itself backed lazily (a cloud VM whose balloon takes free memory
	// back, where TCG is what runs) a huge page is often new to the
	// hypervisor too, and faulting one in took up to 11 ms here: up to
	// 350 ms of a run. With small pages QEMU faults in only what it
	// writes, mostly memory the kernel has at hand. Under KVM the guest's
	// RAM is what benefits from huge pages: kept.
	if userNS {
		// pe's own user and groups: /dev/kvm works if pe could open it.
		return &jail.Spec{Root: root, Devices: devices, UserNS: true, NoHugePages: !kvm}, nil
	}
	return &jail.Spec{Root: root, Devices: devices, UID: jail.UID, GID: jail.GID, Groups: jail.DeviceGroups(devices), NoHugePages: !kvm}, nil
}

// qmpPair makes the QMP connection: a socket pair whose one end QEMU
// inherits (its monitor's chardev), the other pe's client. It returns the
// descriptor QEMU gets, pe's end, and QEMU's end, which the caller closes
// once QEMU has started (so pe reads end-of-file when QEMU dies).
func qmpPair(t fdTable) (int, *net.UnixConn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("QMP socket pair: %w", err)
	}
	mine := os.NewFile(uintptr(fds[0]), "qmp")
	theirs := os.NewFile(uintptr(fds[1]), "qmp-qemu")
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return 0, nil, nil, fmt.Errorf("QMP socket pair: %w", err)
	}
	t.l.OnCleanup(func() { c.Close() })
	return t.add(theirs), c.(*net.UnixConn), theirs, nil
}

// sealedCopy copies src into a sealed memfd: a file QEMU may open for
// writing and map privately (copy-on-write) but can never change, grow or
// shrink. Holes and all-zero pages are left out: they read as zeros.
func sealedCopy(name string, src *os.File) (*os.File, error) {
	fi, err := src.Stat()
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd: %w", err)
	}
	dst := os.NewFile(uintptr(fd), name)
	if err := copySparse(dst, src, fi.Size()); err != nil {
		dst.Close()
		return nil, err
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(dst.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		dst.Close()
		return nil, fmt.Errorf("sealing the memfd: %w", err)
	}
	return dst, nil
}

// startSealedCopy is sealedCopy in the background: the memfd it returns
// has its final size at once, so QEMU can map it while the data is still
// being copied; wait returns once the copy is done and sealed (or failed),
// and must be called before the guest or QEMU reads the memory. It takes
// src over.
func startSealedCopy(name string, src *os.File) (*os.File, func() error, error) {
	fi, err := src.Stat()
	if err != nil {
		src.Close()
		return nil, nil, err
	}
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		src.Close()
		return nil, nil, fmt.Errorf("memfd: %w", err)
	}
	dst := os.NewFile(uintptr(fd), name)
	if err := dst.Truncate(fi.Size()); err != nil {
		src.Close()
		dst.Close()
		return nil, nil, err
	}
	done := make(chan error, 1)
	go func() {
		defer src.Close()
		if err := copySparse(dst, src, fi.Size()); err != nil {
			done <- err
			return
		}
		seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
		if _, err := unix.FcntlInt(dst.Fd(), unix.F_ADD_SEALS, seals); err != nil {
			done <- fmt.Errorf("sealing the memfd: %w", err)
			return
		}
		done <- nil
	}()
	var result error
	waited := false
	wait := func() error {
		if !waited {
			result, waited = <-done, true
		}
		return result
	}
	return dst, wait, nil
}

// copySparse makes dst a copy of the first size bytes of src, writing only
// the pages of src's data extents that are not all zeros.
func copySparse(dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	const page = 4096
	buf := make([]byte, 1<<20)
	zero := make([]byte, page)
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		} else if err != nil {
			data = off // no SEEK_DATA: copy everything
		}
		end, err := unix.Seek(int(src.Fd()), data, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		for pos := data; pos < end; {
			n := int(min(int64(len(buf)), end-pos))
			if _, err := src.ReadAt(buf[:n], pos); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			// Write each run of non-zero pages with one call.
			for i := 0; i < n; {
				if bytes.Equal(buf[i:min(i+page, n)], zero[:min(page, n-i)]) {
					i += page
					continue
				}
				j := i
				for j < n && !bytes.Equal(buf[j:min(j+page, n)], zero[:min(page, n-j)]) {
					j += page
				}
				j = min(j, n)
				if _, err := dst.WriteAt(buf[i:j], pos+int64(i)); err != nil {
					return err
				}
				i = j
			}
			pos += int64(n)
		}
		off = end
	}
	return nil
}

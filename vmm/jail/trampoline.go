package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// init turns the process into the trampoline when it was started as one
// (argv[0] is Argv0): it never returns then. It runs before the packages
// that import this one initialise, and before main or a test's main.
func init() {
	if len(os.Args) == 0 || os.Args[0] != Argv0 {
		return
	}
	err := trampoline()
	// Only a failure returns; the VMM's standard error is pe's copy of
	// the message.
	fmt.Fprintf(os.Stderr, "%s: %v\n", Argv0, err)
	os.Exit(126)
}

// trampoline reads the spec, builds the private root, drops privileges and
// executes the VMM.
func trampoline() error {
	var s Spec
	if err := json.Unmarshal([]byte(os.Getenv(specEnv)), &s); err != nil {
		return fmt.Errorf("bad %s: %w", specEnv, err)
	}
	// no_new_privs and the parent-death signal belong to the thread that
	// calls execve.
	runtime.LockOSThread()
	if err := privateRoot(&s); err != nil {
		return err
	}
	// Inherited across execve, so the VMM's every mapping goes without.
	// Best effort: a kernel that refuses it only costs the VMM time.
	if s.NoHugePages {
		unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if err := dropPrivileges(&s); err != nil {
		return err
	}
	if s.UserNS {
		if err := dropCapabilities(); err != nil {
			return err
		}
	}
	// Changing user cleared the parent-death signal: arm it again, then
	// make sure pe did not die in between.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("parent-death signal: %w", err)
	}
	if s.AliveFD > 0 {
		fds := []unix.PollFd{{Fd: int32(s.AliveFD), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 0); err != nil {
			return fmt.Errorf("alive pipe: %w", err)
		} else if n > 0 {
			return errors.New("pe is gone")
		}
		unix.Close(s.AliveFD)
	}
	// Descriptors pe did not mean to pass (inherited by pe itself without
	// close-on-exec) stay out of the VMM. Kernels before 5.11 lack
	// close_range: they keep them, as an unconfined VMM would.
	unix.CloseRange(uint(max(s.AliveFD, 2)+1), ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	argv := append([]string{s.Binary}, s.Args...)
	err := syscall.Exec(s.Binary, argv, []string{"PATH=/usr/bin:/bin"})
	return fmt.Errorf("exec %s: %w", s.Binary, err)
}

// privateRoot mounts a tmpfs on s.Root, binds the system files, the
// device nodes and the VMM binary into it read-only, pivots into it and
// mounts a /proc that shows only the VMM's PID namespace.
func privateRoot(s *Spec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	root := s.Root
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID, "mode=0755,size=64k,nr_inodes=256"); err != nil {
		return fmt.Errorf("private root: %w", err)
	}
	var binds []string
	for _, p := range systemPaths {
		fi, err := os.Lstat(p)
		switch {
		case err != nil:
			continue
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, filepath.Join(root, p)); err != nil {
				return fmt.Errorf("private root: %w", err)
			}
		case fi.IsDir():
			binds = append(binds, p)
		}
	}
	for _, p := range systemFiles {
		if _, err := os.Stat(p); err == nil {
			binds = append(binds, p)
		}
	}
	if d := binaryDir(s.Binary); d != "" {
		binds = append(binds, d)
	}
	for _, p := range binds {
		if err := bind(p, filepath.Join(root, p), true); err != nil {
			return err
		}
	}
	for _, d := range s.Devices {
		if err := bind(d, filepath.Join(root, d), false); err != nil {
			return err
		}
	}
	// /proc is mounted before the host's root goes: in a user namespace
	// the kernel allows a new proc mount only while a full one is
	// visible. subset=pid leaves out /proc/sys and the other system-wide
	// files; kernels before 5.8 do not know it.
	proc := filepath.Join(root, "proc")
	if err := os.Mkdir(proc, 0o555); err != nil {
		return err
	}
	const procFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("proc", proc, "proc", procFlags, "subset=pid"); err != nil {
		if err := unix.Mount("proc", proc, "proc", procFlags, ""); err != nil {
			return fmt.Errorf("mounting /proc: %w", err)
		}
	}
	old := filepath.Join(root, ".old")
	if err := os.Mkdir(old, 0o700); err != nil {
		return fmt.Errorf("private root: %w", err)
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	if err := os.Remove("/.old"); err != nil {
		return err
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID, ""); err != nil {
		return fmt.Errorf("making the private root read-only: %w", err)
	}
	return unix.Sethostname([]byte("pe-vmm"))
}

// bind binds src on dst (created as an empty directory or file first),
// read-only and without set-user-ID when ro is set (device nodes keep
// their device access).
func bind(src, dst string, ro bool) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("private root: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("private root: %w", err)
	}
	if fi.IsDir() {
		err = os.Mkdir(dst, 0o755)
	} else {
		var f *os.File
		if f, err = os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		}
	}
	if err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("private root: %w", err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding %s: %w", src, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOSUID)
	if ro {
		flags |= unix.MS_RDONLY | unix.MS_NODEV
	}
	// Keep the flags the source mount has: in a user namespace they are
	// locked, and a remount that drops one fails. (The ST_ flags have the
	// MS_ flags' values.)
	var st unix.Statfs_t
	if err := unix.Statfs(dst, &st); err == nil {
		keep := int64(unix.ST_RDONLY | unix.ST_NOSUID | unix.ST_NODEV | unix.ST_NOEXEC | unix.ST_NOATIME | unix.ST_NODIRATIME | unix.ST_RELATIME)
		flags |= uintptr(st.Flags & keep)
	}
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("binding %s read-only: %w", src, err)
	}
	return nil
}

// Securebits (linux/securebits.h) that stop uid 0 from regaining
// capabilities at execve, and ambient capabilities from being raised,
// for good.
const (
	secbitNoRoot                = 1 << 0
	secbitNoRootLocked          = 1 << 1
	secbitNoCapAmbientRaise     = 1 << 6
	secbitNoCapAmbientRaiseLock = 1 << 7
)

// dropCapabilities makes the user namespace's root an ordinary user for
// what it executes: the VMM starts with no capability, even in the
// namespace.
func dropCapabilities() error {
	bits := secbitNoRoot | secbitNoRootLocked | secbitNoCapAmbientRaise | secbitNoCapAmbientRaiseLock
	if err := unix.Prctl(unix.PR_SET_SECUREBITS, uintptr(bits), 0, 0, 0); err != nil {
		return fmt.Errorf("securebits: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("dropping capabilities: %w", err)
	}
	return nil
}

// dropPrivileges becomes s.UID:s.GID with s.Groups, losing every
// capability, when s.UID is not 0.
func dropPrivileges(s *Spec) error {
	if s.UID == 0 {
		return nil
	}
	// Go's set*id calls change every thread of the process.
	if err := syscall.Setgroups(s.Groups); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setresgid(s.GID, s.GID, s.GID); err != nil {
		return fmt.Errorf("setresgid: %w", err)
	}
	if err := syscall.Setresuid(s.UID, s.UID, s.UID); err != nil {
		return fmt.Errorf("setresuid: %w", err)
	}
	return nil
}

// Package jail starts a VMM confined: in new mount, PID, network, IPC and
// UTS namespaces, in a private root that holds only the system files the
// VMM needs, as an unprivileged user with no_new_privs.
//
// Go cannot run code between clone and exec, so the confinement is done by
// a trampoline: the running binary (pe, or a test binary that links this
// package) is executed again through /proc/self/exe with argv[0] set to
// [Argv0]. This package's init function recognises it, builds the private
// root, pivots into it, drops privileges and executes the VMM, which
// becomes PID 1 of its PID namespace. Every binary that may start a
// confined VMM must therefore link this package (package vmm imports it).
//
// The VMM reaches the files of a run (kernel, disks, snapshot memory)
// through descriptors pe opened and passes down, not through paths: the
// private root has none of the host's files besides /usr, the dynamic
// loader's cache and a few device nodes.
package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Argv0 is the argv[0] that makes a binary linking this package act as
// the trampoline.
const Argv0 = "pe-vmm-jail"

// specEnv carries the JSON Spec to the trampoline.
const specEnv = "PE_VMM_JAIL_SPEC"

// UID and GID are the user and group a confined VMM runs as when pe runs as
// root: a fixed ID high in the 32-bit range, in no /etc/passwd and above
// the ranges useradd hands out as subordinate IDs (100000 + 65536 per
// user), so it owns no file on the host and shares nothing with a user.
const (
	UID = 0x7ffe0000
	GID = 0x7ffe0000
)

// Cloneflags are the namespaces a confined VMM gets.
const Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET |
	syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS

// Spec says how the trampoline confines one VMM.
type Spec struct {
	// Binary is the VMM executable (an absolute host path, also its path
	// inside the private root) and Args its arguments without argv[0].
	Binary string   `json:"binary"`
	Args   []string `json:"args"`
	// Root is an empty host directory the trampoline mounts the private
	// root on, inside its own mount namespace (the host never sees the
	// mount).
	Root string `json:"root"`
	// Devices are device nodes bound into the private root at the same
	// path: /dev/null, /dev/urandom, /dev/kvm.
	Devices []string `json:"devices,omitempty"`
	// UID and GID are the IDs the VMM runs as; Groups its supplementary
	// groups (the group of /dev/kvm under KVM).
	UID    int   `json:"uid"`
	GID    int   `json:"gid"`
	Groups []int `json:"groups,omitempty"`
	// UserNS runs the VMM in a new user namespace too, where pe's user is
	// root (mapped to itself outside): how unprivileged pe gets the other
	// namespaces. The VMM then keeps pe's user but loses every capability
	// before it starts (UID and GID must be 0).
	UserNS bool `json:"userns,omitempty"`
	// AliveFD is the read end of a pipe whose write end pe holds while the
	// VMM runs: the trampoline gives up when it reads end-of-file, since
	// pe died before the parent-death signal was armed again after the
	// change of user.
	AliveFD int `json:"alive_fd"`
	// NoHugePages starts the VMM with transparent huge pages disabled
	// (PR_SET_THP_DISABLE), whatever it asks for with madvise.
	NoHugePages bool `json:"no_hugepages,omitempty"`
}

// Level is how far pe can confine a VMM here.
type Level int

// Levels of confinement.
const (
	// LevelNone: no namespaces (the VMM's own sandbox only).
	LevelNone Level = iota
	// LevelUserNS: the namespaces and private root, inside a user
	// namespace, as pe's user without capabilities (pe is not root).
	LevelUserNS
	// LevelFull: the namespaces, private root and another user (pe is
	// root).
	LevelFull
)

// Available says how far pe can confine a VMM here, and why not further:
// fully as root; else in a user namespace where the kernel lets
// unprivileged users make one; else not at all.
func Available() (Level, string) {
	if os.Geteuid() == 0 {
		return LevelFull, ""
	}
	if err := userNSAllowed(); err != nil {
		return LevelNone, "pe is not root and " + err.Error()
	}
	return LevelUserNS, "pe is not root: QEMU keeps pe's user, in a user namespace"
}

// userNSAllowed checks the sysctls that stop unprivileged users from
// making user namespaces (Debian's, the upstream limit, Ubuntu's
// AppArmor restriction).
func userNSAllowed() error {
	for _, c := range []struct{ path, bad, what string }{
		{"/proc/sys/kernel/unprivileged_userns_clone", "0", "unprivileged user namespaces are off (kernel.unprivileged_userns_clone=0)"},
		{"/proc/sys/user/max_user_namespaces", "0", "user namespaces are off (user.max_user_namespaces=0)"},
		{"/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor restricts unprivileged user namespaces"},
	} {
		if b, err := os.ReadFile(c.path); err == nil && strings.TrimSpace(string(b)) == c.bad {
			return errors.New(c.what)
		}
	}
	return nil
}

// Command returns the command that runs s.Binary confined as s says: the
// trampoline, in new namespaces, in a process group of its own, killed
// should pe die. The caller sets its standard streams and ExtraFiles (which
// must hold the alive pipe at s.AliveFD).
func Command(s *Spec) (*exec.Cmd, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("jail spec: %w", err)
	}
	cmd := &exec.Cmd{
		Path: "/proc/self/exe",
		Args: []string{Argv0},
		Env:  []string{specEnv + "=" + string(b)},
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:    true,
			Pdeathsig:  syscall.SIGKILL,
			Cloneflags: Cloneflags,
		},
	}
	if s.UserNS {
		if s.UID != 0 || s.GID != 0 {
			return nil, errors.New("jail spec: a user namespace keeps pe's user (uid and gid 0 inside)")
		}
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
	}
	return cmd, nil
}

// Devices returns the device nodes a VMM needs: /dev/null and /dev/urandom,
// and /dev/kvm when kvm is set.
func Devices(kvm bool) []string {
	d := []string{"/dev/null", "/dev/zero", "/dev/urandom"}
	if kvm {
		d = append(d, "/dev/kvm")
	}
	return d
}

// DeviceGroups returns the groups owning the device nodes that are not
// readable and writable by others: the VMM gets them as supplementary
// groups (/dev/kvm is root:kvm 0660 on Debian).
func DeviceGroups(devices []string) []int {
	var groups []int
	for _, d := range devices {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o006 == 0o006 {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Gid != 0 {
			groups = append(groups, int(st.Gid))
		}
	}
	return groups
}

// systemPaths are bound read-only into the private root when they are
// directories, or recreated when they are symbolic links (Debian's merged
// /usr makes /lib a link to usr/lib).
var systemPaths = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

// systemFiles are single files bound read-only when they exist.
var systemFiles = []string{"/etc/ld.so.cache"}

// underSystem reports whether path lies in a directory bound into the
// private root.
func underSystem(path string) bool {
	for _, p := range systemPaths {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

// binaryDir returns the directory holding binary when it must be bound
// into the private root (QEMU outside /usr), else "".
func binaryDir(binary string) string {
	if real, err := filepath.EvalSymlinks(binary); err == nil && underSystem(real) && underSystem(binary) {
		return ""
	}
	return filepath.Dir(binary)
}

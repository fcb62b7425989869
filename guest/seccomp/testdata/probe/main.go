// probe tries system calls and prints, for each, "name: ok" or the errno
// it got: the seccomp tests run it under the filter (on the host and in a
// VM) and without. The calls that the filter denies are made with bad
// arguments, so that where it lets them through they fail harmlessly with
// another errno (reboot without its magic numbers, for one).
//
// Usage: probe [check...] (no check: all), or probe int80: i386 system
// calls (through int $0x80).
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// int80 makes i386 system call nr with null arguments (int80_amd64.s) and
// returns its result, a negated errno on failure.
func int80(nr uint32) int32

func int80Result(nr uint32) string {
	r := int80(nr)
	if r < 0 && r > -4096 {
		return unix.ErrnoName(unix.Errno(-r))
	}
	return "ok"
}

func raw(nr uintptr, args ...uintptr) error {
	var a [6]uintptr
	copy(a[:], args)
	_, _, e := unix.Syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5])
	if e != 0 {
		return e
	}
	return nil
}

func ptr(s string) uintptr {
	b, _ := unix.BytePtrFromString(s)
	return uintptr(unsafe.Pointer(b))
}

const missing = "/nonexistent-pe-probe"

var checks = []struct {
	name string
	run  func() error
}{
	{"getpid", func() error { return raw(unix.SYS_GETPID) }},
	{"pipe", func() error {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		if _, err := unix.Write(p[1], []byte("x")); err != nil {
			return err
		}
		_, err := unix.Read(p[0], make([]byte, 1))
		return err
	}},
	{"fork-exec", func() error { return exec.Command("/proc/self/exe", "getpid").Run() }},
	{"clone-newuser", func() error {
		cmd := exec.Command("/proc/self/exe", "getpid")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER}
		return cmd.Run()
	}},
	{"clone3", func() error { return raw(unix.SYS_CLONE3, 0, 0) }},
	{"unshare", func() error { return raw(unix.SYS_UNSHARE, 0) }},
	{"setns", func() error { return raw(unix.SYS_SETNS, ^uintptr(0), 0) }},
	{"mount", func() error { return raw(unix.SYS_MOUNT, ptr("none"), ptr(missing), ptr("tmpfs"), 0, 0) }},
	{"umount2", func() error { return raw(unix.SYS_UMOUNT2, ptr(missing), 0) }},
	{"chroot", func() error { return raw(unix.SYS_CHROOT, ptr(missing)) }},
	{"keyctl", func() error { return raw(unix.SYS_KEYCTL, 0x7fff) }},
	{"add_key", func() error {
		return raw(unix.SYS_ADD_KEY, ptr("pe-no-such-type"), ptr("d"), 0, 0, ^uintptr(1)) // KEY_SPEC_PROCESS_KEYRING
	}},
	{"reboot", func() error { return raw(unix.SYS_REBOOT, 0, 0, 0, 0) }},
	{"kexec_load", func() error { return raw(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0xffff0000) }},
	{"bpf", func() error { return raw(unix.SYS_BPF, 0x7fff, 0, 0) }},
	{"perf_event_open", func() error { return raw(unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0), ^uintptr(0), 0) }},
	{"personality-query", func() error { return raw(unix.SYS_PERSONALITY, 0xffffffff) }},
	{"personality-no-aslr", func() error { return raw(unix.SYS_PERSONALITY, 0x0040000) }}, // ADDR_NO_RANDOMIZE
	{"socket-inet", func() error { return socket(unix.AF_INET) }},
	{"socket-unix", func() error { return socket(unix.AF_UNIX) }},
	{"socket-vsock", func() error { return socket(unix.AF_VSOCK) }},
	{"socket-alg", func() error { return socket(unix.AF_ALG) }},
}

func socket(domain int) error {
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err == nil {
		unix.Close(fd)
	}
	return err
}

func result(err error) string {
	var errno unix.Errno
	var exit *exec.ExitError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &errno):
		return unix.ErrnoName(errno)
	case errors.As(err, &exit):
		return exit.String()
	}
	return err.Error()
}

func main() {
	names := os.Args[1:]
	if len(names) == 1 && names[0] == "getpid" {
		return // the child of fork-exec and clone-newuser
	}
	if len(names) == 1 && names[0] == "int80" {
		// i386 getpid, keyctl (a bad command), mount (all null).
		fmt.Printf("int80-getpid: %s\n", int80Result(20))
		fmt.Printf("int80-keyctl: %s\n", int80Result(288))
		fmt.Printf("int80-mount: %s\n", int80Result(21))
		return
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	for _, c := range checks {
		if len(want) == 0 || want[c.name] {
			fmt.Printf("%s: %s\n", c.name, result(c.run()))
		}
	}
}

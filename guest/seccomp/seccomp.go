// Package seccomp holds the system call filter pe puts on the program it
// runs in the guest: docker's default seccomp profile, for docker's default
// capabilities, as runc applies it (see docs/security.md). The filter is
// generated at build time (go generate: gen.go, from
// github.com/moby/profiles/seccomp through the dockerprofile package) into
// a committed BPF program, so that the static guest init links neither
// library and pays nothing to build it: loading it is one system call.
package seccomp

//go:generate go run gen.go

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnsupported is returned by [Load] on an architecture the filter was
// not generated for.
var ErrUnsupported = errors.New("seccomp: no filter for this architecture")

// Load puts the filter on the calling thread, and so on what it executes
// next: the caller locks itself to its thread and executes the program
// from it. The other threads of a Go process keep running unfiltered,
// which is fine for one that ends them by executing a program.
//
// The kernel requires no_new_privs or CAP_SYS_ADMIN in the thread's user
// namespace; Load sets neither.
func Load() error {
	if len(program) == 0 {
		return ErrUnsupported
	}
	fprog := unix.SockFprog{Len: uint16(len(program)), Filter: &program[0]}
	// Without SECCOMP_FILTER_FLAG_TSYNC: this thread only.
	if _, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		return fmt.Errorf("seccomp: load the filter: %w", errno)
	}
	return nil
}

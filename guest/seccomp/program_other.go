//go:build !amd64

package seccomp

import "golang.org/x/sys/unix"

// program is empty here: the guest is x86_64, the only architecture the
// filter is generated for.
var program []unix.SockFilter

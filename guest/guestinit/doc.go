// Package guestinit is pe's guest init: PID 1 of the micro-VM.
//
// [Main] boots the guest (proc, sys, devtmpfs, kernel modules from the
// initramfs), reads the request from the I/O disk, builds the container root
// (the EROFS image read-only, idmapped so its root-owned files belong to the
// container's root, under a tmpfs overlay), runs the program in a
// [Sandbox] and writes the result back before powering the VM off. Those
// are the phases of PID 1, one method each of its state (vmInit, main.go),
// in the order docs/guest.md lists them.
//
// Booted for an image's snapshot (pe.snapshot=1 on the command line), the
// init mounts the image and starts the sandbox; booted for a boot snapshot
// (pe.snapshot=boot), it mounts nothing and only spawns the sandbox's
// child, since any image may follow. Then it drops what the kernel cached
// of the disks (other files in a restored VM), writes
// [guest.SnapshotReady] on the console and blocks reading the console; the
// host saves the VM meanwhile. A VM restored from the snapshot is woken by
// a byte on its console: the init reads the request, sets the clock and
// reseeds the kernel's RNG from it (so copies of one snapshot never share
// random numbers), and goes on as after a boot.
//
// The sandbox re-executes the init binary as a stage-2 child in new user,
// PID, UTS and IPC namespaces, inside a cgroup with memory and pids limits.
// The child waits until the init has prepared everything, unshares a mount
// namespace (which locks every mount the init made), mounts /proc and a
// fresh /dev holding only null, zero, full, random, urandom, tty, pts and
// shm, pivots into the container root, drops to the requested user and
// executes the program. Container IDs 0.. map to unprivileged IDs
// [IDBase].. of the guest, so even the container's root has no privilege
// over anything the init owns: the I/O disk's device node is not in its
// mount namespace and cannot be created, PID 1 is not in its PID namespace,
// /proc/sys and /proc/sysrq-trigger are read-only to it, and the mounts it
// sees cannot be unmounted or remounted writable.
package guestinit

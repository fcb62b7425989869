package guestinit

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The program's cgroup carries a device filter: an eBPF program of type
// BPF_PROG_TYPE_CGROUP_DEVICE the kernel runs on every open and mknod of a
// character or block device by a process of the cgroup. It is the second
// wall behind nodev: should a device node from the image ever be reachable
// on a mount without nodev, the kernel still refuses it.
//
// The filter allows reading and writing the devices of the program's /dev
// and nothing else: no block device, no mknod, no other character device.

// allowedDevice is a character device the program may open; minor -1
// stands for every minor of the major.
type allowedDevice struct {
	major, minor int32
}

// allowedDevices are the character devices behind the program's /dev
// (see devices in stage2.go and the devpts it mounts). /dev/console (5:1),
// the serial ports (4:64...), /dev/kmsg (1:11), /dev/mem (1:1) and every
// disk stay out.
var allowedDevices = []allowedDevice{
	{1, 3}, // null
	{1, 5}, // zero
	{1, 7}, // full
	{1, 8}, // random
	{1, 9}, // urandom
	{5, 0}, // tty
	{5, 2}, // ptmx (the devpts instance's)
	// The pseudo-terminals' secondary ends: UNIX98_PTY_SLAVE_MAJOR (136)
	// and the 7 majors the kernel may add after it
	// (UNIX98_PTY_MAJOR_COUNT).
	{136, -1}, {137, -1}, {138, -1}, {139, -1},
	{140, -1}, {141, -1}, {142, -1}, {143, -1},
}

// bpfInsn is one eBPF instruction (struct bpf_insn).
type bpfInsn struct {
	code uint8
	regs uint8 // dst in the low nibble, src in the high one
	off  int16
	imm  int32
}

// The eBPF registers the filter uses: r0 is the return value, r1 the
// context (struct bpf_cgroup_dev_ctx: u32 access_type, major, minor).
const (
	r0 = 0
	r1 = 1
	r2 = 2
	r3 = 3
	r4 = 4
)

func ldxW(dst, src uint8, off int16) bpfInsn {
	return bpfInsn{code: unix.BPF_LDX | unix.BPF_MEM | unix.BPF_W, regs: src<<4 | dst, off: off}
}

func alu32(op uint8, dst uint8, imm int32) bpfInsn {
	return bpfInsn{code: unix.BPF_ALU | op | unix.BPF_K, regs: dst, imm: imm}
}

func mov32Reg(dst, src uint8) bpfInsn {
	return bpfInsn{code: unix.BPF_ALU | unix.BPF_MOV | unix.BPF_X, regs: src<<4 | dst}
}

func mov64(dst uint8, imm int32) bpfInsn {
	return bpfInsn{code: unix.BPF_ALU64 | unix.BPF_MOV | unix.BPF_K, regs: dst, imm: imm}
}

// jmp jumps off instructions ahead when dst op imm.
func jmp(op uint8, dst uint8, imm int32, off int16) bpfInsn {
	return bpfInsn{code: unix.BPF_JMP | op | unix.BPF_K, regs: dst, off: off, imm: imm}
}

func exit() bpfInsn { return bpfInsn{code: unix.BPF_JMP | unix.BPF_EXIT} }

// deviceFilter assembles the filter for allowed: a test per device, in
// order, each jumping to the allow exit on a match; anything that matches
// none falls through to the deny exit.
func deviceFilter(allowed []allowedDevice) []bpfInsn {
	prog := []bpfInsn{
		ldxW(r2, r1, 0), // r2 = access_type: access << 16 | type
		mov32Reg(r3, r2),
		alu32(unix.BPF_AND, r2, 0xffff), // r2 = type
		alu32(unix.BPF_RSH, r3, 16),     // r3 = access
		ldxW(r4, r1, 4),                 // r4 = major
		ldxW(r1, r1, 8),                 // r1 = minor
	}
	// Tests, each a block ending in a jump to the allow exit; the index of
	// each such jump is fixed up once the exits' place is known.
	var toAllow []int
	var toDeny []int
	toDeny = append(toDeny, len(prog))
	prog = append(prog, jmp(unix.BPF_JSET, r3, unix.BPF_DEVCG_ACC_MKNOD, 0))
	toDeny = append(toDeny, len(prog))
	prog = append(prog, jmp(unix.BPF_JNE, r2, unix.BPF_DEVCG_DEV_CHAR, 0))
	for _, d := range allowed {
		if d.minor < 0 {
			toAllow = append(toAllow, len(prog))
			prog = append(prog, jmp(unix.BPF_JEQ, r4, d.major, 0))
			continue
		}
		// if major != d.major skip the minor's test
		prog = append(prog, jmp(unix.BPF_JNE, r4, d.major, 1))
		toAllow = append(toAllow, len(prog))
		prog = append(prog, jmp(unix.BPF_JEQ, r1, d.minor, 0))
	}
	deny := len(prog)
	prog = append(prog, mov64(r0, 0), exit())
	allow := len(prog)
	prog = append(prog, mov64(r0, 1), exit())
	for _, i := range toAllow {
		prog[i].off = int16(allow - i - 1)
	}
	for _, i := range toDeny {
		prog[i].off = int16(deny - i - 1)
	}
	return prog
}

// bpfProgLoadAttr is the BPF_PROG_LOAD part of union bpf_attr, up to
// prog_flags: the kernel takes the fields after it as zero.
type bpfProgLoadAttr struct {
	progType    uint32
	insnCnt     uint32
	insns       uint64
	license     uint64
	logLevel    uint32
	logSize     uint32
	logBuf      uint64
	kernVersion uint32
	progFlags   uint32
}

// bpfProgAttachAttr is the BPF_PROG_ATTACH part of union bpf_attr.
type bpfProgAttachAttr struct {
	targetFD     uint32
	attachBPFFD  uint32
	attachType   uint32
	attachFlags  uint32
	replaceBPFFD uint32
}

// maxLoadTries bounds the loads that a pending signal interrupts: Go
// preempts a thread at most every 10 ms, and a load takes microseconds.
const maxLoadTries = 1000

// loadDeviceFilter loads the filter for allowed and returns its fd. When
// the kernel refuses it, the error carries the verifier's log.
func loadDeviceFilter(allowed []allowedDevice) (int, error) {
	prog := deviceFilter(allowed)
	license := []byte("GPL\x00") // no helper is called: any license would do
	load := func(log []byte) (int, unix.Errno) {
		attr := bpfProgLoadAttr{
			progType: unix.BPF_PROG_TYPE_CGROUP_DEVICE,
			insnCnt:  uint32(len(prog)),
			insns:    uint64(uintptr(unsafe.Pointer(&prog[0]))),
			license:  uint64(uintptr(unsafe.Pointer(&license[0]))),
		}
		if len(log) > 0 {
			attr.logLevel, attr.logSize, attr.logBuf = 1, uint32(len(log)), uint64(uintptr(unsafe.Pointer(&log[0])))
		}
		fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_LOAD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		runtime.KeepAlive(prog)
		runtime.KeepAlive(license)
		runtime.KeepAlive(log)
		return int(fd), errno
	}
	fd, errno := load(nil)
	// The verifier gives up with EAGAIN when a signal is pending, and Go's
	// scheduler signals threads to preempt them (SIGURG): load again, as
	// libbpf and cilium/ebpf do, a bounded number of times.
	for try := 0; (errno == unix.EAGAIN || errno == unix.EINTR) && try < maxLoadTries; try++ {
		fd, errno = load(nil)
	}
	if errno == 0 {
		return fd, nil
	}
	// Again with the verifier's log, for the report.
	log := make([]byte, 16<<10)
	if fd, errno2 := load(log); errno2 == 0 {
		unix.Close(fd) // a passing failure: still reported as one
	}
	n := 0
	for n < len(log) && log[n] != 0 {
		n++
	}
	return -1, fmt.Errorf("load the device filter: %w; verifier: %.2000s", errno, log[:n])
}

// attachDeviceFilter loads the device filter and attaches it to the cgroup
// directory open as cgroupFD. Attached without BPF_F_ALLOW_OVERRIDE or
// BPF_F_ALLOW_MULTI, no program can be attached below it to widen it. The
// attachment holds the program: it lives as long as the cgroup.
func attachDeviceFilter(cgroupFD int) error {
	progFD, err := loadDeviceFilter(allowedDevices)
	if err != nil {
		return err
	}
	defer unix.Close(progFD)
	attr := bpfProgAttachAttr{
		targetFD:    uint32(cgroupFD),
		attachBPFFD: uint32(progFD),
		attachType:  unix.BPF_CGROUP_DEVICE,
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_ATTACH, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return fmt.Errorf("attach the device filter: %w", errno)
	}
	return nil
}

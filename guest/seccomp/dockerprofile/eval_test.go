package dockerprofile

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// call is a system call as a seccomp filter sees it.
type call struct {
	arch uint32
	nr   uint32
	args [6]uint64
}

// data is c's struct seccomp_data, in x86_64's byte order.
func (c call) data() []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:], c.nr)
	binary.LittleEndian.PutUint32(b[4:], c.arch)
	for i, a := range c.args {
		binary.LittleEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

// eval runs a seccomp filter on c as the kernel would, for the
// instructions a seccomp filter may hold, and returns its verdict.
func eval(prog []unix.SockFilter, c call) (uint32, error) {
	data := c.data()
	var a, x uint32
	for pc := 0; pc < len(prog); pc++ {
		in := prog[pc]
		jump := func(cond bool) {
			if cond {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		}
		src := in.K
		if in.Code&unix.BPF_X != 0 {
			src = x
		}
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if in.K+4 > uint32(len(data)) || in.K%4 != 0 {
				return 0, fmt.Errorf("pc %d: load at %d", pc, in.K)
			}
			a = binary.LittleEndian.Uint32(data[in.K:])
		case unix.BPF_LDX | unix.BPF_W | unix.BPF_IMM:
			x = in.K
		case unix.BPF_ALU | unix.BPF_AND | unix.BPF_K:
			a &= in.K
		case unix.BPF_JMP | unix.BPF_JA:
			pc += int(in.K)
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_X:
			jump(a == src)
		case unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGT | unix.BPF_X:
			jump(a > src)
		case unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_X:
			jump(a >= src)
		case unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, unix.BPF_JMP | unix.BPF_JSET | unix.BPF_X:
			jump(a&src != 0)
		case unix.BPF_RET | unix.BPF_K:
			return in.K, nil
		default:
			return 0, fmt.Errorf("pc %d: instruction %#x not expected", pc, in.Code)
		}
	}
	return 0, fmt.Errorf("ran off the end of the program")
}

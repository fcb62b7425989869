package dockerprofile

import (
	"fmt"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// holds is libseccomp's meaning of a conjunction of comparisons: on 64
// bits when wide, else on the low 32 bits of the argument.
func holds(alt []specs.LinuxSeccompArg, args [6]uint64, wide bool) bool {
	for _, c := range alt {
		a, v, w := args[c.Index], c.Value, c.ValueTwo
		if !wide {
			a, v, w = uint64(uint32(a)), uint64(uint32(v)), uint64(uint32(w))
		}
		var ok bool
		switch c.Op {
		case specs.OpEqualTo:
			ok = a == v
		case specs.OpNotEqual:
			ok = a != v
		case specs.OpLessThan:
			ok = a < v
		case specs.OpLessEqual:
			ok = a <= v
		case specs.OpGreaterThan:
			ok = a > v
		case specs.OpGreaterEqual:
			ok = a >= v
		case specs.OpMaskedEqual:
			ok = a&v == w
		}
		if !ok {
			return false
		}
	}
	return true
}

var (
	x86_64ID = uint32(arch.X86_64.ID)
	i386ID   = uint32(arch.I386.ID)
)

// TestAssembleComparisons checks every comparison, on both halves of
// 64-bit values and for both architectures, against holds: each call has
// a rule with one comparison, or two alternatives of two.
func TestAssembleComparisons(t *testing.T) {
	edges := []uint64{0, 1, 2, 0x7fffffff, 0xffffffff, 1 << 32, 1<<32 + 1, 2<<32 + 1, 0xffffffff00000000, ^uint64(0)}
	ops := []specs.LinuxSeccompOperator{specs.OpEqualTo, specs.OpNotEqual, specs.OpLessThan, specs.OpLessEqual, specs.OpGreaterThan, specs.OpGreaterEqual, specs.OpMaskedEqual}
	// Values that fit 32 bits, for i386.
	values := []uint64{0, 1, 0x7fffffff, 0xffffffff}
	for _, wide := range []bool{true, false} {
		info, id, nr := arch.X86_64, x86_64ID, uint32(unix.SYS_READ)
		if !wide {
			info, id, nr = arch.I386, i386ID, 3 // read
			edges = append(edges, 0x00000001_00000001)
		}
		vals := values
		if wide {
			vals = edges
		}
		for _, op := range ops {
			for _, v := range vals {
				for _, alts := range [][][]specs.LinuxSeccompArg{
					{{{Index: 2, Op: op, Value: v, ValueTwo: v & 0x0000ffff0000ffff}}},
					{
						{{Index: 0, Op: op, Value: v, ValueTwo: v}, {Index: 5, Op: specs.OpNotEqual, Value: 1}},
						{{Index: 5, Op: op, Value: v, ValueTwo: 0}, {Index: 0, Op: specs.OpLessEqual, Value: 2}},
					},
				} {
					// Number 1 (write, exit) allowed after read: an argument of 1
					// left loaded after read's block would pass as it.
					one := "write"
					if !wide {
						one = "exit"
					}
					tab := &Table{Arch: info, Default: eperm, Syscalls: map[string]Rule{"read": {Action: ActionAllow, Conditions: alts}, one: {Action: ActionAllow}}}
					x, i := tab, &Table{Arch: arch.I386, Default: eperm, Syscalls: map[string]Rule{"write": {Action: ActionAllow}}}
					if !wide {
						x, i = &Table{Arch: arch.X86_64, Default: eperm, Syscalls: map[string]Rule{"write": {Action: ActionAllow}}}, tab
					}
					prog, err := Assemble(x, i)
					if err != nil {
						t.Fatal(err)
					}
					for _, a := range edges {
						for _, b := range []uint64{0, 1, 2, a} {
							args := [6]uint64{b, 0, a, 0, 0, a}
							if len(alts) == 2 {
								args = [6]uint64{a, 0, 0, 0, 0, b}
							}
							want := uint32(eperm)
							for _, alt := range alts {
								if holds(alt, args, wide) {
									want = uint32(ActionAllow)
								}
							}
							got, err := eval(prog, call{arch: id, nr: nr, args: args})
							if err != nil {
								t.Fatal(err)
							}
							if got != want {
								t.Fatalf("wide %v, rule %+v, args %#x: %#x, want %#x", wide, alts, args, got, want)
							}
						}
					}
				}
			}
		}
	}
}

// TestAssembleDefault runs the default profile's program on calls whose
// verdicts docker documents.
func TestAssembleDefault(t *testing.T) {
	prog, _, err := Program(DefaultCaps)
	if err != nil {
		t.Fatal(err)
	}
	if len(prog) > maxInstructions {
		t.Fatalf("%d instructions", len(prog))
	}
	allow, kill := uint32(ActionAllow), uint32(ActionKillProcess)
	for _, tc := range []struct {
		name string
		c    call
		want uint32
	}{
		{"read", call{arch: x86_64ID, nr: unix.SYS_READ}, allow},
		{"keyctl", call{arch: x86_64ID, nr: unix.SYS_KEYCTL}, uint32(eperm)},
		{"mount", call{arch: x86_64ID, nr: unix.SYS_MOUNT}, uint32(eperm)},
		{"unknown call", call{arch: x86_64ID, nr: 1000}, uint32(eperm)},
		{"clone for fork", call{arch: x86_64ID, nr: unix.SYS_CLONE, args: [6]uint64{uint64(unix.SIGCHLD)}}, allow},
		{"clone for a thread", call{arch: x86_64ID, nr: unix.SYS_CLONE, args: [6]uint64{unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM}}, allow},
		{"clone, new user namespace", call{arch: x86_64ID, nr: unix.SYS_CLONE, args: [6]uint64{unix.CLONE_NEWUSER | uint64(unix.SIGCHLD)}}, uint32(eperm)},
		{"clone, new network namespace", call{arch: x86_64ID, nr: unix.SYS_CLONE, args: [6]uint64{unix.CLONE_NEWNET}}, uint32(eperm)},
		{"clone3", call{arch: x86_64ID, nr: unix.SYS_CLONE3}, uint32(enosys)},
		{"socket inet", call{arch: x86_64ID, nr: unix.SYS_SOCKET, args: [6]uint64{unix.AF_INET}}, allow},
		{"socket vsock", call{arch: x86_64ID, nr: unix.SYS_SOCKET, args: [6]uint64{unix.AF_VSOCK}}, uint32(eperm)},
		{"socket vsock, high bits set", call{arch: x86_64ID, nr: unix.SYS_SOCKET, args: [6]uint64{1<<32 | unix.AF_INET}}, uint32(eperm)},
		// The call after a failed condition is not compared as another
		// call (go-seccomp-bpf's bug: 40 is sendfile).
		{"socket 40", call{arch: x86_64ID, nr: unix.SYS_SOCKET, args: [6]uint64{40}}, uint32(eperm)},
		{"socket 46 (sendmsg's number)", call{arch: x86_64ID, nr: unix.SYS_SOCKET, args: [6]uint64{unix.SYS_SENDMSG}}, uint32(eperm)},
		{"personality query", call{arch: x86_64ID, nr: unix.SYS_PERSONALITY, args: [6]uint64{0xffffffff}}, allow},
		{"personality no aslr", call{arch: x86_64ID, nr: unix.SYS_PERSONALITY, args: [6]uint64{0x0040000}}, uint32(eperm)},
		{"x32 read", call{arch: x86_64ID, nr: x32Bit | 0}, uint32(enosys)},
		{"i386 getpid", call{arch: i386ID, nr: 20}, allow},
		{"i386 socketcall", call{arch: i386ID, nr: 102}, allow},
		{"i386 keyctl", call{arch: i386ID, nr: 288}, uint32(eperm)},
		{"i386 clone, new user namespace", call{arch: i386ID, nr: 120, args: [6]uint64{unix.CLONE_NEWUSER}}, uint32(eperm)},
		{"i386 clone for fork", call{arch: i386ID, nr: 120, args: [6]uint64{uint64(unix.SIGCHLD)}}, allow},
		{"aarch64", call{arch: uint32(arch.AARCH64.ID), nr: 63}, kill},
	} {
		got, err := eval(prog, tc.c)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, Action(got), Action(tc.want))
		}
	}
}

// TestAssembleEveryCall runs the default profile's program on every call
// number of both architectures, with all arguments zero then all ones,
// against its tables.
func TestAssembleEveryCall(t *testing.T) {
	prog, tables, err := Program(DefaultCaps)
	if err != nil {
		t.Fatal(err)
	}
	for _, tab := range tables {
		wide := tab.Arch == arch.X86_64
		for nr := range 1024 {
			for _, args := range [][6]uint64{{}, {^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}} {
				want := tab.Default
				if r, ok := tab.Syscalls[tab.Arch.SyscallNumbers[nr]]; ok {
					if len(r.Conditions) == 0 {
						want = r.Action
					}
					for _, alt := range r.Conditions {
						if holds(alt, args, wide) {
							want = r.Action
						}
					}
				}
				got, err := eval(prog, call{arch: uint32(tab.Arch.ID), nr: uint32(nr), args: args})
				if err != nil {
					t.Fatal(err)
				}
				if got != uint32(want) {
					t.Errorf("%s call %d (%s), args %#x: %v, want %v", tab.Arch.Name, nr, tab.Arch.SyscallNumbers[nr], args[0], Action(got), want)
				}
			}
		}
	}
}

// TestActionString names actions for the generated file's summary.
func TestActionString(t *testing.T) {
	got := fmt.Sprint(ActionAllow, enosys, ActionKillProcess)
	if d := cmp.Diff("allow errno ENOSYS kill process", got); d != "" {
		t.Error(d)
	}
}

// FuzzCompare checks one comparison of any operator and values, on
// either architecture, against holds.
func FuzzCompare(f *testing.F) {
	f.Add(uint8(0), uint8(0), uint64(1), uint64(0), uint64(1), true)
	f.Add(uint8(6), uint8(5), uint64(0x7e020000), uint64(0), uint64(0x10000000), true)
	f.Add(uint8(2), uint8(1), uint64(1<<32), uint64(0), uint64(0xffffffff), true)
	f.Add(uint8(4), uint8(3), uint64(7), uint64(0), uint64(8), false)
	ops := []specs.LinuxSeccompOperator{specs.OpEqualTo, specs.OpNotEqual, specs.OpLessThan, specs.OpLessEqual, specs.OpGreaterThan, specs.OpGreaterEqual, specs.OpMaskedEqual}
	f.Fuzz(func(t *testing.T, op, index uint8, value, valueTwo, arg uint64, wide bool) {
		c := specs.LinuxSeccompArg{Index: uint(index % 6), Op: ops[int(op)%len(ops)], Value: value, ValueTwo: valueTwo}
		info, id, nr := arch.X86_64, x86_64ID, uint32(unix.SYS_READ)
		if !wide {
			info, id, nr = arch.I386, i386ID, 3
			c.Value, c.ValueTwo = uint64(uint32(value)), uint64(uint32(valueTwo))
		}
		tab := &Table{Arch: info, Default: eperm, Syscalls: map[string]Rule{"read": {Action: ActionAllow, Conditions: [][]specs.LinuxSeccompArg{{c}}}}}
		x, i := tab, &Table{Arch: arch.I386, Default: eperm, Syscalls: map[string]Rule{}}
		if !wide {
			x, i = &Table{Arch: arch.X86_64, Default: eperm, Syscalls: map[string]Rule{}}, tab
		}
		prog, err := Assemble(x, i)
		if err != nil {
			t.Fatal(err)
		}
		var args [6]uint64
		args[c.Index] = arg
		want := uint32(eperm)
		if holds([]specs.LinuxSeccompArg{c}, args, wide) {
			want = uint32(ActionAllow)
		}
		got, err := eval(prog, call{arch: id, nr: nr, args: args})
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("%+v on %#x (wide %v): %v, want %v", c, arg, wide, Action(got), Action(want))
		}
	})
}

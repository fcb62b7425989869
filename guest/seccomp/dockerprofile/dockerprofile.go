// Package dockerprofile turns docker's default seccomp profile
// (github.com/moby/profiles/seccomp) into a classic BPF program for the
// guest's x86_64 kernel. It reads a profile the way docker and runc do: the
// profile's includes and excludes are decided for a capability set and the
// running architecture (moby's own code does that), each rule's argument
// comparisons are combined as runc hands them to libseccomp, and the rules
// apply to the x86_64 and i386 system calls alike, as the profile's
// architecture map asks.
//
// System call numbers come from github.com/elastic/go-seccomp-bpf's tables
// (its arch package). Its policy assembler is not used: in v1.6.0, once a
// call's argument conditions fail, the comparisons that follow take the
// argument left loaded for the call number (socket(AF_VSOCK, ...), domain
// 40, passes as sendfile, call 40). Here every call with conditions has a
// block of its own that ends in a return.
//
// Only the generator of the guest's committed filter and tests use this
// package: the guest init loads the finished program and links none of it.
package dockerprofile

import (
	"encoding/binary"
	"fmt"
	"maps"
	"runtime"
	"slices"

	"github.com/elastic/go-seccomp-bpf/arch"
	moby "github.com/moby/profiles/seccomp"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// DefaultCaps is the capability set docker gives a container by default:
// the set the default profile's includes and excludes are decided for, so
// that what runs under docker run runs under pe.
var DefaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// maxInstructions is the kernel's limit on a filter's length (BPF_MAXINSNS).
const maxInstructions = 4096

// x32Bit marks the system call numbers of the x32 ABI on x86_64.
const x32Bit = 0x40000000

// Action is a filter's verdict: a SECCOMP_RET_* action with its data (the
// errno of ActionErrno) in the low 16 bits.
type Action uint32

// The actions a profile may ask for.
const (
	ActionAllow       Action = unix.SECCOMP_RET_ALLOW
	ActionErrno       Action = unix.SECCOMP_RET_ERRNO // | errno
	ActionKillThread  Action = unix.SECCOMP_RET_KILL_THREAD
	ActionKillProcess Action = unix.SECCOMP_RET_KILL_PROCESS
	ActionTrap        Action = unix.SECCOMP_RET_TRAP
	ActionLog         Action = unix.SECCOMP_RET_LOG
)

// String names the action, with its errno.
func (a Action) String() string {
	switch a & unix.SECCOMP_RET_ACTION_FULL {
	case ActionAllow:
		return "allow"
	case ActionErrno:
		return "errno " + unix.ErrnoName(unix.Errno(a&unix.SECCOMP_RET_DATA))
	case ActionKillThread:
		return "kill thread"
	case ActionKillProcess:
		return "kill process"
	case ActionTrap:
		return "trap"
	case ActionLog:
		return "log"
	}
	return fmt.Sprintf("action %#x", uint32(a))
}

// Rule is what a [Table] does with one system call.
type Rule struct {
	Action Action
	// Conditions are alternatives: the rule applies when every comparison
	// of any one of them holds. None means always.
	Conditions [][]specs.LinuxSeccompArg
}

// Table is a profile reduced to one rule per system call of an
// architecture.
type Table struct {
	// Arch is the architecture the names were resolved for.
	Arch *arch.Info
	// Default is the action for the system calls without a rule.
	Default Action
	// Syscalls are the rules by system call name.
	Syscalls map[string]Rule
	// Unknown are the profile's names this architecture has no system call
	// for (other architectures' calls): skipped, as runc does.
	Unknown []string
}

// UnsupportedError reports a profile feature the translation cannot
// express exactly: the profile is refused rather than loosened.
type UnsupportedError struct {
	What string
}

func (e *UnsupportedError) Error() string { return "seccomp profile: unsupported: " + e.What }

// Default evaluates docker's default profile for caps (see [DefaultCaps])
// on the running kernel and architecture, the way docker does before it
// hands the profile to runc.
func Default(caps []string) (*specs.LinuxSeccomp, error) {
	spec := &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: caps}}}
	p, err := moby.GetDefaultProfile(spec)
	if err != nil {
		return nil, fmt.Errorf("docker's default seccomp profile: %w", err)
	}
	return p, nil
}

// action translates a profile action and its errno (nil: EPERM, as runc
// does).
func action(a specs.LinuxSeccompAction, errno *uint) (Action, error) {
	switch a {
	case specs.ActAllow:
		return ActionAllow, nil
	case specs.ActErrno:
		e := uint(unix.EPERM)
		if errno != nil {
			e = *errno
		}
		if e > unix.SECCOMP_RET_DATA {
			return 0, &UnsupportedError{fmt.Sprintf("errno %d", e)}
		}
		return ActionErrno | Action(e), nil
	case specs.ActKill, specs.ActKillThread:
		return ActionKillThread, nil
	case specs.ActKillProcess:
		return ActionKillProcess, nil
	case specs.ActTrap:
		return ActionTrap, nil
	case specs.ActLog:
		return ActionLog, nil
	}
	return 0, &UnsupportedError{fmt.Sprintf("action %q", a)}
}

// conditions checks a rule's argument comparisons and splits them into
// alternatives as runc does: all of them must hold, unless one argument is
// compared more than once, when each comparison becomes a rule of its own
// (moby's socket rules rely on it).
func conditions(args []specs.LinuxSeccompArg) ([][]specs.LinuxSeccompArg, error) {
	seen := map[uint]bool{}
	repeated := false
	for _, a := range args {
		if a.Index > 5 {
			return nil, &UnsupportedError{fmt.Sprintf("argument index %d", a.Index)}
		}
		switch a.Op {
		case specs.OpEqualTo, specs.OpNotEqual, specs.OpLessThan, specs.OpLessEqual,
			specs.OpGreaterThan, specs.OpGreaterEqual, specs.OpMaskedEqual:
		default:
			return nil, &UnsupportedError{fmt.Sprintf("operator %q", a.Op)}
		}
		repeated = repeated || seen[a.Index]
		seen[a.Index] = true
	}
	if !repeated {
		return [][]specs.LinuxSeccompArg{slices.Clone(args)}, nil
	}
	alts := make([][]specs.LinuxSeccompArg, len(args))
	for i, a := range args {
		alts[i] = []specs.LinuxSeccompArg{a}
	}
	return alts, nil
}

// specArch names the architectures the filter is made for as profiles do.
var specArch = map[*arch.Info]specs.Arch{arch.X86_64: specs.ArchX86_64, arch.I386: specs.ArchX86}

// Translate reduces an evaluated profile to a table for info's
// architecture. A system call with rules of different actions is refused,
// as is any feature the BPF could not express exactly. Rules whose action
// is the default's are dropped, as runc does.
func Translate(p *specs.LinuxSeccomp, info *arch.Info) (*Table, error) {
	if len(p.Flags) > 0 || p.ListenerPath != "" {
		return nil, &UnsupportedError{"flags or a listener"}
	}
	// libseccomp kills the calls of an architecture the profile does not
	// list; the filter here has both architectures, so both must be
	// listed (or none, which would mean the native one only).
	if a, ok := specArch[info]; !ok || len(p.Architectures) > 0 && !slices.Contains(p.Architectures, a) {
		return nil, &UnsupportedError{fmt.Sprintf("a profile without architecture %s", info.Name)}
	}
	def, err := action(p.DefaultAction, p.DefaultErrnoRet)
	if err != nil {
		return nil, fmt.Errorf("default action: %w", err)
	}
	t := &Table{Arch: info, Default: def, Syscalls: map[string]Rule{}}
	unknown := map[string]bool{}
	for _, s := range p.Syscalls {
		act, err := action(s.Action, s.ErrnoRet)
		if err != nil {
			return nil, fmt.Errorf("rule for %v: %w", s.Names, err)
		}
		conds, err := conditions(s.Args)
		if err != nil {
			return nil, fmt.Errorf("rule for %v: %w", s.Names, err)
		}
		if act == def {
			continue
		}
		for _, name := range s.Names {
			if _, ok := info.SyscallNames[name]; !ok {
				unknown[name] = true
				continue
			}
			r, ok := t.Syscalls[name]
			switch {
			case !ok:
				r = Rule{Action: act}
				if len(s.Args) > 0 {
					r.Conditions = slices.Clone(conds)
				}
			case r.Action != act:
				return nil, &UnsupportedError{fmt.Sprintf("rules of different actions for %s", name)}
			case len(r.Conditions) == 0:
				// Always, already.
			case len(s.Args) == 0:
				r.Conditions = nil
			default:
				r.Conditions = append(r.Conditions, conds...)
			}
			t.Syscalls[name] = r
		}
	}
	t.Unknown = slices.Sorted(maps.Keys(unknown))
	return t, nil
}

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
	offArgs = 16
)

func stmt(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }

func jump(op uint16, k uint32, jt, jf int) unix.SockFilter {
	return unix.SockFilter{Code: unix.BPF_JMP | op | unix.BPF_K, K: k, Jt: uint8(jt), Jf: uint8(jf)}
}

func load(off uint32) unix.SockFilter { return stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, off) }

func ret(a Action) unix.SockFilter { return stmt(unix.BPF_RET|unix.BPF_K, uint32(a)) }

// words are the halves of a 64-bit argument or value, high first. An
// argument's halves sit in seccomp_data in the kernel's byte order.
func words(v uint64) (hi, lo uint32) { return uint32(v >> 32), uint32(v) }

func argOffsets(index uint) (hi, lo uint32) {
	off := uint32(offArgs + 8*index)
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 { // little-endian
		return off + 4, off
	}
	return off, off + 4
}

// compare emits the test of one comparison: it falls through when the
// comparison holds and jumps to fail (a count of instructions from the
// end of the test) when not. wide compares all 64 bits of the argument,
// as libseccomp does on 64-bit architectures; otherwise only the low 32
// bits count, as on 32-bit ones.
func compare(a specs.LinuxSeccompArg, wide bool, fail int) ([]unix.SockFilter, error) {
	offHi, offLo := argOffsets(a.Index)
	vHi, vLo := words(a.Value)
	mHi, mLo := words(a.Value)
	if a.Op == specs.OpMaskedEqual {
		vHi, vLo = words(a.ValueTwo)
	}
	if !wide && (vHi != 0 || mHi != 0) {
		return nil, &UnsupportedError{fmt.Sprintf("value %#x for a 32-bit architecture", a.Value)}
	}
	// Each test below is given as high-word instructions then low-word
	// ones; jumps are relative to the next instruction, so "to fail" is
	// the number of instructions left in the test plus fail.
	var hi, lo []unix.SockFilter
	switch a.Op {
	case specs.OpEqualTo:
		hi = []unix.SockFilter{load(offHi), jump(unix.BPF_JEQ, vHi, 0, -1)}
		lo = []unix.SockFilter{load(offLo), jump(unix.BPF_JEQ, vLo, 0, -1)}
	case specs.OpMaskedEqual:
		hi = []unix.SockFilter{load(offHi), stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, mHi), jump(unix.BPF_JEQ, vHi, 0, -1)}
		lo = []unix.SockFilter{load(offLo), stmt(unix.BPF_ALU|unix.BPF_AND|unix.BPF_K, mLo), jump(unix.BPF_JEQ, vLo, 0, -1)}
	case specs.OpNotEqual:
		// The high words differ: holds (skip the low test).
		hi = []unix.SockFilter{load(offHi), jump(unix.BPF_JEQ, vHi, 0, -2)}
		lo = []unix.SockFilter{load(offLo), jump(unix.BPF_JEQ, vLo, -1, 0)}
	case specs.OpGreaterThan, specs.OpGreaterEqual:
		op := uint16(unix.BPF_JGT)
		if a.Op == specs.OpGreaterEqual {
			op = unix.BPF_JGE
		}
		// High above: holds; high below: fails; equal: the low words decide.
		hi = []unix.SockFilter{load(offHi), jump(unix.BPF_JGT, vHi, -2, 0), jump(unix.BPF_JEQ, vHi, 0, -1)}
		lo = []unix.SockFilter{load(offLo), jump(op, vLo, 0, -1)}
	case specs.OpLessThan, specs.OpLessEqual:
		op := uint16(unix.BPF_JGE)
		if a.Op == specs.OpLessEqual {
			op = unix.BPF_JGT
		}
		// High above: fails; high below: holds; equal: the low words decide.
		hi = []unix.SockFilter{load(offHi), jump(unix.BPF_JGT, vHi, -1, 0), jump(unix.BPF_JEQ, vHi, 0, -2)}
		lo = []unix.SockFilter{load(offLo), jump(op, vLo, -1, 0)}
	default:
		return nil, &UnsupportedError{fmt.Sprintf("operator %q", a.Op)}
	}
	var test []unix.SockFilter
	if wide {
		test = append(test, hi...)
	}
	test = append(test, lo...)
	// Resolve the markers: -1 is "fail", -2 is "holds" (the end of the
	// test).
	for i := range test {
		left := len(test) - i - 1
		for _, j := range []*uint8{&test[i].Jt, &test[i].Jf} {
			switch int8(*j) {
			case -1:
				if left+fail > 255 {
					return nil, fmt.Errorf("seccomp filter: a jump of %d instructions", left+fail)
				}
				*j = uint8(left + fail)
			case -2:
				*j = uint8(left)
			}
		}
	}
	return test, nil
}

// section is the filter for t's architecture, entered with nothing
// loaded: a search tree on the call number whose leaves compare a few
// calls each.
// entry is a call of a table, by number.
type entry struct {
	nr   uint32
	name string
}

func section(t *Table, wide bool) ([]unix.SockFilter, error) {
	var calls []entry
	for name := range t.Syscalls {
		calls = append(calls, entry{uint32(t.Arch.SyscallNames[name]) | uint32(t.Arch.SeccompMask), name})
	}
	slices.SortFunc(calls, func(a, b entry) int { return int(a.nr) - int(b.nr) })

	out := []unix.SockFilter{load(offNr)}
	if t.Arch == arch.X86_64 {
		// x32 calls (the guest kernel has no x32 ABI and would say the same).
		out = append(out, jump(unix.BPF_JGE, x32Bit, 0, 1), ret(ActionErrno|Action(unix.ENOSYS)))
	}
	var err error
	var tree func(calls []entry) []unix.SockFilter
	tree = func(calls []entry) []unix.SockFilter {
		if len(calls) > leafCalls {
			// A binary search on the number: the kernel runs the filter
			// for each call number when it loads it (to cache the calls it
			// always allows), and a restored VM emulates that.
			mid := len(calls) / 2
			left, right := tree(calls[:mid]), tree(calls[mid:])
			out := []unix.SockFilter{jump(unix.BPF_JGE, calls[mid].nr, 0, 1), stmt(unix.BPF_JMP|unix.BPF_JA, uint32(len(left)))}
			return append(append(out, left...), right...)
		}
		if leaf, ok := plainLeaf(t, calls); ok {
			return leaf
		}
		var out []unix.SockFilter
		for _, c := range calls {
			r := t.Syscalls[c.name]
			if len(r.Conditions) == 0 {
				out = append(out, jump(unix.BPF_JEQ, c.nr, 0, 1), ret(r.Action))
				continue
			}
			block, berr := conditional(r, c.name, t.Default, wide)
			if berr != nil {
				err = berr
			}
			out = append(out, jump(unix.BPF_JEQ, c.nr, 1, 0), stmt(unix.BPF_JMP|unix.BPF_JA, uint32(len(block))))
			out = append(out, block...)
		}
		// Each leaf ends in the default: nothing falls into the next one.
		return append(out, ret(t.Default))
	}
	out = append(out, tree(calls)...)
	return out, err
}

// leafCalls bounds the calls a leaf of the search tree compares in turn.
const leafCalls = 8

// plainLeaf is the leaf for calls without conditions: each comparison
// jumps to a return of its action shared by the leaf, the default's
// first. Fewer instructions are less for the kernel to check and
// translate when it loads the filter.
func plainLeaf(t *Table, calls []entry) ([]unix.SockFilter, bool) {
	var actions []Action
	for _, c := range calls {
		r := t.Syscalls[c.name]
		if len(r.Conditions) > 0 {
			return nil, false
		}
		if !slices.Contains(actions, r.Action) {
			actions = append(actions, r.Action)
		}
	}
	var out []unix.SockFilter
	for i, c := range calls {
		// After this comparison: the other comparisons, the default's
		// return, then the actions' returns.
		to := len(calls) - i - 1 + 1 + slices.Index(actions, t.Syscalls[c.name].Action)
		out = append(out, jump(unix.BPF_JEQ, c.nr, to, 0))
	}
	out = append(out, ret(t.Default))
	for _, a := range actions {
		out = append(out, ret(a))
	}
	return out, true
}

// conditional is the block of a call with conditions: each alternative's
// tests then its action; when none holds, the default action. The block
// ends in a return, so nothing after it runs with an argument loaded.
func conditional(r Rule, name string, def Action, wide bool) ([]unix.SockFilter, error) {
	var block []unix.SockFilter
	for _, alt := range r.Conditions {
		tests := make([][]unix.SockFilter, len(alt))
		size := 1 // the action
		// Made backwards: each test jumps past what follows it in the
		// alternative, to the next alternative.
		for i := len(alt) - 1; i >= 0; i-- {
			tst, err := compare(alt[i], wide, size)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			tests[i] = tst
			size += len(tst)
		}
		for _, tst := range tests {
			block = append(block, tst...)
		}
		block = append(block, ret(r.Action))
	}
	return append(block, ret(def)), nil
}

// Assemble compiles the tables of the x86_64 and i386 architectures (the
// guest kernel runs both ABIs; docker's profile lists both, and x32,
// which the guest kernel lacks and which gets ENOSYS here) into one
// program: calls of any other architecture kill the process.
func Assemble(x86_64, i386 *Table) ([]unix.SockFilter, error) {
	if x86_64.Arch != arch.X86_64 || i386.Arch != arch.I386 {
		return nil, &UnsupportedError{"tables for other architectures than x86_64 and i386"}
	}
	s64, err := section(x86_64, true)
	if err != nil {
		return nil, err
	}
	s32, err := section(i386, false)
	if err != nil {
		return nil, err
	}
	prog := []unix.SockFilter{
		load(offArch),
		jump(unix.BPF_JEQ, uint32(arch.X86_64.ID), 0, 1),
		stmt(unix.BPF_JMP|unix.BPF_JA, 3),
		jump(unix.BPF_JEQ, uint32(arch.I386.ID), 0, 1),
		stmt(unix.BPF_JMP|unix.BPF_JA, uint32(1+len(s64))),
		ret(ActionKillProcess),
	}
	prog = append(append(prog, s64...), s32...)
	if len(prog) > maxInstructions {
		return nil, fmt.Errorf("seccomp filter: %d instructions, more than the kernel's %d", len(prog), maxInstructions)
	}
	return prog, nil
}

// Program is docker's default profile for caps, as a BPF program for the
// guest's kernel, with the tables it was assembled from by architecture
// name ("x86_64", "i386"): what the guest's committed filter is generated
// from. moby decides the profile's architecture rules for the running one,
// which must be x86_64.
func Program(caps []string) ([]unix.SockFilter, map[string]*Table, error) {
	if runtime.GOARCH != "amd64" {
		return nil, nil, &UnsupportedError{"generating on " + runtime.GOARCH + ", not amd64"}
	}
	p, err := Default(caps)
	if err != nil {
		return nil, nil, err
	}
	tables := map[string]*Table{}
	for _, info := range []*arch.Info{arch.X86_64, arch.I386} {
		if tables[info.Name], err = Translate(p, info); err != nil {
			return nil, nil, err
		}
	}
	prog, err := Assemble(tables[arch.X86_64.Name], tables[arch.I386.Name])
	if err != nil {
		return nil, nil, err
	}
	return prog, tables, nil
}

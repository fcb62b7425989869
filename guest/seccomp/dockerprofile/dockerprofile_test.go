package dockerprofile

import (
	"errors"
	"maps"
	"slices"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/google/go-cmp/cmp"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

var (
	eperm  = ActionErrno | Action(unix.EPERM)
	enosys = ActionErrno | Action(unix.ENOSYS)
	nsMask = uint64(unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP)
)

func defaultTable(t *testing.T, caps []string, info *arch.Info) *Table {
	t.Helper()
	p, err := Default(caps)
	if err != nil {
		t.Fatal(err)
	}
	tab, err := Translate(p, info)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// pick returns t's rules for names; a name without a rule maps to nil
// (the default action).
func pick(t *Table, names ...string) map[string]*Rule {
	m := map[string]*Rule{}
	for _, n := range names {
		if r, ok := t.Syscalls[n]; ok {
			m[n] = &r
		} else {
			m[n] = nil
		}
	}
	return m
}

func eq(i uint, v uint64) []specs.LinuxSeccompArg {
	return []specs.LinuxSeccompArg{{Index: i, Value: v, Op: specs.OpEqualTo}}
}

// TestDefaultProfile reads docker's default profile for docker's default
// capabilities: the calls docker documents as allowed, denied, or allowed
// with conditions.
func TestDefaultProfile(t *testing.T) {
	tab := defaultTable(t, DefaultCaps, arch.X86_64)
	if tab.Default != eperm {
		t.Errorf("default %v, want errno EPERM", tab.Default)
	}
	allow := &Rule{Action: ActionAllow}
	want := map[string]*Rule{
		"read": allow, "write": allow, "execve": allow, "fork": allow, "wait4": allow,
		"setuid": allow, "setgroups": allow, "ptrace": allow,
		"chroot": allow, // CAP_SYS_CHROOT is docker's
		"clone":  {Action: ActionAllow, Conditions: [][]specs.LinuxSeccompArg{{{Index: 0, Value: nsMask, Op: specs.OpMaskedEqual}}}},
		"clone3": {Action: enosys},
		"personality": {Action: ActionAllow, Conditions: [][]specs.LinuxSeccompArg{
			eq(0, 0), eq(0, 8), eq(0, 0x20000), eq(0, 0x20008), eq(0, 0xffffffff),
		}},
		// Denied: no rule, the default.
		"keyctl": nil, "add_key": nil, "request_key": nil, "kexec_load": nil, "kexec_file_load": nil,
		"reboot": nil, "mount": nil, "umount2": nil, "unshare": nil, "setns": nil, "bpf": nil,
		"perf_event_open": nil, "init_module": nil, "swapon": nil, "pivot_root": nil,
		"open_by_handle_at": nil, "syslog": nil, "sethostname": nil, "acct": nil, "settimeofday": nil, "userfaultfd": nil,
	}
	names := slices.Collect(maps.Keys(want))
	if d := cmp.Diff(want, pick(tab, names...)); d != "" {
		t.Errorf("rules (-want +got):\n%s", d)
	}
	// socket: every domain but a few, AF_VSOCK and AF_ALG among them.
	sock := tab.Syscalls["socket"]
	allowed := func(domain uint64) bool {
		for _, alt := range sock.Conditions {
			if holds(alt, [6]uint64{domain}, true) {
				return true
			}
		}
		return false
	}
	for domain, want := range map[uint64]bool{unix.AF_UNIX: true, unix.AF_INET: true, unix.AF_INET6: true, unix.AF_NETLINK: true, unix.AF_PACKET: true, unix.AF_VSOCK: false, unix.AF_ALG: false, 0: true} {
		if got := allowed(domain); got != want {
			t.Errorf("socket(%d) allowed %v, want %v", domain, got, want)
		}
	}
}

// TestDefaultProfileSysAdmin: CAP_SYS_ADMIN brings the calls docker gives
// with it, and lifts clone's condition.
func TestDefaultProfileSysAdmin(t *testing.T) {
	tab := defaultTable(t, append(slices.Clone(DefaultCaps), "CAP_SYS_ADMIN"), arch.X86_64)
	allow := &Rule{Action: ActionAllow}
	want := map[string]*Rule{"mount": allow, "umount2": allow, "unshare": allow, "setns": allow, "clone": allow, "clone3": allow, "keyctl": nil}
	if d := cmp.Diff(want, pick(tab, "mount", "umount2", "unshare", "setns", "clone", "clone3", "keyctl")); d != "" {
		t.Errorf("rules with CAP_SYS_ADMIN (-want +got):\n%s", d)
	}
}

// TestTranslate checks runc's reading of rules on small profiles.
func TestTranslate(t *testing.T) {
	errno := func(e uint) *uint { return &e }
	def := specs.LinuxSeccomp{DefaultAction: specs.ActErrno}
	with := func(calls ...specs.LinuxSyscall) *specs.LinuxSeccomp {
		p := def
		p.Syscalls = calls
		return &p
	}
	a0 := specs.LinuxSeccompArg{Index: 0, Value: 1, Op: specs.OpEqualTo}
	a0b := specs.LinuxSeccompArg{Index: 0, Value: 2, Op: specs.OpEqualTo}
	a1 := specs.LinuxSeccompArg{Index: 1, Value: 3, Op: specs.OpGreaterThan}
	for _, tc := range []struct {
		name        string
		profile     *specs.LinuxSeccomp
		want        map[string]Rule
		unknown     []string
		unsupported bool
	}{
		{
			name:    "comparisons of different arguments: all must hold",
			profile: with(specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{a0, a1}}),
			want:    map[string]Rule{"read": {Action: ActionAllow, Conditions: [][]specs.LinuxSeccompArg{{a0, a1}}}},
		},
		{
			name:    "one argument compared twice: either holds (runc)",
			profile: with(specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{a0, a0b, a1}}),
			want:    map[string]Rule{"read": {Action: ActionAllow, Conditions: [][]specs.LinuxSeccompArg{{a0}, {a0b}, {a1}}}},
		},
		{
			name: "rules for one call add up; an unconditional one wins",
			profile: with(
				specs.LinuxSyscall{Names: []string{"read", "write"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{a0}},
				specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{a0b}},
				specs.LinuxSyscall{Names: []string{"write"}, Action: specs.ActAllow},
				specs.LinuxSyscall{Names: []string{"write"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{a1}},
			),
			want: map[string]Rule{
				"read":  {Action: ActionAllow, Conditions: [][]specs.LinuxSeccompArg{{a0}, {a0b}}},
				"write": {Action: ActionAllow},
			},
		},
		{
			name: "errno, default EPERM; the default's own action dropped; other architectures' names skipped",
			profile: with(
				specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: errno(uint(unix.ENOSYS))},
				specs.LinuxSyscall{Names: []string{"keyctl"}, Action: specs.ActErrno},
				specs.LinuxSyscall{Names: []string{"socketcall", "kill"}, Action: specs.ActKillProcess},
			),
			want:    map[string]Rule{"clone3": {Action: enosys}, "kill": {Action: ActionKillProcess}},
			unknown: []string{"socketcall"},
		},
		{
			name: "one call, two actions",
			profile: with(
				specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActAllow},
				specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActLog},
			),
			unsupported: true,
		},
		{
			name:        "notify",
			profile:     with(specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActNotify}),
			unsupported: true,
		},
		{
			name:        "argument index",
			profile:     with(specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{{Index: 6, Op: specs.OpEqualTo}}}),
			unsupported: true,
		},
		{
			name:        "operator",
			profile:     with(specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActAllow, Args: []specs.LinuxSeccompArg{{Op: "SCMP_CMP_XOR"}}}),
			unsupported: true,
		},
		{
			name:        "errno out of range",
			profile:     with(specs.LinuxSyscall{Names: []string{"read"}, Action: specs.ActErrno, ErrnoRet: errno(1 << 16)}),
			unsupported: true,
		},
		{
			name:        "architectures without x86_64",
			profile:     &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Architectures: []specs.Arch{specs.ArchAARCH64}},
			unsupported: true,
		},
		{
			name:        "flags",
			profile:     &specs.LinuxSeccomp{DefaultAction: specs.ActErrno, Flags: []specs.LinuxSeccompFlag{specs.LinuxSeccompFlagLog}},
			unsupported: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, err := Translate(tc.profile, arch.X86_64)
			var ue *UnsupportedError
			if tc.unsupported {
				if !errors.As(err, &ue) {
					t.Fatalf("Translate: %v, want an UnsupportedError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, tab.Syscalls); d != "" {
				t.Errorf("rules (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.unknown, tab.Unknown); d != "" {
				t.Errorf("unknown (-want +got):\n%s", d)
			}
		})
	}
}

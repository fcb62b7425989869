package guest

import (
	"errors"
	"time"
)

// Kernel command line parameters the guest init understands.
const (
	// CmdlineImage names the block device holding the EROFS image.
	CmdlineImage = "pe.image"
	// CmdlineIO names the block device holding the I/O file.
	CmdlineIO = "pe.io"
	// CmdlineDebug turns on verbose init logging on the console when "1".
	CmdlineDebug = "pe.debug"
	// CmdlineSnapshot, when "1", boots the guest for a snapshot: the init
	// gets ready (modules loaded, image mounted), writes [SnapshotReady]
	// on the console and waits for one byte from the console before it
	// reads the I/O disk, which it has not touched before.
	CmdlineSnapshot = "pe.snapshot"
	// SnapshotImage is the [CmdlineSnapshot] value of an image's snapshot.
	SnapshotImage = "1"
	// SnapshotBoot is the [CmdlineSnapshot] value of a boot snapshot: the
	// init gets ready for a request of any image (modules loaded, disks
	// found, nothing mounted) before it writes [SnapshotReady]; a
	// restored VM then mounts the image disk it is given.
	SnapshotBoot = "boot"
	// CmdlineHostStop, when "1", says the host stops the VM once it reads
	// [ResultReady] on the console: the init then waits for that, up to
	// [HostStopGrace], before it powers off by itself.
	CmdlineHostStop = "pe.hoststop"

	// DefaultImageDevice is the image disk when the command line names none:
	// the first virtio disk.
	DefaultImageDevice = "/dev/vda"
	// DefaultIODevice is the I/O disk when the command line names none.
	DefaultIODevice = "/dev/vdb"
)

// Paths inside the initramfs the init relies on (package
// guest/initramfs writes them).
const (
	// ModulesDir holds <name>.ko for every module to load.
	ModulesDir = "/lib/modules"
	// ModulesOrder lists the module names, one a line, in load order.
	ModulesOrder = "/lib/modules/order"
)

// The snapshot hand-shake on the console (see [CmdlineSnapshot]).
const (
	// SnapshotReady is the line the init writes when the host may pause
	// and save the VM.
	SnapshotReady = "pe-init: ready for a snapshot"
	// SnapshotWake is what the host writes on the console of a restored
	// VM: the guest wakes on its first byte.
	SnapshotWake = "\n"
)

// ResultReady is the console line the init writes, alone on its line,
// once the result is on the I/O disk (written and flushed): the host may
// stop the VM from then on instead of waiting for it to power off. Only
// the init writes raw lines on the console; kernel messages start with
// their time stamp. When the request has a [Request.Nonce], the line is
// ResultReady, a space and the nonce (see [ResultReadyLine]).
const ResultReady = "pe-init: result ready"

// ResultReadyLine is the result-ready line for a request with nonce
// ("" for none).
func ResultReadyLine(nonce string) string {
	if nonce == "" {
		return ResultReady
	}
	return ResultReady + " " + nonce
}

// HostStopGrace is how long an init booted with [CmdlineHostStop] waits,
// after [ResultReady], for the host to stop the VM.
const HostStopGrace = 5 * time.Second

// Defaults the guest applies to a [Request].
const (
	// DefaultHostname is the program's hostname when the request has none.
	DefaultHostname = "pe"
	// DefaultPidsLimit is the program cgroup's pids.max when the request has none.
	DefaultPidsLimit = 1024
	// DefaultMaxOutput is the per-stream output cap when a request has none.
	DefaultMaxOutput = 1 << 20
	// SeedSize is the number of random bytes the host sends to seed the guest RNG.
	SeedSize = 64

	// InputDir and OutputDir are where the program finds its input files and
	// leaves its output files.
	InputDir  = "/run/pe/input"
	OutputDir = "/run/pe/output"
)

// Request is what the host asks the guest to run. The host has already merged
// the image config (OCI rules) and resolved the user; the guest runs it as
// given.
type Request struct {
	// Argv is the program and its arguments. argv[0] is resolved by the guest
	// against PATH in Env when it has no slash.
	Argv []string `json:"argv"`
	// Env is the program's environment, "K=V" each.
	Env []string `json:"env,omitempty"`
	// Cwd is the working directory: absolute, inside the container root.
	Cwd string `json:"cwd,omitempty"`
	// UID, GID and Groups are the program's credentials inside its user
	// namespace (0 is the container's root).
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
	// Timeout is the wall time the program may run; the guest kills it after
	// that and reports TimedOut.
	Timeout time.Duration `json:"timeout_ns"`
	// MaxOutput caps each of stdout and stderr and the output directory
	// archive, in bytes. Zero means the host's limit (see [WriteIOFile]).
	MaxOutput int64 `json:"max_output"`
	// MemoryLimit is memory.max, in bytes, of the program's cgroup. Zero lets
	// the guest decide: the VM's memory minus a reserve for the init.
	MemoryLimit int64 `json:"memory_limit,omitempty"`
	// PidsLimit is pids.max of the program's cgroup (0 = [DefaultPidsLimit]).
	PidsLimit int `json:"pids_limit,omitempty"`
	// HasStdin says stdin bytes are present in the I/O file; without them the
	// program's stdin is /dev/null. [WriteIOFile] sets it.
	HasStdin bool `json:"has_stdin,omitempty"`
	// Hostname is the program's hostname ([DefaultHostname] if empty).
	Hostname string `json:"hostname,omitempty"`
	// Time is the host's wall-clock time, set in the guest before running.
	Time time.Time `json:"time"`
	// Seed is [SeedSize] random bytes credited to the guest kernel's RNG
	// before running, so the program does not wait for entropy.
	Seed []byte `json:"seed,omitempty"`
	// Nonce is a secret random string (crypto/rand.Text), new for each
	// run, that the init copies
	// into [Result.Nonce] and its result-ready line; the program never
	// sees it. A host that checks both trusts neither a console line nor
	// a result the program could have forged (see docs/guest.md).
	Nonce string `json:"nonce,omitempty"`
	// Stream, when set, asks the init to use the data channel (see
	// [StreamRequest] and stream.go): output copied to it as written,
	// stdin and a terminal from it as asked. Without it the init leaves
	// the channel closed.
	Stream *StreamRequest `json:"stream,omitempty"`
}

// Result is what the guest reports about one run.
type Result struct {
	// ExitCode is the program's exit status, 128+N when signal N killed it,
	// 127 when the command was not found, and non-zero when Error is set.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that killed the program ("SIGKILL"), or "".
	Signal string `json:"signal,omitempty"`
	// TimedOut says the guest killed the program at the request's Timeout.
	TimedOut bool `json:"timed_out,omitempty"`
	// StdoutTruncated and StderrTruncated say the stream went past MaxOutput;
	// the rest was read and dropped while the program kept running.
	StdoutTruncated bool `json:"stdout_truncated,omitempty"`
	StderrTruncated bool `json:"stderr_truncated,omitempty"`
	// OutputTruncated says the output directory did not fit in MaxOutput (or
	// held too many files); the archive holds the entries that fitted.
	OutputTruncated bool `json:"output_truncated,omitempty"`
	// StdoutBytes and StderrBytes count everything the program wrote to each
	// stream, including what was dropped.
	StdoutBytes int64 `json:"stdout_bytes,omitempty"`
	StderrBytes int64 `json:"stderr_bytes,omitempty"`
	// Error is set when pe's guest side failed before or around the program
	// (bad request, mount failure, command not found, ...).
	Error string `json:"error,omitempty"`
	// Rusage is the resource usage of the program and its descendants.
	Rusage Rusage `json:"rusage"`
	// Timings holds guest-side phases in microseconds: "boot_to_init" (from
	// /proc/uptime at init start), "modules", "mounts", "program", "collect".
	Timings map[string]int64 `json:"timings,omitempty"`
	// Nonce is the request's [Request.Nonce]; empty when the init failed
	// before it could read the request.
	Nonce string `json:"nonce,omitempty"`
}

// Rusage is the resource usage of a run.
type Rusage struct {
	// UserMs and SysMs are CPU time in milliseconds.
	UserMs int64 `json:"user_ms"`
	SysMs  int64 `json:"sys_ms"`
	// MaxRSSKB is the largest resident set of one process, in KiB.
	MaxRSSKB int64 `json:"max_rss_kb"`
	// MemoryPeakKB is the program cgroup's peak memory use (processes, page
	// cache and tmpfs files it wrote), in KiB; 0 when unknown.
	MemoryPeakKB int64 `json:"memory_peak_kb,omitempty"`
	// OOMKills counts processes the kernel killed for exceeding MemoryLimit.
	OOMKills int64 `json:"oom_kills,omitempty"`
	// MinorFaults and MajorFaults are page faults without and with I/O.
	MinorFaults int64 `json:"minor_faults,omitempty"`
	MajorFaults int64 `json:"major_faults,omitempty"`
	// VoluntaryCtxSw and InvoluntaryCtxSw are context switches.
	VoluntaryCtxSw   int64 `json:"voluntary_ctx_switches,omitempty"`
	InvoluntaryCtxSw int64 `json:"involuntary_ctx_switches,omitempty"`
}

// Limits bounds what the host accepts from the guest and writes for it.
type Limits struct {
	// MaxOutput caps each of stdout, stderr and the output archive, and the
	// total bytes [Response.ExtractOutputs] writes. A request's MaxOutput may
	// not exceed it.
	MaxOutput int64
	// MaxFiles caps the entries of the output archive.
	MaxFiles int
	// MaxRequest caps the encoded request (argv, env, ...), in bytes.
	MaxRequest int64
}

// DefaultLimits returns the limits pe uses unless told otherwise.
func DefaultLimits() Limits {
	return Limits{
		MaxOutput:  DefaultMaxOutput,
		MaxFiles:   4096,
		MaxRequest: 4 << 20,
	}
}

// WithDefaults returns l with its zero (or negative) fields taken from
// DefaultLimits.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	if l.MaxOutput <= 0 {
		l.MaxOutput = d.MaxOutput
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = d.MaxFiles
	}
	if l.MaxRequest <= 0 {
		l.MaxRequest = d.MaxRequest
	}
	return l
}

// Errors [ReadResult] wraps, so callers can tell a guest that never finished
// from one that wrote garbage.
var (
	// ErrNoResult means the guest never committed a result: it crashed, hung
	// or was killed before the end.
	ErrNoResult = errors.New("the guest wrote no result")
	// ErrBadResponse means the guest wrote something that breaks the protocol.
	ErrBadResponse = errors.New("bad guest response")
)

// Response is a validated result read back from an I/O file.
type Response struct {
	// Result is the guest's report.
	Result Result
	// Stdout and Stderr are what the program wrote, up to MaxOutput each.
	// They need not be valid UTF-8.
	Stdout, Stderr []byte

	outputs []byte // tar of /run/pe/output, untrusted until ExtractOutputs
	lim     Limits
}

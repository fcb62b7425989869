package server

import (
	"encoding/json"
	"path"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/engine"
)

// RunRequest is the JSON of POST /api/v2/runi: the original's four fields,
// each null (absent) to keep the image's, and pe's optional extensions.
type RunRequest struct {
	// Stdin names a file of the input archive to give the program as
	// standard input.
	Stdin *string `json:"stdin"`
	// Entrypoint, when not null (even []), replaces the image's
	// entrypoint; the image's cmd stays unless Cmd is given.
	Entrypoint []string `json:"entrypoint"`
	// Cmd, when not null, replaces the image's cmd.
	Cmd []string `json:"cmd"`
	// Env, when not null, replaces the image's environment (a default
	// PATH is still added).
	Env []string `json:"env"`

	// TimeoutMs asks for a shorter time limit than the server's (pe).
	TimeoutMs int64 `json:"timeout_ms,omitempty"`
	// Workdir replaces the working directory (pe); the default is the
	// image's, or /run/pe/input when the request carries input files.
	Workdir string `json:"workdir,omitempty"`
}

// devNull is the stdin the original client's menu offers first: "no
// input", as the original ran it.
const devNull = "/dev/null"

// normalize reads the request as the original server did: an empty env
// entry (a blank line of the page's env editor) is dropped, and a stdin
// of "/dev/null" or "" is no stdin.
func (r *RunRequest) normalize() {
	if r.Env != nil {
		env := r.Env[:0]
		for _, kv := range r.Env {
			if kv != "" {
				env = append(env, kv)
			}
		}
		r.Env = env
	}
	if r.Stdin != nil && (*r.Stdin == devNull || *r.Stdin == "") {
		r.Stdin = nil
	}
}

// check refuses, with a 400 naming the problem, what the engine or the
// guest would refuse later as its own failure: env entries that are not
// NAME=VALUE, NUL bytes, an empty program name, a relative working
// directory, a negative time limit.
func (r *RunRequest) check() error {
	for _, kv := range r.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return badRequest("BadRequest", "env entry %q: want NAME=VALUE", clip(kv, 100))
		}
	}
	for _, list := range [][]string{r.Entrypoint, r.Cmd, r.Env, {r.Workdir}} {
		for _, s := range list {
			if strings.IndexByte(s, 0) >= 0 {
				return badRequest("BadRequest", "%q holds a NUL byte, which no command line or environment may hold", clip(s, 100))
			}
		}
	}
	if len(r.Entrypoint) > 0 && r.Entrypoint[0] == "" || len(r.Entrypoint) == 0 && len(r.Cmd) > 0 && r.Cmd[0] == "" {
		return badRequest("OciSpec", "the command's first word (the program) is empty")
	}
	if r.Workdir != "" && !path.IsAbs(r.Workdir) {
		return badRequest("BadRequest", "workdir %q: want an absolute path", clip(r.Workdir, 100))
	}
	if r.TimeoutMs < 0 {
		return badRequest("BadRequest", "timeout_ms %d: want a positive number", r.TimeoutMs)
	}
	return nil
}

// clip shortens s for an error message: a client's string may be as long
// as the body.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

// Response kinds, as the original's peinit::Response has them.
const (
	KindOk       = "Ok"
	KindOvertime = "Overtime"
	KindPanic    = "Panic"
)

// RunResponse is the response JSON of a run: the original's internally
// tagged enum (kind Ok, Overtime or Panic) plus pe's extensions, which the
// original client ignores.
type RunResponse struct {
	Kind           string  `json:"kind"`
	Siginfo        Siginfo `json:"siginfo,omitzero"`
	Rusage         *Rusage `json:"rusage,omitempty"`
	ManifestDigest string  `json:"manifest_digest,omitempty"`
	// Message is the guest-side failure of a Panic.
	Message string `json:"message,omitempty"`
	// Stdout and Stderr are set in application/json mode only: the first
	// jsonOutputBytes of each, invalid UTF-8 replaced.
	Stdout *string `json:"stdout,omitempty"`
	Stderr *string `json:"stderr,omitempty"`

	ExitCode        int     `json:"exit_code"`
	Signal          string  `json:"signal,omitempty"`
	TimedOut        bool    `json:"timed_out"`
	StdoutTruncated bool    `json:"stdout_truncated"`
	StderrTruncated bool    `json:"stderr_truncated"`
	OutputTruncated bool    `json:"output_truncated"`
	DurationMs      float64 `json:"duration_ms"`
	Image           string  `json:"image,omitempty"`
}

// jsonOutputBytes is how much of stdout and stderr a JSON-mode response
// carries, as the original.
const jsonOutputBytes = 1024

// Siginfo is the original's externally tagged wait status:
// {"Exited": code} or {"Killed": signal}. The zero value is left out.
type Siginfo struct {
	Exited *int
	Killed *int
}

// MarshalJSON implements json.Marshaler.
func (s Siginfo) MarshalJSON() ([]byte, error) {
	switch {
	case s.Killed != nil:
		return json.Marshal(map[string]int{"Killed": *s.Killed})
	case s.Exited != nil:
		return json.Marshal(map[string]int{"Exited": *s.Exited})
	}
	return []byte("null"), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (s *Siginfo) UnmarshalJSON(b []byte) error {
	var m map[string]int
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if v, ok := m["Killed"]; ok {
		s.Killed = &v
	}
	if v, ok := m["Exited"]; ok {
		s.Exited = &v
	}
	return nil
}

// IsZero reports whether s holds no status (for omitzero).
func (s Siginfo) IsZero() bool { return s.Exited == nil && s.Killed == nil }

// Timeval is struct timeval.
type Timeval struct {
	Sec  int64 `json:"sec"`
	Usec int64 `json:"usec"`
}

// Rusage is struct rusage the way the original serializes it; pe fills
// what the guest measures and leaves the fields Linux does not maintain
// at zero.
type Rusage struct {
	Utime    Timeval `json:"ru_utime"`
	Stime    Timeval `json:"ru_stime"`
	Maxrss   int64   `json:"ru_maxrss"`
	Ixrss    int64   `json:"ru_ixrss"`
	Idrss    int64   `json:"ru_idrss"`
	Isrss    int64   `json:"ru_isrss"`
	Minflt   int64   `json:"ru_minflt"`
	Majflt   int64   `json:"ru_majflt"`
	Nswap    int64   `json:"ru_nswap"`
	Inblock  int64   `json:"ru_inblock"`
	Oublock  int64   `json:"ru_oublock"`
	Msgsnd   int64   `json:"ru_msgsnd"`
	Msgrcv   int64   `json:"ru_msgrcv"`
	Nsignals int64   `json:"ru_nsignals"`
	Nvcsw    int64   `json:"ru_nvcsw"`
	Nivcsw   int64   `json:"ru_nivcsw"`
}

func msTimeval(ms int64) Timeval { return Timeval{Sec: ms / 1000, Usec: ms % 1000 * 1000} }

// responseFor turns an engine result into the API's response.
func responseFor(res *engine.RunResult, withOutput bool) *RunResponse {
	r := &RunResponse{
		Kind:            KindOk,
		ManifestDigest:  res.Image.Digest,
		ExitCode:        res.ExitCode,
		Signal:          res.Signal,
		TimedOut:        res.TimedOut,
		StdoutTruncated: res.StdoutTruncated,
		StderrTruncated: res.StderrTruncated,
		OutputTruncated: res.OutputTruncated,
		DurationMs:      float64(res.Durations["total"].Microseconds()) / 1000,
		Image:           res.Image.Reference,
	}
	ru := res.Rusage
	r.Rusage = &Rusage{
		Utime: msTimeval(ru.UserMs), Stime: msTimeval(ru.SysMs),
		Maxrss: ru.MaxRSSKB, Minflt: ru.MinorFaults, Majflt: ru.MajorFaults,
		Nvcsw: ru.VoluntaryCtxSw, Nivcsw: ru.InvoluntaryCtxSw,
	}
	switch {
	case res.Error != "":
		r.Kind, r.Message = KindPanic, res.Error
	case res.Signal != "":
		n := int(unix.SignalNum(res.Signal))
		if n == 0 {
			n = res.ExitCode - 128
		}
		r.Siginfo.Killed = &n
	default:
		code := res.ExitCode
		r.Siginfo.Exited = &code
	}
	if res.TimedOut {
		r.Kind = KindOvertime
		if r.Siginfo.IsZero() {
			nine := int(unix.SIGKILL)
			r.Siginfo.Killed = &nine
		}
	}
	if withOutput {
		out, errOut := lossyPrefix(res.Stdout, jsonOutputBytes), lossyPrefix(res.Stderr, jsonOutputBytes)
		r.Stdout, r.Stderr = &out, &errOut
		r.StdoutTruncated = r.StdoutTruncated || len(res.Stdout) > jsonOutputBytes
		r.StderrTruncated = r.StderrTruncated || len(res.Stderr) > jsonOutputBytes
	}
	return r
}

// lossyPrefix returns the first n bytes of b as a string, invalid UTF-8
// (also a character cut at n) replaced with U+FFFD.
func lossyPrefix(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return strings.ToValidUTF8(string(b), string(utf8.RuneError))
}

// ErrorBody is the JSON of every error response.
type ErrorBody struct {
	// Error is a short name of the problem (the original's variant names
	// where it had one: BadPath, BadContentType, BadRequest, ...).
	Error string `json:"error"`
	// Detail says what exactly was wrong, for a person.
	Detail string `json:"detail,omitempty"`
	// RequestID is the request's id (also its X-Request-Id header): the
	// server's log has the details under it.
	RequestID string `json:"request_id,omitempty"`
}

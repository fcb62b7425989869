package engine

import (
	"encoding/base64"
	"encoding/json"
	"maps"
	"math"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/guest"
)

// ExitTimedOut is the exit status of a program killed at its time limit,
// as timeout(1) has it.
const ExitTimedOut = 124

// ImageInfo names the image a run used.
type ImageInfo struct {
	Reference string `json:"reference"`
	Digest    string `json:"digest"`
	// Converted is set when this run pulled and converted the image
	// rather than finding it in the cache.
	Converted bool `json:"converted,omitempty"`
}

// RunResult is the outcome of a run: the guest's report, the program's
// output, and where the time went.
type RunResult struct {
	// Result is the guest's report: exit code, signal, time-out and
	// truncation flags, the guest's own error, resource usage, guest-side
	// timings.
	guest.Result
	// Stdout and Stderr are the program's output, up to the run's
	// MaxOutput each; they need not be UTF-8.
	Stdout, Stderr []byte
	// Image is the image the program ran from.
	Image ImageInfo
	// VMM and Accel say how the VM ran.
	VMM, Accel string
	// Launch says how the VM came up: LaunchBoot, LaunchBootSnapshot or
	// LaunchSnapshot (LaunchBoot for a run whose restore failed).
	Launch string
	// Durations holds the phases of the run: choose_vmm, image (lookup
	// and config merge), queue (waiting for a VM slot), initramfs,
	// io_file, vm_start, vm (boot, program and shutdown), result, total,
	// and the guest's own phases as guest_<name>; a run from a snapshot
	// adds the restore's steps as vm_start/<step name>. io_file is
	// within vm_start, and so is image for an image resolved while the
	// VM starts (an s3:// image with pe run), which adds
	// vm_start/image_wait: how long the VM waited for it.
	Durations map[string]time.Duration
	// Console is the end of the guest console.
	Console []byte
	// ImageBlocks, for a lazy image (an s3:// image read on demand), is
	// what the run's reads of it cost: chunk fetches, bytes, cache hits
	// and misses, time stalled. Nil for an image file.
	ImageBlocks *blockstore.Stats
}

// ExitStatus is the status pe run exits with: the program's exit code
// (128+N when signal N killed it), or ExitTimedOut when the time limit
// killed it.
func (r *RunResult) ExitStatus() int {
	if r.TimedOut {
		return ExitTimedOut
	}
	if r.ExitCode < 0 || r.ExitCode > 255 {
		return 255
	}
	return r.ExitCode
}

// jsonResult is the JSON form of a RunResult (pe run --json).
type jsonResult struct {
	ExitCode        int                `json:"exit_code"`
	Signal          string             `json:"signal"`
	TimedOut        bool               `json:"timed_out"`
	Stdout          *string            `json:"stdout,omitempty"`
	StdoutB64       *string            `json:"stdout_b64,omitempty"`
	Stderr          *string            `json:"stderr,omitempty"`
	StderrB64       *string            `json:"stderr_b64,omitempty"`
	StdoutTruncated bool               `json:"stdout_truncated"`
	StderrTruncated bool               `json:"stderr_truncated"`
	OutputTruncated bool               `json:"output_truncated"`
	Error           string             `json:"error,omitempty"`
	Image           ImageInfo          `json:"image"`
	VMM             string             `json:"vmm"`
	Accel           string             `json:"accel"`
	DurationMs      map[string]float64 `json:"duration_ms"`
	Rusage          guest.Rusage       `json:"rusage"`
	ImageBlocks     *blockstore.Stats  `json:"image_blocks,omitempty"`
}

// MarshalJSON encodes the result as pe run --json prints it: exit_code,
// signal, timed_out, stdout and stderr (or stdout_b64 and stderr_b64, in
// base64, when not valid UTF-8), the truncation flags, the guest's error,
// image {reference, digest}, vmm, accel, duration_ms (each phase in
// milliseconds), rusage and, for a lazy image, image_blocks.
func (r *RunResult) MarshalJSON() ([]byte, error) {
	j := jsonResult{
		ExitCode:        r.ExitStatus(),
		Signal:          r.Signal,
		TimedOut:        r.TimedOut,
		StdoutTruncated: r.StdoutTruncated,
		StderrTruncated: r.StderrTruncated,
		OutputTruncated: r.OutputTruncated,
		Error:           r.Error,
		Image:           r.Image,
		VMM:             r.VMM,
		Accel:           r.Accel,
		DurationMs:      map[string]float64{},
		Rusage:          r.Rusage,
		ImageBlocks:     r.ImageBlocks,
	}
	j.Stdout, j.StdoutB64 = textOrBase64(r.Stdout)
	j.Stderr, j.StderrB64 = textOrBase64(r.Stderr)
	for _, k := range slices.Sorted(maps.Keys(r.Durations)) {
		j.DurationMs[k] = math.Round(float64(r.Durations[k])/1e3) / 1e3
	}
	return json.Marshal(j)
}

// textOrBase64 returns b as text when it is valid UTF-8, else in base64.
func textOrBase64(b []byte) (text, b64 *string) {
	if utf8.Valid(b) {
		s := string(b)
		return &s, nil
	}
	s := base64.StdEncoding.EncodeToString(b)
	return nil, &s
}

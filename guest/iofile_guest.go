package guest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
	"unicode/utf8"
)

// ErrCommitted is returned by [IOFile.WriteResult] when a result was already
// committed: the first result wins.
var ErrCommitted = errors.New("result already committed")

// IOFile is the guest's side of the I/O file: it reads the request, stdin
// and inputs, and writes the result, output streams and outputs into the
// areas the host reserved, never elsewhere.
type IOFile struct {
	f *os.File
	h *header

	mu             sync.Mutex
	committed      bool
	maxOutput      int64
	stdout, stderr *StreamWriter
}

// OpenIOFile opens the I/O disk dev (a block device in the VM, any file in
// tests) and checks its header.
func OpenIOFile(dev string) (*IOFile, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open I/O file: %w", err)
	}
	// A block device's Stat size is 0; seeking to the end gives its size.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open I/O file %s: %w", dev, err)
	}
	b := make([]byte, blockSize)
	if _, err := f.ReadAt(b, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("open I/O file %s: read header: %w", dev, err)
	}
	h, err := parseHeader(b, size)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open I/O file %s: %w", dev, err)
	}
	iof := &IOFile{f: f, h: h, maxOutput: h.areas[areaOutputs].Cap}
	iof.stdout = &StreamWriter{w: f, off: h.areas[areaStdout].Off, limit: h.areas[areaStdout].Cap}
	iof.stderr = &StreamWriter{w: f, off: h.areas[areaStderr].Off, limit: h.areas[areaStderr].Cap}
	return iof, nil
}

// Close closes the device.
func (f *IOFile) Close() error { return f.f.Close() }

// Request reads and checks the request. It also caps the output streams at
// the request's MaxOutput.
func (f *IOFile) Request() (*Request, error) {
	a := f.h.areas[areaRequest]
	if a.Len > guestMaxRequest {
		return nil, fmt.Errorf("request: %d bytes, the limit is %d", a.Len, guestMaxRequest)
	}
	b := make([]byte, a.Len)
	if _, err := f.f.ReadAt(b, a.Off); err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	var req Request
	if err := json.Unmarshal(b, &req); err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	if err := req.validate(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maxOutput = min(req.MaxOutput, f.h.areas[areaOutputs].Cap)
	f.stdout.setLimit(req.MaxOutput)
	f.stderr.setLimit(req.MaxOutput)
	return &req, nil
}

// Stdin returns the program's stdin bytes (empty when the host sent none).
func (f *IOFile) Stdin() io.Reader {
	a := f.h.areas[areaStdin]
	return io.NewSectionReader(f.f, a.Off, a.Len)
}

// HasInputs reports whether the host sent input files.
func (f *IOFile) HasInputs() bool { return f.h.areas[areaInputs].Len > 0 }

// ExtractInputs unpacks the input archive into dir, creating it. Entries
// never leave dir nor write through symlinks.
func (f *IOFile) ExtractInputs(dir string) error {
	a := f.h.areas[areaInputs]
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("extract inputs: %w", err)
	}
	if a.Len == 0 {
		return nil
	}
	err := extractTar(io.NewSectionReader(f.f, a.Off, a.Len), dir, extractOptions{
		maxFiles: 1 << 20,
		maxBytes: a.Len * 2, // PAX sparse entries could expand; inputs come from pe's own tar writer
	})
	if err != nil {
		return fmt.Errorf("extract inputs: %w", err)
	}
	return nil
}

// Stdout returns the writer for the program's stdout. It keeps the first
// MaxOutput bytes and counts the rest.
func (f *IOFile) Stdout() *StreamWriter { return f.stdout }

// Stderr is [IOFile.Stdout] for stderr.
func (f *IOFile) Stderr() *StreamWriter { return f.stderr }

// WriteResult archives outputDir ("" for none) into the outputs area, then
// writes res (with the stream sizes and truncation flags filled in, and the
// archiving time added to Timings["collect"] when res has Timings), syncs,
// writes the commit record and syncs again. Only the first call commits;
// later ones return [ErrCommitted]. After it the stream writers drop all
// data, so a late write cannot change what the record describes.
func (f *IOFile) WriteResult(res *Result, outputDir string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.committed {
		return ErrCommitted
	}
	start := time.Now()
	var rec record
	if outputDir != "" {
		a := f.h.areas[areaOutputs]
		n, truncated, err := writeOutputs(f.f, a.Off, f.maxOutput, outputDir)
		rec.OutputsLen = n
		if truncated {
			res.OutputTruncated = true
		}
		if err != nil && res.Error == "" {
			res.Error = fmt.Sprintf("collect %s: %v", OutputDir, err)
			if res.ExitCode == 0 {
				res.ExitCode = 1
			}
		}
	}
	if res.Timings != nil {
		res.Timings["collect"] += time.Since(start).Microseconds()
	}
	rec.StdoutLen, res.StdoutTruncated, res.StdoutBytes = f.stdout.freeze()
	rec.StderrLen, res.StderrTruncated, res.StderrBytes = f.stderr.freeze()

	js, err := encodeResult(res)
	if err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	ra := f.h.areas[areaResult]
	if int64(len(js)) > ra.Cap-blockSize {
		return fmt.Errorf("write result: %d-byte result does not fit the %d-byte area", len(js), ra.Cap-blockSize)
	}
	rec.JSONLen = int64(len(js))
	if _, err := f.f.WriteAt(js, ra.Off+blockSize); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	// The record must reach the disk after everything it describes.
	if err := f.f.Sync(); err != nil {
		return fmt.Errorf("write result: sync: %w", err)
	}
	if _, err := f.f.WriteAt(rec.marshal(), ra.Off); err != nil {
		return fmt.Errorf("write result: commit: %w", err)
	}
	if err := f.f.Sync(); err != nil {
		return fmt.Errorf("write result: sync commit: %w", err)
	}
	f.committed = true
	return nil
}

// encodeResult marshals res, shortening the error text and dropping timings
// when needed so the result always fits and always passes the host's checks.
func encodeResult(res *Result) ([]byte, error) {
	res.Error = truncateUTF8(res.Error, maxErrorText)
	if len(res.Timings) > maxTimings {
		res.Timings = nil
	}
	js, err := json.Marshal(res)
	if err != nil {
		return nil, err
	}
	if len(js) > maxResultJSON {
		res.Timings = nil
		res.Error = truncateUTF8(res.Error, 256)
		js, err = json.Marshal(res)
	}
	return js, err
}

// truncateUTF8 cuts s to at most n bytes on a rune boundary and replaces
// invalid UTF-8, which the host refuses in error texts.
func truncateUTF8(s string, n int) string {
	if !utf8.ValidString(s) {
		s = string([]rune(s)) // replaces invalid bytes with U+FFFD
	}
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// StreamWriter writes one output stream of the program straight into its
// area of the I/O file. It never fails nor blocks the program: past the cap
// it counts and drops, so the program keeps running. Safe for concurrent use.
type StreamWriter struct {
	mu     sync.Mutex
	w      io.WriterAt
	off    int64
	limit  int64
	n      int64 // bytes kept
	total  int64 // bytes seen
	frozen bool
	err    error
}

func (s *StreamWriter) setLimit(n int64) {
	s.mu.Lock()
	s.limit = max(0, min(s.limit, n))
	s.mu.Unlock()
}

// Write keeps what fits under the cap and drops the rest. It always reports
// success; an I/O error is kept for [StreamWriter.Err].
func (s *StreamWriter) Write(p []byte) (int, error) {
	s.WriteKept(p)
	return len(p), nil
}

// WriteKept is Write, returning the part of p it kept (the start of p,
// empty past the cap): what a copy of the stream within the same cap
// gets, such as the data channel's.
func (s *StreamWriter) WriteKept(p []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total += int64(len(p))
	if s.frozen || s.err != nil {
		return nil
	}
	keep := min(int64(len(p)), s.limit-s.n)
	if keep > 0 {
		if _, err := s.w.WriteAt(p[:keep], s.off+s.n); err != nil {
			s.err = err
			return nil
		}
		s.n += keep
		return p[:keep]
	}
	return nil
}

// Truncated reports whether more was written than kept.
func (s *StreamWriter) Truncated() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total > s.n
}

// Err returns the first I/O error writing the stream, if any.
func (s *StreamWriter) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *StreamWriter) freeze() (kept int64, truncated bool, total int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frozen = true
	return s.n, s.total > s.n, s.total
}

package guest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// Layout constants of the I/O file, version 1 (see the package doc).
const (
	blockSize       = 512
	headerMagic     = "PEIO"
	recordMagic     = "PERS"
	protocolVersion = 1
	numAreas        = 7
	areaTableOff    = 16
	areaEntrySize   = 24
	crcOff          = blockSize - 4

	// maxResultJSON caps the encoded Result; the guest shrinks a result
	// that would not fit (long error text) rather than fail.
	maxResultJSON = 16 << 10
	// maxErrorText caps Result.Error as the guest writes it.
	maxErrorText = 4 << 10
	// maxTimings caps the number of Result.Timings entries the host accepts.
	maxTimings = 64
	// guestMaxRequest caps the request JSON the guest reads into memory.
	guestMaxRequest = 64 << 20
)

// Area indexes, in file order.
const (
	areaRequest = iota
	areaStdin
	areaInputs
	areaResult
	areaStdout
	areaStderr
	areaOutputs
)

var areaNames = [numAreas]string{"request", "stdin", "inputs", "result", "stdout", "stderr", "outputs"}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// area is one region of the I/O file.
type area struct {
	Off, Cap, Len int64
}

func (a area) end() int64 { return a.Off + a.Cap }

// header is block 0 of the I/O file.
type header struct {
	areas [numAreas]area
}

func (h *header) marshal() []byte {
	b := make([]byte, blockSize)
	copy(b, headerMagic)
	binary.LittleEndian.PutUint32(b[4:], protocolVersion)
	binary.LittleEndian.PutUint32(b[8:], blockSize)
	binary.LittleEndian.PutUint32(b[12:], numAreas)
	for i, a := range h.areas {
		e := b[areaTableOff+i*areaEntrySize:]
		binary.LittleEndian.PutUint64(e[0:], uint64(a.Off))
		binary.LittleEndian.PutUint64(e[8:], uint64(a.Cap))
		binary.LittleEndian.PutUint64(e[16:], uint64(a.Len))
	}
	binary.LittleEndian.PutUint32(b[crcOff:], crc32.Checksum(b[:crcOff], castagnoli))
	return b
}

// parseHeader decodes and checks block 0 against the file size. The guest can
// write anywhere on its disk, so the host checks the header as strictly as
// the guest's own records.
func parseHeader(b []byte, size int64) (*header, error) {
	if len(b) < blockSize {
		return nil, fmt.Errorf("header: %d bytes, want %d", len(b), blockSize)
	}
	if string(b[:4]) != headerMagic {
		return nil, fmt.Errorf("header: magic %q, want %q", b[:4], headerMagic)
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != protocolVersion {
		return nil, fmt.Errorf("header: version %d, this pe speaks %d", v, protocolVersion)
	}
	if got, want := binary.LittleEndian.Uint32(b[crcOff:]), crc32.Checksum(b[:crcOff], castagnoli); got != want {
		return nil, fmt.Errorf("header: checksum %#08x, want %#08x", got, want)
	}
	if hs := binary.LittleEndian.Uint32(b[8:]); hs != blockSize {
		return nil, fmt.Errorf("header: size %d, want %d", hs, blockSize)
	}
	if n := binary.LittleEndian.Uint32(b[12:]); n != numAreas {
		return nil, fmt.Errorf("header: %d areas, want %d", n, numAreas)
	}
	h := &header{}
	prevEnd := int64(blockSize)
	for i := range h.areas {
		e := b[areaTableOff+i*areaEntrySize:]
		off, capa, n := binary.LittleEndian.Uint64(e[0:]), binary.LittleEndian.Uint64(e[8:]), binary.LittleEndian.Uint64(e[16:])
		name := areaNames[i]
		switch {
		case off > math.MaxInt64 || capa > math.MaxInt64 || n > math.MaxInt64:
			return nil, fmt.Errorf("header: %s area: offset %d, capacity %d or length %d out of range", name, off, capa, n)
		case off%blockSize != 0:
			return nil, fmt.Errorf("header: %s area: offset %d not a multiple of %d", name, off, blockSize)
		case int64(off) < prevEnd:
			return nil, fmt.Errorf("header: %s area: offset %d overlaps the previous area (ends at %d)", name, off, prevEnd)
		case capa > uint64(size) || off > uint64(size)-capa:
			return nil, fmt.Errorf("header: %s area: %d bytes at %d run past the end of the %d-byte file", name, capa, off, size)
		case n > capa:
			return nil, fmt.Errorf("header: %s area: length %d exceeds its capacity %d", name, n, capa)
		}
		h.areas[i] = area{Off: int64(off), Cap: int64(capa), Len: int64(n)}
		prevEnd = h.areas[i].end()
	}
	if h.areas[areaResult].Cap < blockSize {
		return nil, fmt.Errorf("header: result area capacity %d, want at least %d", h.areas[areaResult].Cap, blockSize)
	}
	return h, nil
}

// record is the guest's commit record, block 0 of the result area.
type record struct {
	JSONLen, StdoutLen, StderrLen, OutputsLen int64
}

func (r *record) marshal() []byte {
	b := make([]byte, blockSize)
	copy(b, recordMagic)
	binary.LittleEndian.PutUint32(b[4:], protocolVersion)
	binary.LittleEndian.PutUint64(b[8:], uint64(r.JSONLen))
	binary.LittleEndian.PutUint64(b[16:], uint64(r.StdoutLen))
	binary.LittleEndian.PutUint64(b[24:], uint64(r.StderrLen))
	binary.LittleEndian.PutUint64(b[32:], uint64(r.OutputsLen))
	binary.LittleEndian.PutUint32(b[crcOff:], crc32.Checksum(b[:crcOff], castagnoli))
	return b
}

func parseRecord(b []byte) (*record, error) {
	if isZero(b) {
		return nil, ErrNoResult
	}
	if string(b[:4]) != recordMagic {
		return nil, fmt.Errorf("%w: result record: magic %q, want %q", ErrBadResponse, b[:4], recordMagic)
	}
	if v := binary.LittleEndian.Uint32(b[4:]); v != protocolVersion {
		return nil, fmt.Errorf("%w: result record: version %d, want %d", ErrBadResponse, v, protocolVersion)
	}
	if got, want := binary.LittleEndian.Uint32(b[crcOff:]), crc32.Checksum(b[:crcOff], castagnoli); got != want {
		return nil, fmt.Errorf("%w: result record: checksum %#08x, want %#08x (torn write?)", ErrBadResponse, got, want)
	}
	var r record
	for i, p := range []*int64{&r.JSONLen, &r.StdoutLen, &r.StderrLen, &r.OutputsLen} {
		v := binary.LittleEndian.Uint64(b[8+8*i:])
		if v > math.MaxInt64 {
			return nil, fmt.Errorf("%w: result record: length %d out of range", ErrBadResponse, v)
		}
		*p = int64(v)
	}
	return &r, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func roundUp(n int64) int64 { return (n + blockSize - 1) / blockSize * blockSize }

// WriteIOFile creates the I/O file at path for one run: header, request,
// stdin (nil for none), a tar of inputDir ("" for none) keeping modes,
// symlinks and directories, and zeroed result, stdout, stderr and output
// areas sized from req.MaxOutput. The zeroed areas are holes, so the file
// costs little disk. A zero req.MaxOutput means lim.MaxOutput; a larger one is
// an error because [ReadResult] would refuse what the guest writes. The
// request written has HasStdin set from stdin. On error the file is removed.
func WriteIOFile(path string, req *Request, stdin io.Reader, inputDir string, lim Limits) (err error) {
	lim = lim.WithDefaults()
	r := *req
	switch {
	case r.MaxOutput == 0:
		r.MaxOutput = lim.MaxOutput
	case r.MaxOutput < 0 || r.MaxOutput > lim.MaxOutput:
		return fmt.Errorf("write I/O file: request MaxOutput %d outside 1..%d", r.MaxOutput, lim.MaxOutput)
	}
	r.HasStdin = stdin != nil
	if err := r.validate(); err != nil {
		return fmt.Errorf("write I/O file: %w", err)
	}
	js, err := json.Marshal(&r)
	if err != nil {
		return fmt.Errorf("write I/O file: encode request: %w", err)
	}
	if int64(len(js)) > lim.MaxRequest {
		return fmt.Errorf("write I/O file: request is %d bytes, the limit is %d", len(js), lim.MaxRequest)
	}

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write I/O file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write I/O file: %w", cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()

	var h header
	off := int64(blockSize)
	place := func(i int, length, capacity int64) {
		h.areas[i] = area{Off: off, Cap: capacity, Len: length}
		off += capacity
	}
	if _, err := f.WriteAt(js, off); err != nil {
		return fmt.Errorf("write I/O file: request: %w", err)
	}
	place(areaRequest, int64(len(js)), roundUp(int64(len(js))))

	var n int64
	if stdin != nil {
		n, err = io.Copy(io.NewOffsetWriter(f, off), stdin)
		if err != nil {
			return fmt.Errorf("write I/O file: stdin: %w", err)
		}
	}
	place(areaStdin, n, roundUp(n))

	n = 0
	if inputDir != "" {
		aw := &areaWriter{w: f, off: off, limit: math.MaxInt64 - off}
		if _, err := writeTree(aw, inputDir, treeOptions{strict: true}); err != nil {
			return fmt.Errorf("write I/O file: inputs: %w", err)
		}
		n = aw.pos
	}
	place(areaInputs, n, roundUp(n))

	place(areaResult, 0, blockSize+maxResultJSON)
	out := roundUp(r.MaxOutput)
	place(areaStdout, 0, out)
	place(areaStderr, 0, out)
	place(areaOutputs, 0, out)

	if err := f.Truncate(off); err != nil {
		return fmt.Errorf("write I/O file: %w", err)
	}
	if _, err := f.WriteAt(h.marshal(), 0); err != nil {
		return fmt.Errorf("write I/O file: header: %w", err)
	}
	return nil
}

// ReadResult reads what the guest wrote into the I/O file at path. Everything
// is checked: the header, the commit record, every length against the file,
// its area and lim, and the result's fields. Errors wrap [ErrNoResult] when
// the guest never committed a result and [ErrBadResponse] when it wrote
// something invalid. stdout and stderr need not be UTF-8.
func ReadResult(path string, lim Limits) (*Response, error) {
	lim = lim.WithDefaults()
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read result: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read result: %w", err)
	}
	resp, err := readResponse(f, fi.Size(), lim)
	if err != nil {
		return nil, fmt.Errorf("read result from %s: %w", path, err)
	}
	return resp, nil
}

// readResponse is ReadResult on any io.ReaderAt, for tests and fuzzing.
func readResponse(r io.ReaderAt, size int64, lim Limits) (*Response, error) {
	b := make([]byte, blockSize)
	if _, err := r.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrBadResponse, err)
	}
	h, err := parseHeader(b, size)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadResponse, err)
	}
	ra := h.areas[areaResult]
	if _, err := r.ReadAt(b, ra.Off); err != nil {
		return nil, fmt.Errorf("%w: result record: %v", ErrBadResponse, err)
	}
	rec, err := parseRecord(b)
	if err != nil {
		return nil, err
	}

	jsonArea := area{Off: ra.Off + blockSize, Cap: ra.Cap - blockSize}
	js, err := readArea(r, "result", jsonArea, rec.JSONLen, maxResultJSON)
	if err != nil {
		return nil, err
	}
	resp := &Response{lim: lim}
	if resp.Stdout, err = readArea(r, "stdout", h.areas[areaStdout], rec.StdoutLen, lim.MaxOutput); err != nil {
		return nil, err
	}
	if resp.Stderr, err = readArea(r, "stderr", h.areas[areaStderr], rec.StderrLen, lim.MaxOutput); err != nil {
		return nil, err
	}
	if resp.outputs, err = readArea(r, "outputs", h.areas[areaOutputs], rec.OutputsLen, lim.MaxOutput); err != nil {
		return nil, err
	}
	if err := decodeResult(js, &resp.Result); err != nil {
		return nil, err
	}
	return resp, nil
}

// readArea reads n bytes from the start of a, after checking n against the
// area and the cap, so a lying guest cannot make the host allocate more.
func readArea(r io.ReaderAt, name string, a area, n, limit int64) ([]byte, error) {
	if n > a.Cap {
		return nil, fmt.Errorf("%w: %s length %d exceeds its area (%d bytes)", ErrBadResponse, name, n, a.Cap)
	}
	if n > limit {
		return nil, fmt.Errorf("%w: %s length %d exceeds the limit %d", ErrBadResponse, name, n, limit)
	}
	b := make([]byte, n)
	if _, err := r.ReadAt(b, a.Off); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadResponse, name, err)
	}
	return b, nil
}

// isSignalName accepts "SIG" and 1 to 12 of A-Z, 0-9 and '+' (SIGRTMIN+3).
// (No regexp: the package is linked into the guest init, which should
// start fast.)
func isSignalName(s string) bool {
	rest, ok := strings.CutPrefix(s, "SIG")
	if !ok || len(rest) < 1 || len(rest) > 12 {
		return false
	}
	for _, c := range rest {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '+') {
			return false
		}
	}
	return true
}

// decodeResult parses and checks the guest's JSON result.
func decodeResult(js []byte, res *Result) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	if err := dec.Decode(res); err != nil {
		return fmt.Errorf("%w: result JSON: %v", ErrBadResponse, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: result JSON: trailing data", ErrBadResponse)
	}
	switch {
	case res.ExitCode < 0 || res.ExitCode > 255:
		return fmt.Errorf("%w: exit code %d outside 0..255", ErrBadResponse, res.ExitCode)
	case res.Signal != "" && !isSignalName(res.Signal):
		return fmt.Errorf("%w: signal %q is not a signal name", ErrBadResponse, res.Signal)
	case len(res.Error) > maxErrorText:
		return fmt.Errorf("%w: error text is %d bytes, the limit is %d", ErrBadResponse, len(res.Error), maxErrorText)
	case !utf8.ValidString(res.Error):
		return fmt.Errorf("%w: error text is not UTF-8", ErrBadResponse)
	case len(res.Timings) > maxTimings:
		return fmt.Errorf("%w: %d timings, the limit is %d", ErrBadResponse, len(res.Timings), maxTimings)
	case res.StdoutBytes < 0 || res.StderrBytes < 0:
		return fmt.Errorf("%w: negative stream size", ErrBadResponse)
	}
	for k, v := range res.Timings {
		if v < 0 || len(k) > 64 {
			return fmt.Errorf("%w: timing %.64q = %d", ErrBadResponse, k, v)
		}
	}
	u := res.Rusage
	for _, v := range []int64{u.UserMs, u.SysMs, u.MaxRSSKB, u.MemoryPeakKB, u.OOMKills, u.MinorFaults, u.MajorFaults, u.VoluntaryCtxSw, u.InvoluntaryCtxSw} {
		if v < 0 {
			return fmt.Errorf("%w: negative rusage value %d", ErrBadResponse, v)
		}
	}
	return nil
}

// validate checks what both sides require of a request.
func (r *Request) validate() error {
	if len(r.Argv) == 0 || r.Argv[0] == "" {
		return errors.New("request: empty command")
	}
	if r.Cwd != "" && r.Cwd[0] != '/' {
		return fmt.Errorf("request: working directory %q is not absolute", r.Cwd)
	}
	if r.Timeout < 0 {
		return fmt.Errorf("request: negative timeout %v", r.Timeout)
	}
	if r.MaxOutput <= 0 {
		return fmt.Errorf("request: max output %d, want > 0", r.MaxOutput)
	}
	if r.MemoryLimit < 0 || r.PidsLimit < 0 {
		return fmt.Errorf("request: negative memory (%d) or pids (%d) limit", r.MemoryLimit, r.PidsLimit)
	}
	if len(r.Seed) > 4096 {
		return fmt.Errorf("request: %d-byte seed, the limit is 4096", len(r.Seed))
	}
	for _, s := range append(append([]string{r.Cwd, r.Hostname}, r.Argv...), r.Env...) {
		if bytes.IndexByte([]byte(s), 0) >= 0 {
			return fmt.Errorf("request: %q contains a NUL byte", s)
		}
	}
	if s := r.Stream; s != nil {
		if s.Stdin && r.HasStdin {
			return errors.New("request: stdin both in the I/O file and on the data channel")
		}
		if s.TTY != nil && (s.TTY.Rows == 0 || s.TTY.Cols == 0) {
			return fmt.Errorf("request: terminal size %dx%d", s.TTY.Rows, s.TTY.Cols)
		}
	}
	if len(r.Hostname) > 64 {
		return fmt.Errorf("request: hostname %q longer than 64 bytes", r.Hostname)
	}
	return nil
}

// errAreaFull is returned by areaWriter when a write would pass its limit.
var errAreaFull = errors.New("area full")

// areaWriter writes sequentially into an area of a file, never past limit.
// A write that would not fit is refused whole, so a caller can roll back to
// an earlier pos and keep what was complete.
type areaWriter struct {
	w     io.WriterAt
	off   int64 // start of the area in the file
	limit int64 // bytes available
	pos   int64 // bytes written
}

func (a *areaWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > a.limit-a.pos {
		return 0, errAreaFull
	}
	n, err := a.w.WriteAt(p, a.off+a.pos)
	a.pos += int64(n)
	return n, err
}

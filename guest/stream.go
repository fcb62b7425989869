package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The data channel: a byte stream between the host and the guest init,
// beside the I/O disk, that carries a run's output while the program
// writes it, and its standard input, signals and terminal size while it
// runs. On QEMU it is a virtio-serial port named [StreamPortName]; on
// cloud-hypervisor the virtio-console (see [CmdlineStream]).
//
// The channel carries bytes only. The run's result (exit status,
// time-out, the complete stdout and stderr, truncation flags) travels on
// the I/O disk as before: nothing on the channel can end a run or change
// its result, and a host that finds garbage on the channel stops reading
// it and carries on with the run.
//
// Each message is a frame:
//
//	0  u8   type (FrameType; the high bit set for host → guest frames)
//	1  u32  payload length, little endian, at most StreamMaxPayload
//	5  payload
//
// Frames from the guest to the host:
//
//	FrameStdout       1..StreamMaxPayload bytes of the program's stdout
//	FrameStderr       1..StreamMaxPayload bytes of its stderr
//	FrameStarted      empty: the program was started (informational)
//	FrameEnd          empty: both output streams ended (informational)
//	FrameStdinCredit  u32 > 0: the host may send that many more stdin bytes
//
// Frames from the host to the guest:
//
//	FrameStdin         1..StreamMaxPayload bytes of the program's stdin
//	FrameStdinEOF      empty: the program's stdin ends
//	FrameWindowSize    u16 rows, u16 cols (both > 0): the terminal's size
//	FrameSignal        u8 signal number, 1..64: send it to the program
//	FrameOutputCredit  u32 > 0: the guest may send that many more bytes
//
// Flow control: each side sends data only within the credit the other
// granted. The guest may send as many stdout and stderr payload bytes
// (together) as the host granted with FrameOutputCredit, and then waits
// for more; the host grants as it hands the bytes on, so a slow reader
// on the host slows the program down, and what is in flight is bounded by
// the credit. Likewise the host sends stdin payload bytes only within the
// guest's FrameStdinCredit grants, so a program that does not read its
// input holds the host's stdin back rather than the guest's memory.
// Control frames (signals, sizes, EOF) need no credit. A side that
// receives more data than it granted treats the channel as broken.
//
// The guest opens the channel only when the request asks for it
// ([Request.Stream]); the host grants output credit from the start, and
// the channel holds what it sends until the guest opens its end.

// Names of the data channel.
const (
	// StreamPortName is the name of the virtio-serial port of the data
	// channel (QEMU's virtserialport name=...): the guest finds its
	// device through /sys/class/virtio-ports/*/name.
	StreamPortName = "pe.stream"
	// CmdlineStream, when set on the kernel command line, is the device
	// of the data channel (e.g. /dev/hvc0 for cloud-hypervisor's
	// virtio-console, a terminal the init puts in raw mode) instead of
	// the port named [StreamPortName].
	CmdlineStream = "pe.stream"
)

// Sizes of the frame format.
const (
	// StreamHeaderSize is the size of a frame's header.
	StreamHeaderSize = 5
	// StreamMaxPayload bounds a frame's payload: a reader needs at most
	// StreamHeaderSize+StreamMaxPayload bytes of buffer.
	StreamMaxPayload = 32 << 10
	// StreamMaxSignal is the highest signal number a FrameSignal carries
	// (SIGRTMAX on Linux).
	StreamMaxSignal = 64
)

// FrameType is the type of a frame on the data channel.
type FrameType uint8

// Frame types: 0x01.. go from the guest to the host, 0x81.. from the
// host to the guest.
const (
	FrameStdout      FrameType = 0x01
	FrameStderr      FrameType = 0x02
	FrameStarted     FrameType = 0x03
	FrameEnd         FrameType = 0x04
	FrameStdinCredit FrameType = 0x05

	FrameStdin        FrameType = 0x81
	FrameStdinEOF     FrameType = 0x82
	FrameWindowSize   FrameType = 0x83
	FrameSignal       FrameType = 0x84
	FrameOutputCredit FrameType = 0x85
)

// fromHost is the direction bit of host → guest frame types.
const fromHost = 0x80

// FromHost reports whether frames of type t go from the host to the guest.
func (t FrameType) FromHost() bool { return t&fromHost != 0 }

func (t FrameType) String() string {
	switch t {
	case FrameStdout:
		return "stdout"
	case FrameStderr:
		return "stderr"
	case FrameStarted:
		return "started"
	case FrameEnd:
		return "end"
	case FrameStdinCredit:
		return "stdin-credit"
	case FrameStdin:
		return "stdin"
	case FrameStdinEOF:
		return "stdin-eof"
	case FrameWindowSize:
		return "window-size"
	case FrameSignal:
		return "signal"
	case FrameOutputCredit:
		return "output-credit"
	}
	return fmt.Sprintf("type 0x%02x", uint8(t))
}

// payloadRule is what a type's payload must be: data (1..max bytes) or
// exactly size bytes.
func (t FrameType) payloadRule() (data bool, size int, known bool) {
	switch t {
	case FrameStdout, FrameStderr, FrameStdin:
		return true, 0, true
	case FrameStarted, FrameEnd, FrameStdinEOF:
		return false, 0, true
	case FrameStdinCredit, FrameOutputCredit, FrameWindowSize:
		return false, 4, true
	case FrameSignal:
		return false, 1, true
	}
	return false, 0, false
}

// ErrBadFrame is wrapped by the errors of frames that break the format:
// an unknown type, one going the wrong way, a payload too long or of the
// wrong size or value.
var ErrBadFrame = errors.New("bad data channel frame")

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	Rows, Cols uint16
}

// Frame is one message on the data channel.
type Frame struct {
	Type FrameType
	// Payload is the frame's data; for a frame from a FrameReader, valid
	// until its next call.
	Payload []byte
}

// Check checks f against the format: a known type, a payload of the
// right size and value.
func (f Frame) Check() error {
	data, size, known := f.Type.payloadRule()
	switch {
	case !known:
		return fmt.Errorf("%w: unknown %v", ErrBadFrame, f.Type)
	case data && (len(f.Payload) == 0 || len(f.Payload) > StreamMaxPayload):
		return fmt.Errorf("%w: %v frame of %d bytes, want 1 to %d", ErrBadFrame, f.Type, len(f.Payload), StreamMaxPayload)
	case !data && len(f.Payload) != size:
		return fmt.Errorf("%w: %v frame of %d bytes, want %d", ErrBadFrame, f.Type, len(f.Payload), size)
	}
	switch f.Type {
	case FrameStdinCredit, FrameOutputCredit:
		if f.Credit() == 0 {
			return fmt.Errorf("%w: %v of 0 bytes", ErrBadFrame, f.Type)
		}
	case FrameWindowSize:
		if ws := f.WindowSize(); ws.Rows == 0 || ws.Cols == 0 {
			return fmt.Errorf("%w: window size %dx%d", ErrBadFrame, ws.Rows, ws.Cols)
		}
	case FrameSignal:
		if s := f.Signal(); s < 1 || s > StreamMaxSignal {
			return fmt.Errorf("%w: signal %d, want 1 to %d", ErrBadFrame, s, StreamMaxSignal)
		}
	}
	return nil
}

// Credit is the byte count of a credit frame.
func (f Frame) Credit() uint32 {
	if len(f.Payload) != 4 {
		return 0
	}
	return binary.LittleEndian.Uint32(f.Payload)
}

// WindowSize is the size a FrameWindowSize carries.
func (f Frame) WindowSize() WindowSize {
	if len(f.Payload) != 4 {
		return WindowSize{}
	}
	return WindowSize{Rows: binary.LittleEndian.Uint16(f.Payload), Cols: binary.LittleEndian.Uint16(f.Payload[2:])}
}

// Signal is the signal number a FrameSignal carries.
func (f Frame) Signal() int {
	if len(f.Payload) != 1 {
		return 0
	}
	return int(f.Payload[0])
}

// CreditFrame is a credit frame (FrameOutputCredit or FrameStdinCredit)
// of n bytes.
func CreditFrame(t FrameType, n uint32) Frame {
	return Frame{Type: t, Payload: binary.LittleEndian.AppendUint32(nil, n)}
}

// WindowSizeFrame is a FrameWindowSize of ws.
func WindowSizeFrame(ws WindowSize) Frame {
	b := binary.LittleEndian.AppendUint16(nil, ws.Rows)
	return Frame{Type: FrameWindowSize, Payload: binary.LittleEndian.AppendUint16(b, ws.Cols)}
}

// SignalFrame is a FrameSignal of signal number sig.
func SignalFrame(sig int) Frame {
	return Frame{Type: FrameSignal, Payload: []byte{byte(sig)}}
}

// AppendFrame appends f, encoded, to dst; it refuses a frame that breaks
// the format.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	if err := f.Check(); err != nil {
		return dst, err
	}
	dst = append(dst, byte(f.Type))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(f.Payload)))
	return append(dst, f.Payload...), nil
}

// WriteFrame writes f to w with one Write call.
func WriteFrame(w io.Writer, f Frame) error {
	b, err := AppendFrame(make([]byte, 0, StreamHeaderSize+len(f.Payload)), f)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// FrameReader reads the frames one side sends: it refuses frames going
// the other way, and never buffers more than one frame.
type FrameReader struct {
	r io.Reader
	// fromHost says the frames come from the host.
	fromHost bool
	buf      []byte
}

// NewFrameReader reads frames from r sent by the host (fromHost, the
// guest's reader) or by the guest (the host's).
func NewFrameReader(r io.Reader, fromHost bool) *FrameReader {
	return &FrameReader{r: r, fromHost: fromHost, buf: make([]byte, StreamHeaderSize+StreamMaxPayload)}
}

// Next reads the next frame. It returns io.EOF at the end of the stream
// between two frames, io.ErrUnexpectedEOF within one, and an error
// wrapping ErrBadFrame for a frame that breaks the format or goes the
// wrong way: the channel cannot be read further after any error.
func (r *FrameReader) Next() (Frame, error) {
	h := r.buf[:StreamHeaderSize]
	if _, err := io.ReadFull(r.r, h); err != nil {
		return Frame{}, err
	}
	t := FrameType(h[0])
	n := binary.LittleEndian.Uint32(h[1:])
	if t.FromHost() != r.fromHost {
		return Frame{}, fmt.Errorf("%w: %v frame going the wrong way", ErrBadFrame, t)
	}
	if n > StreamMaxPayload {
		return Frame{}, fmt.Errorf("%w: %v frame of %d bytes, the limit is %d", ErrBadFrame, t, n, StreamMaxPayload)
	}
	// Checked before the payload is read: an unknown type's length means
	// nothing, and the reader should not wait for it.
	if _, _, known := t.payloadRule(); !known {
		return Frame{}, fmt.Errorf("%w: unknown %v", ErrBadFrame, t)
	}
	p := r.buf[StreamHeaderSize : StreamHeaderSize+int(n)]
	if _, err := io.ReadFull(r.r, p); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	f := Frame{Type: t, Payload: p}
	if err := f.Check(); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// StreamRequest is what a [Request] asks of the data channel: as asked,
// the guest streams the program's stdout and stderr on it (copies of what
// goes to the I/O disk, within the same MaxOutput), takes the program's
// stdin from it and runs the program on a terminal; signals it always
// takes.
type StreamRequest struct {
	// Output says the program's stdout and stderr are copied on the
	// channel (FrameStdout, FrameStderr) as it writes them.
	Output bool `json:"output,omitempty"`
	// Stdin says the program's standard input comes from the channel
	// (FrameStdin until FrameStdinEOF) rather than the I/O file.
	Stdin bool `json:"stdin,omitempty"`
	// TTY, when set, runs the program on a pseudo-terminal of this
	// initial size: its stdin, stdout and stderr are the terminal, its
	// output comes as FrameStdout only (with Output), and FrameWindowSize
	// resizes it.
	TTY *WindowSize `json:"tty,omitempty"`
}

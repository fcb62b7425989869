package engine

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math"
	"sync"

	"github.com/pe-project/pe/guest"
)

// streamWindow is the output credit a hostStream keeps granted:
// the most bytes of output in flight between the program and the host's
// writers. A round trip of credit under emulation takes milliseconds, so
// it is a few frames, not one.
const streamWindow = 256 << 10

// streamStdinWindowMax bounds the stdin credit a guest may grant ahead:
// more means the guest's stream is broken.
const streamStdinWindowMax = 16 << 20

// hostStreamConfig says where a hostStream delivers the guest's output
// and what it sends the guest.
type hostStreamConfig struct {
	// Stdout and Stderr receive the output frames' bytes, in order, from
	// one goroutine (nil discards). A slow writer holds the guest's
	// credit back; one that fails is written no more (the rest of its
	// stream is discarded).
	Stdout, Stderr io.Writer
	// Stdin, when set, is read within the guest's credit and sent as
	// guest.FrameStdin, then guest.FrameStdinEOF at its end (or error).
	Stdin io.Reader
	// Signals and Resize are sent as FrameSignal and FrameWindowSize.
	Signals <-chan int
	Resize  <-chan guest.WindowSize
	// OnStart is called at the guest's guest.FrameStarted.
	OnStart func()
	// Window is the output credit kept granted (0: streamWindow).
	Window uint32
	// Log receives what went wrong on the channel.
	Log *slog.Logger
}

// hostStream is the host's end of the data channel of one run (see
// guest/stream.go). Frames the guest sends are checked: a frame that breaks
// the format, goes the wrong way or exceeds its credit ends the stream
// (logged, see Err), after which the host discards what comes, granting
// credit still, so that the guest's writes never block the program for
// it: nothing on the channel can hold up or end the run.
type hostStream struct {
	conn io.ReadWriteCloser
	cfg  hostStreamConfig
	log  *slog.Logger

	// readDone is closed when the reader has seen the end of the channel.
	readDone chan struct{}
	// stop ends the sender and the stdin pump.
	stop     chan struct{}
	stopOnce sync.Once

	mu  sync.Mutex
	err error
	// out counts and hashes what each writer got, for Complete.
	out [2]delivered
	// grant is output credit to send; stdinCredit the guest's grant.
	grant       uint64
	stdinCredit int64
	// wake tells the sender (grants) and the pump (stdin credit).
	wakeSender, wakePump chan struct{}
}

// delivered is what one output stream's writer received.
type delivered struct {
	n      int64
	sum    hash.Hash
	broken bool // the writer failed
}

// startHostStream serves the host's end of a channel on conn (closed by
// Stop), granting the guest its first output credit at once.
func startHostStream(conn io.ReadWriteCloser, cfg hostStreamConfig) *hostStream {
	if cfg.Window == 0 {
		cfg.Window = streamWindow
	}
	h := &hostStream{
		conn: conn, cfg: cfg, log: cfg.Log,
		readDone: make(chan struct{}), stop: make(chan struct{}),
		wakeSender: make(chan struct{}, 1), wakePump: make(chan struct{}, 1),
		grant: uint64(cfg.Window),
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	h.out[0].sum, h.out[1].sum = sha256.New(), sha256.New()
	stdin := make(chan []byte)
	go h.read()
	go h.send(stdin)
	if cfg.Stdin != nil {
		go h.pump(stdin)
	}
	h.wake(h.wakeSender)
	return h
}

func (h *hostStream) wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Done is closed once the guest's end of the channel is gone (the VM
// stopped) and everything it sent is delivered, or Stop was called.
func (h *hostStream) Done() <-chan struct{} { return h.readDone }

// Stop closes the channel and ends the stream's goroutines but a Read
// of Stdin in progress; a writer's Write in progress still completes.
func (h *hostStream) Stop() {
	h.stopOnce.Do(func() {
		close(h.stop)
		h.conn.Close()
	})
}

// Err is why the stream ended early: the guest broke the protocol (an
// error wrapping guest.ErrBadFrame); nil for a stream that ran to its end, or
// ended with the VM (end of file, a frame cut short, a reset).
func (h *hostStream) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// read reads the guest's frames until the channel ends.
func (h *hostStream) read() {
	defer close(h.readDone)
	r := guest.NewFrameReader(h.conn, false)
	var credit int64 = int64(h.cfg.Window)
	for {
		f, err := r.Next()
		if err != nil {
			switch {
			case h.stopped() || errors.Is(err, io.EOF):
			case errors.Is(err, guest.ErrBadFrame):
				h.fail(fmt.Errorf("data channel: %w", err))
				h.discard()
			default:
				// The VM went while a frame was on its way, or with
				// bytes of pe's unread (a reset): the end of the
				// channel, nothing wrong with it.
				h.log.Debug("data channel: ended", "error", err)
			}
			return
		}
		switch f.Type {
		case guest.FrameStdout, guest.FrameStderr:
			n := int64(len(f.Payload))
			if n > credit {
				h.fail(fmt.Errorf("data channel: %w: %d bytes of output past the credit of %d", guest.ErrBadFrame, n, credit))
				h.discard()
				return
			}
			credit -= n
			h.deliver(f.Type, f.Payload)
			credit += n
			h.addGrant(uint64(n))
		case guest.FrameStarted:
			if h.cfg.OnStart != nil {
				h.cfg.OnStart()
			}
		case guest.FrameEnd:
			h.log.Debug("data channel: the guest's output ended")
		case guest.FrameStdinCredit:
			h.mu.Lock()
			h.stdinCredit += int64(f.Credit())
			over := h.stdinCredit > streamStdinWindowMax
			h.mu.Unlock()
			if over {
				h.fail(fmt.Errorf("data channel: %w: stdin credit past %d bytes", guest.ErrBadFrame, streamStdinWindowMax))
				h.discard()
				return
			}
			h.wake(h.wakePump)
		}
	}
}

func (h *hostStream) stopped() bool {
	select {
	case <-h.stop:
		return true
	default:
		return false
	}
}

// fail records err, the first error of the stream.
func (h *hostStream) fail(err error) {
	h.mu.Lock()
	if h.err == nil {
		h.err = err
	}
	h.mu.Unlock()
	h.log.Error("the data channel is broken; the run goes on without it", "error", err)
}

// discard reads and drops what the guest sends until the channel ends,
// granting it all the credit it could want so that it never waits.
func (h *hostStream) discard() {
	h.addGrant(math.MaxUint32)
	buf := make([]byte, 64<<10)
	var n int64
	for {
		m, err := h.conn.Read(buf)
		n += int64(m)
		if n >= 1<<30 {
			h.addGrant(math.MaxUint32)
			n = 0
		}
		if err != nil {
			return
		}
	}
}

// deliver writes an output frame's bytes to its writer.
func (h *hostStream) deliver(t guest.FrameType, p []byte) {
	i, w := 0, h.cfg.Stdout
	if t == guest.FrameStderr {
		i, w = 1, h.cfg.Stderr
	}
	d := &h.out[i]
	if w == nil || d.broken {
		return
	}
	if _, err := w.Write(p); err != nil {
		d.broken = true
		h.log.Warn("writing the program's output as it came failed; the rest of the stream is dropped", "stream", t.String(), "error", err)
		return
	}
	h.mu.Lock()
	d.n += int64(len(p))
	d.sum.Write(p)
	h.mu.Unlock()
}

func (h *hostStream) addGrant(n uint64) {
	h.mu.Lock()
	h.grant += n
	h.mu.Unlock()
	h.wake(h.wakeSender)
}

// send is the only writer of the channel: credit grants, stdin, its end,
// signals and sizes, as they come.
func (h *hostStream) send(stdin <-chan []byte) {
	write := func(f guest.Frame) bool {
		if err := guest.WriteFrame(h.conn, f); err != nil {
			if !h.stopped() {
				h.log.Debug("data channel: sending to the guest", "frame", f.Type.String(), "error", err)
			}
			return false
		}
		return true
	}
	for {
		select {
		case <-h.stop:
			return
		case <-h.wakeSender:
			h.mu.Lock()
			g := h.grant
			h.grant = 0
			h.mu.Unlock()
			for g > 0 {
				n := min(g, math.MaxUint32)
				if !write(guest.CreditFrame(guest.FrameOutputCredit, uint32(n))) {
					return
				}
				g -= n
			}
		case p, ok := <-stdin:
			if !ok {
				if !write(guest.Frame{Type: guest.FrameStdinEOF}) {
					return
				}
				stdin = nil
				continue
			}
			if !write(guest.Frame{Type: guest.FrameStdin, Payload: p}) {
				return
			}
		case sig := <-h.cfg.Signals:
			if sig < 1 || sig > guest.StreamMaxSignal {
				h.log.Warn("data channel: signal out of range not sent", "signal", sig)
				continue
			}
			if !write(guest.SignalFrame(sig)) {
				return
			}
		case ws := <-h.cfg.Resize:
			if ws.Rows == 0 || ws.Cols == 0 {
				continue
			}
			if !write(guest.WindowSizeFrame(ws)) {
				return
			}
		}
	}
}

// pump reads Stdin within the guest's credit and hands it to the sender;
// it closes stdin at Stdin's end.
func (h *hostStream) pump(stdin chan<- []byte) {
	defer close(stdin)
	buf := make([]byte, guest.StreamMaxPayload)
	for {
		h.mu.Lock()
		credit := h.stdinCredit
		h.mu.Unlock()
		if credit == 0 {
			select {
			case <-h.wakePump:
				continue
			case <-h.stop:
				return
			}
		}
		n, err := h.cfg.Stdin.Read(buf[:min(credit, int64(len(buf)))])
		if n > 0 {
			h.mu.Lock()
			h.stdinCredit -= int64(n)
			h.mu.Unlock()
			select {
			case stdin <- bytes.Clone(buf[:n]):
			case <-h.stop:
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				h.log.Warn("reading the program's standard input failed: it gets EOF", "error", err)
			}
			return
		}
	}
}

// Complete writes to Stdout and Stderr what the channel did not deliver
// of the run's output, stdout and stderr as the result has them, once
// the stream is done (call it after Done is closed, or after Stop). Bytes
// the channel delivered that are not the start of the result's are
// logged and nothing more is written to that stream.
func (h *hostStream) Complete(stdout, stderr []byte) {
	select {
	case <-h.readDone:
	default:
		// A writer is still being written: writing more would be out of
		// order.
		h.log.Warn("the data channel's last bytes were not delivered in time; the rest of the output is not written")
		return
	}
	for i, full := range [][]byte{stdout, stderr} {
		w := []io.Writer{h.cfg.Stdout, h.cfg.Stderr}[i]
		name := []string{"stdout", "stderr"}[i]
		h.mu.Lock()
		d := &h.out[i]
		n, sum, broken := d.n, d.sum.Sum(nil), d.broken
		h.mu.Unlock()
		if w == nil || broken {
			continue
		}
		if n > int64(len(full)) || !bytes.Equal(sum, sha256Sum(full[:n])) {
			h.log.Error("the output streamed on the data channel is not the run's; the result's is not written after it", "stream", name, "streamed", n, "result", len(full))
			continue
		}
		// In frames, as the channel would have: writers see no larger
		// writes.
		for rest := full[n:]; len(rest) > 0; {
			k := min(len(rest), guest.StreamMaxPayload)
			if _, err := w.Write(rest[:k]); err != nil {
				h.log.Warn("writing the rest of the program's output failed", "stream", name, "error", err)
				break
			}
			rest = rest[k:]
		}
	}
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

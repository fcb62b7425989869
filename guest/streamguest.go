package guest

import (
	"errors"
	"fmt"
	"io"
	"sync"
)

// GuestStreamStdinWindow is the stdin credit the guest grants: the most
// stdin bytes it holds that the program has not read yet.
const GuestStreamStdinWindow = 64 << 10

// GuestStream is the guest init's end of the data channel (see
// stream.go): it sends the program's output within the host's credit
// and hands the host's frames to the program (stdin) and the init
// (signals, sizes). It never holds more than its stdin window of input,
// and once closed or broken its writers drop what they get without
// blocking: the I/O disk, not the channel, carries the result.
type GuestStream struct {
	ch io.ReadWriter
	// log receives what went wrong (nil: nothing).
	log func(format string, args ...any)

	wmu sync.Mutex // one frame at a time on ch

	mu   sync.Mutex
	cond *sync.Cond
	// credit is the output the host granted and the guest did not use.
	credit int64
	// done: closed or broken; writers drop, nothing more is sent.
	done bool
	// stdin is the input received and not yet written to the program.
	stdin    []byte
	stdinEOF bool
	// stdinSink, once set, is where stdin goes.
	stdinSink io.WriteCloser
	signal    func(sig int)
	resize    func(WindowSize)
}

// NewGuestStream serves the guest's end of a channel on ch, reading the
// host's frames until the channel ends. logf, when set, is told what
// went wrong.
func NewGuestStream(ch io.ReadWriter, logf func(format string, args ...any)) *GuestStream {
	s := &GuestStream{ch: ch, log: logf}
	if s.log == nil {
		s.log = func(string, ...any) {}
	}
	s.cond = sync.NewCond(&s.mu)
	go s.read()
	return s
}

// Writer returns the writer of output frames of type t (FrameStdout or
// FrameStderr). Its Write waits for the host's credit; it never fails.
func (s *GuestStream) Writer(t FrameType) io.Writer { return &guestWriter{s: s, t: t} }

type guestWriter struct {
	s *GuestStream
	t FrameType
}

func (w *guestWriter) Write(p []byte) (int, error) {
	w.s.send(w.t, p)
	return len(p), nil
}

// send sends p as output frames of type t, each within the credit.
func (s *GuestStream) send(t FrameType, p []byte) {
	for len(p) > 0 {
		s.mu.Lock()
		for s.credit == 0 && !s.done {
			s.cond.Wait()
		}
		if s.done {
			s.mu.Unlock()
			return
		}
		n := int(min(int64(len(p)), s.credit, StreamMaxPayload))
		s.credit -= int64(n)
		s.mu.Unlock()
		if !s.write(Frame{Type: t, Payload: p[:n]}) {
			return
		}
		p = p[n:]
	}
}

// Notify sends an informational frame: FrameStarted or FrameEnd.
func (s *GuestStream) Notify(t FrameType) {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if !done {
		s.write(Frame{Type: t})
	}
}

// write sends f; a failure breaks the stream.
func (s *GuestStream) write(f Frame) bool {
	s.wmu.Lock()
	err := WriteFrame(s.ch, f)
	s.wmu.Unlock()
	if err != nil {
		s.brk(fmt.Errorf("sending %v: %w", f.Type, err))
		return false
	}
	return true
}

// brk ends the stream for err (nil: closed on purpose).
func (s *GuestStream) brk(err error) {
	s.mu.Lock()
	was := s.done
	s.done = true
	s.stdinEOF = true
	s.cond.Broadcast()
	s.mu.Unlock()
	if err != nil && !was {
		s.log("data channel: %v", err)
	}
}

// Close ends the stream: writers waiting for credit return, what they
// get from then on is dropped, and the program's stdin ends. The channel
// itself is the caller's.
func (s *GuestStream) Close() { s.brk(nil) }

// SetStdin gives the program's stdin: what the host sends goes to w,
// which is closed at the host's FrameStdinEOF or the stream's end; the
// host gets its first credit now.
func (s *GuestStream) SetStdin(w io.WriteCloser) {
	s.mu.Lock()
	s.stdinSink = w
	s.mu.Unlock()
	go s.feed(w)
	s.write(CreditFrame(FrameStdinCredit, GuestStreamStdinWindow))
}

// SetSignal and SetResize give the handlers of the host's signals and
// window sizes; until set, those frames are dropped.
func (s *GuestStream) SetSignal(f func(sig int)) {
	s.mu.Lock()
	s.signal = f
	s.mu.Unlock()
}

// SetResize: see SetSignal.
func (s *GuestStream) SetResize(f func(WindowSize)) {
	s.mu.Lock()
	s.resize = f
	s.mu.Unlock()
}

// feed writes the received stdin to w, granting the host credit for each
// write, until its end.
func (s *GuestStream) feed(w io.WriteCloser) {
	defer w.Close()
	for {
		s.mu.Lock()
		for len(s.stdin) == 0 && !s.stdinEOF {
			s.cond.Wait()
		}
		if len(s.stdin) == 0 {
			s.mu.Unlock()
			return
		}
		p := s.stdin
		s.stdin = nil
		s.mu.Unlock()
		if _, err := w.Write(p); err != nil {
			// The program stopped reading: drop the rest, as a pipe does.
			s.mu.Lock()
			s.stdinEOF = true
			s.mu.Unlock()
			return
		}
		s.write(CreditFrame(FrameStdinCredit, uint32(len(p))))
	}
}

// read handles the host's frames until the channel ends.
func (s *GuestStream) read() {
	r := NewFrameReader(s.ch, true)
	for {
		f, err := r.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.brk(fmt.Errorf("reading: %w", err))
			} else {
				s.brk(nil)
			}
			return
		}
		s.mu.Lock()
		switch f.Type {
		case FrameOutputCredit:
			s.credit += int64(f.Credit())
			s.cond.Broadcast()
		case FrameStdin:
			// The host may send no more than the window the guest
			// holds: what it holds now plus what it wrote is bounded.
			if s.stdinSink == nil || s.stdinEOF || len(s.stdin)+len(f.Payload) > GuestStreamStdinWindow {
				if s.stdinSink != nil && !s.stdinEOF {
					s.mu.Unlock()
					s.brk(fmt.Errorf("%w: stdin past the credit", ErrBadFrame))
					return
				}
				break // no stdin wanted, or it ended: dropped
			}
			s.stdin = append(s.stdin, f.Payload...)
			s.cond.Broadcast()
		case FrameStdinEOF:
			s.stdinEOF = true
			s.cond.Broadcast()
		case FrameSignal:
			if h := s.signal; h != nil {
				s.mu.Unlock()
				h(f.Signal())
				continue
			}
		case FrameWindowSize:
			if h := s.resize; h != nil {
				s.mu.Unlock()
				h(f.WindowSize())
				continue
			}
		}
		s.mu.Unlock()
	}
}

package engine

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/guest/guesttest"

	"github.com/pe-project/pe/guest"
)

// socketPair is a connected pair of stream sockets, as the engine and
// QEMU's chardev have.
var socketPair = guesttest.SocketPair

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// eventLog records the order of writes to both streams.
type eventLog struct {
	mu     sync.Mutex
	events []string
}

func (l *eventLog) writer(name string) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.events = append(l.events, name+":"+string(p))
		return len(p), nil
	})
}

// waitDone waits for a channel's close, at most 10 s.
var waitDone = guesttest.WaitDone

func TestStreamOutputInOrder(t *testing.T) {
	hc, gc := socketPair(t)
	var log eventLog
	started := make(chan struct{})
	h := startHostStream(hc, hostStreamConfig{Stdout: log.writer("out"), Stderr: log.writer("err"), OnStart: func() { close(started) }})
	defer h.Stop()
	g := guest.NewGuestStream(gc, t.Logf)
	g.Notify(guest.FrameStarted)
	out, errw := g.Writer(guest.FrameStdout), g.Writer(guest.FrameStderr)
	for _, w := range []struct {
		w io.Writer
		s string
	}{{out, "1"}, {errw, "2"}, {out, "3"}, {errw, "4"}, {errw, "5"}} {
		w.w.Write([]byte(w.s))
	}
	g.Notify(guest.FrameEnd)
	waitDone(t, started)
	gc.Close()
	waitDone(t, h.Done())
	if err := h.Err(); err != nil {
		t.Fatalf("Err: %v", err)
	}
	want := []string{"out:1", "err:2", "out:3", "err:4", "err:5"}
	if diff := cmp.Diff(want, log.events); diff != "" {
		t.Errorf("writes (-want +got):\n%s", diff)
	}
	// The result holds more than the channel delivered: the rest follows.
	log.events = nil
	h.Complete([]byte("13tail"), []byte("245"))
	if diff := cmp.Diff([]string{"out:tail"}, log.events); diff != "" {
		t.Errorf("Complete's writes (-want +got):\n%s", diff)
	}
}

func TestStreamCompleteMismatch(t *testing.T) {
	hc, gc := socketPair(t)
	var out syncBuffer
	h := startHostStream(hc, hostStreamConfig{Stdout: &out})
	defer h.Stop()
	g := guest.NewGuestStream(gc, t.Logf)
	g.Writer(guest.FrameStdout).Write([]byte("forged"))
	gc.Close()
	waitDone(t, h.Done())
	h.Complete([]byte("the real output"), nil)
	if got := out.String(); got != "forged" {
		t.Errorf("stdout = %q, want only what was streamed", got)
	}
}

// countingConn counts the bytes written through it.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func TestStreamBackPressure(t *testing.T) {
	hc, gc := socketPair(t)
	gate := make(chan struct{})
	var got atomic.Int64
	slow := writerFunc(func(p []byte) (int, error) {
		<-gate
		got.Add(int64(len(p)))
		return len(p), nil
	})
	const window = 64 << 10
	h := startHostStream(hc, hostStreamConfig{Stdout: slow, Window: window})
	defer h.Stop()
	cc := &countingConn{Conn: gc}
	g := guest.NewGuestStream(cc, t.Logf)
	const total = 8 << 20
	wrote := make(chan struct{})
	go func() {
		g.Writer(guest.FrameStdout).Write(make([]byte, total))
		close(wrote)
	}()
	time.Sleep(300 * time.Millisecond)
	// The host reads nothing: the guest sent at most the window.
	if n := cc.n.Load(); n > window+2*guest.StreamHeaderSize*(window/guest.StreamMaxPayload+1) {
		t.Fatalf("the guest sent %d bytes to a host that read none; the window is %d", n, window)
	}
	select {
	case <-wrote:
		t.Fatal("the guest's write returned while the host read nothing")
	default:
	}
	close(gate)
	waitDone(t, wrote)
	gc.Close()
	waitDone(t, h.Done())
	if got.Load() != total {
		t.Errorf("the host got %d bytes, want %d", got.Load(), total)
	}
}

// endlessReader counts what is read of it.
type endlessReader struct{ n atomic.Int64 }

func (r *endlessReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'y'
	}
	r.n.Add(int64(len(p)))
	return len(p), nil
}

func TestStreamStdin(t *testing.T) {
	hc, gc := socketPair(t)
	input := strings.Repeat("line of input\n", 20000) // 280 kB: several windows
	h := startHostStream(hc, hostStreamConfig{Stdin: strings.NewReader(input)})
	defer h.Stop()
	g := guest.NewGuestStream(gc, t.Logf)
	pr, pw := io.Pipe()
	g.SetStdin(pw)
	got, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != input {
		t.Fatalf("the program read %d bytes, want %d", len(got), len(input))
	}
}

func TestStreamStdinBackPressure(t *testing.T) {
	hc, gc := socketPair(t)
	var in endlessReader
	h := startHostStream(hc, hostStreamConfig{Stdin: &in})
	defer h.Stop()
	g := guest.NewGuestStream(gc, t.Logf)
	pr, pw := io.Pipe() // never read: the program does not read stdin
	defer pr.Close()
	g.SetStdin(pw)
	time.Sleep(300 * time.Millisecond)
	if n := in.n.Load(); n > guest.GuestStreamStdinWindow {
		t.Fatalf("the host read %d bytes of stdin for a program that reads none; the window is %d", n, guest.GuestStreamStdinWindow)
	}
	// The program reads some: more comes, still within the window.
	buf := make([]byte, 1000)
	io.ReadFull(pr, buf)
	time.Sleep(100 * time.Millisecond)
	if n := in.n.Load(); n > guest.GuestStreamStdinWindow+1000+guest.StreamMaxPayload {
		t.Fatalf("the host read %d bytes of stdin", n)
	}
}

func TestStreamSignalsAndSizes(t *testing.T) {
	hc, gc := socketPair(t)
	sigs := make(chan int)
	sizes := make(chan guest.WindowSize)
	h := startHostStream(hc, hostStreamConfig{Signals: sigs, Resize: sizes})
	defer h.Stop()
	g := guest.NewGuestStream(gc, t.Logf)
	gotSig := make(chan int, 1)
	gotSize := make(chan guest.WindowSize, 1)
	g.SetSignal(func(s int) { gotSig <- s })
	g.SetResize(func(ws guest.WindowSize) { gotSize <- ws })
	sigs <- 15
	sizes <- guest.WindowSize{Rows: 40, Cols: 100}
	if s := <-gotSig; s != 15 {
		t.Errorf("signal %d, want 15", s)
	}
	if ws := <-gotSize; ws != (guest.WindowSize{Rows: 40, Cols: 100}) {
		t.Errorf("size %v", ws)
	}
}

func TestStreamGarbage(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"huge length", []byte("\x01\xff\xff\xff\xff" + strings.Repeat("x", 100000))},
		{"forged exit", []byte("\x04\x04\x00\x00\x00exit")},
		{"host frame", []byte("\x84\x01\x00\x00\x00\x09")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc, gc := socketPair(t)
			var out syncBuffer
			h := startHostStream(hc, hostStreamConfig{Stdout: &out, Window: 64 << 10})
			defer h.Stop()
			go func() {
				gc.Write(tc.in)
				// Then more than any window: the host discards it all.
				gc.Write(make([]byte, 4<<20))
				gc.Close()
			}()
			waitDone(t, h.Done())
			if err := h.Err(); !errors.Is(err, guest.ErrBadFrame) {
				t.Fatalf("Err = %v, want guest.ErrBadFrame", err)
			}
			if len(out.String()) > 64<<10 {
				t.Errorf("%d bytes delivered past a broken frame", len(out.String()))
			}
		})
	}
}

// TestStreamEndsWithVM checks that a VMM gone with pe's bytes unread (a
// reset) or in the middle of a frame is the end of the stream, not a
// broken one.
func TestStreamEndsWithVM(t *testing.T) {
	for _, tc := range []struct {
		name string
		last []byte
	}{
		{"reset", nil},
		{"cut frame", []byte("\x01\x10\x00\x00\x00abc")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc, gc := socketPair(t)
			h := startHostStream(hc, hostStreamConfig{})
			defer h.Stop()
			time.Sleep(50 * time.Millisecond) // the first credit, never read
			gc.Write(tc.last)
			gc.Close()
			waitDone(t, h.Done())
			if err := h.Err(); err != nil {
				t.Errorf("Err = %v, want nil", err)
			}
		})
	}
}

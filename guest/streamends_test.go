package guest

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/guest/guesttest"
)

// socketPair is a connected pair of stream sockets, as the engine and
// QEMU's chardev have.
var socketPair = guesttest.SocketPair

// waitDone waits for a channel's close, at most 10 s.
var waitDone = guesttest.WaitDone

func TestGuestStreamCloseUnblocks(t *testing.T) {
	_, gc := socketPair(t)
	g := NewGuestStream(gc, t.Logf) // no host: no credit ever
	wrote := make(chan struct{})
	go func() {
		g.Writer(FrameStdout).Write([]byte("stuck"))
		close(wrote)
	}()
	time.Sleep(50 * time.Millisecond)
	g.Close()
	waitDone(t, wrote)
}

// memWriterAt is an io.WriterAt in memory.
type memWriterAt struct{ b []byte }

func (m *memWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if need := int(off) + len(p); need > len(m.b) {
		m.b = append(m.b, make([]byte, need-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

// TestWriteKept checks what the data channel gets of a stream: exactly
// the bytes the I/O disk kept, none past the cap.
func TestWriteKept(t *testing.T) {
	var disk memWriterAt
	s := &StreamWriter{w: &disk, limit: 10}
	var kept []string
	for _, p := range []string{"hello ", "world", "!!!"} {
		kept = append(kept, string(s.WriteKept([]byte(p))))
	}
	if diff := cmp.Diff([]string{"hello ", "worl", ""}, kept); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if string(disk.b) != "hello worl" || !s.Truncated() {
		t.Errorf("disk %q, truncated %v", disk.b, s.Truncated())
	}
}

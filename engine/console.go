package engine

import (
	"bytes"
	"io"
	"sync"
)

// lineWatch passes the guest console on to next (nil: nowhere) and closes
// seen when it finds line, alone on its line, in it. The line may end in
// "\n" or, as a serial console's terminal settings turn it into, "\r\n". It
// keeps the end of what it read, so a line split across writes is found
// too.
type lineWatch struct {
	next    io.Writer
	needles [2][]byte // "\n" + line + "\n", and with "\r\n"
	mu      sync.Mutex
	tail    []byte
	done    bool
	seen    chan struct{}
}

func newLineWatch(next io.Writer, line string) *lineWatch {
	return &lineWatch{
		next:    next,
		needles: [2][]byte{[]byte("\n" + line + "\n"), []byte("\n" + line + "\r\n")},
		seen:    make(chan struct{}),
	}
}

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	if !w.done {
		buf := append(w.tail, p...)
		if bytes.Contains(buf, w.needles[0]) || bytes.Contains(buf, w.needles[1]) {
			w.done = true
			close(w.seen)
			w.tail = nil
		} else {
			keep := min(len(buf), len(w.needles[1])-1)
			w.tail = append(w.tail[:0], buf[len(buf)-keep:]...)
		}
	}
	w.mu.Unlock()
	if w.next != nil {
		return w.next.Write(p)
	}
	return len(p), nil
}

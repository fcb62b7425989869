package engine

import (
	"bytes"
	"io"
	"sync"
)

// lineWatch passes the guest console on to next (nil: nowhere) and closes
// seen when it finds line, alone on its line, in it. It keeps the end of
// what it read, so a line split across writes is found too.
type lineWatch struct {
	next   io.Writer
	needle []byte // "\n" + line + "\n"
	seen   chan struct{}

	mu   sync.Mutex
	tail []byte
	done bool
}

func newLineWatch(next io.Writer, line string) *lineWatch {
	return &lineWatch{next: next, needle: []byte("\n" + line + "\n"), seen: make(chan struct{})}
}

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	if !w.done {
		buf := append(w.tail, p...)
		if bytes.Contains(buf, w.needle) {
			w.done = true
			close(w.seen)
			w.tail = nil
		} else {
			keep := min(len(buf), len(w.needle)-1)
			w.tail = append(w.tail[:0], buf[len(buf)-keep:]...)
		}
	}
	w.mu.Unlock()
	if w.next != nil {
		return w.next.Write(p)
	}
	return len(p), nil
}

package guestinit

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// logger writes init progress to the console, each line stamped with the
// time since boot like the kernel's own messages.
type logger struct {
	mu      sync.Mutex
	w       io.Writer
	verbose bool
}

func newLogger(w io.Writer, verbose bool) *logger { return &logger{w: w, verbose: verbose} }

// sinceBoot returns CLOCK_BOOTTIME, the clock the kernel stamps its log with.
func sinceBoot() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func (l *logger) printf(format string, args ...any) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "[%12.6f] pe-init: %s\n", sinceBoot(), fmt.Sprintf(format, args...))
}

// Infof logs always; Debugf only with pe.debug=1.
func (l *logger) Infof(format string, args ...any) { l.printf(format, args...) }

func (l *logger) Debugf(format string, args ...any) {
	if l != nil && l.verbose {
		l.printf(format, args...)
	}
}

// consoleWriter opens /dev/console for the log, falling back to stderr
// (which the kernel points at the console when the initramfs has one).
func consoleWriter() io.Writer {
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		return f
	}
	return os.Stderr
}

package guestinit

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLoadDeviceFilterUnderSignals loads the filter while its thread is
// flooded with SIGURG, the signal Go's scheduler uses to preempt
// goroutines: the kernel's verifier gives up with EAGAIN when a signal is
// pending, and a guest's cgroup setup must not fail on that.
func TestLoadDeviceFilterUnderSignals(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to load an eBPF program")
	}
	if fd, err := loadDeviceFilter(allowedDevices); err != nil {
		t.Skipf("this kernel does not load the device filter: %v", err)
	} else {
		unix.Close(fd)
	}
	tid := make(chan int)
	done := make(chan error)
	var stop atomic.Bool
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		var err error
		for range 3000 {
			var fd int
			if fd, err = loadDeviceFilter(allowedDevices); err != nil {
				break
			}
			unix.Close(fd)
		}
		stop.Store(true)
		done <- err
	}()
	target, pid := <-tid, os.Getpid()
	// A signal every millisecond: ten times the scheduler's rate, so that
	// many of the loads (about 130 µs each here) meet one.
	for !stop.Load() {
		unix.Tgkill(pid, target, unix.SIGURG)
		time.Sleep(time.Millisecond)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

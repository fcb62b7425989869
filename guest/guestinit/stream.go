package guestinit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/guest"
)

// streamDrainGrace bounds how long the program's output may still go to
// the data channel once the program has ended: a host that reads slowly
// then gets the rest from the result instead (the engine writes what
// the channel did not deliver), and the run's end does not wait for it.
const streamDrainGrace = 5 * time.Second

// streamEOFPoll is how often a read of the port that found the host not
// connected (end of file) tries again.
const streamEOFPoll = 20 * time.Millisecond

// virtioPorts is where the kernel lists the virtio-serial ports, each
// directory named as its device and holding its name.
const virtioPorts = "/sys/class/virtio-ports"

// findPort returns the device of the virtio-serial port called name,
// waiting up to timeout for it to appear.
func findPort(dir, name string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
			if err == nil && strings.TrimSpace(string(b)) == name {
				return "/dev/" + e.Name(), nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no virtio-serial port named %s in %s after %v (is virtio_console loaded?)", name, dir, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// openStream opens the data channel: the device the command line names
// (a terminal, such as cloud-hypervisor's virtio-console, is put in raw
// mode), else the virtio-serial port named guest.StreamPortName.
func (in *vmInit) openStream() (*os.File, error) {
	dev := in.cmd.params[guest.CmdlineStream]
	if dev == "" {
		var err error
		if dev, err = findPort(virtioPorts, guest.StreamPortName, deviceWait); err != nil {
			return nil, err
		}
	} else if err := waitForDevice(dev, deviceWait); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("data channel: %w", err)
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
		if err := makeRaw(int(f.Fd())); err != nil {
			f.Close()
			return nil, fmt.Errorf("data channel %s: raw mode: %w", dev, err)
		}
	}
	return f, nil
}

// makeRaw puts the terminal fd in raw mode, as cfmakeraw does: bytes
// pass unchanged.
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

// portConn is the data channel's device as the stream reads and writes
// it. A virtio-serial port reads end of file while the host side is not
// connected (a VM restored from a snapshot connects as it resumes): a
// read tries again until the stream is closed.
type portConn struct {
	f      *os.File
	closed atomic.Bool
}

func (p *portConn) Read(b []byte) (int, error) {
	for {
		n, err := p.f.Read(b)
		if n > 0 || !errors.Is(err, io.EOF) || p.closed.Load() {
			return n, err
		}
		time.Sleep(streamEOFPoll)
	}
}

func (p *portConn) Write(b []byte) (int, error) { return p.f.Write(b) }

// keptTee writes to the I/O disk's stream and copies to the channel what
// it kept: the channel carries the result's bytes, no more.
type keptTee struct {
	disk *guest.StreamWriter
	ch   io.Writer
}

func (t keptTee) Write(p []byte) (int, error) {
	if kept := t.disk.WriteKept(p); len(kept) > 0 {
		t.ch.Write(kept)
	}
	return len(p), nil
}

// liveRun is a run's use of the data channel.
type liveRun struct {
	port *portConn
	gs   *guest.GuestStream
}

// startStream opens the data channel for req and wires it to the
// sandbox: output copies, stdin (returned, nil for none), signals. A
// channel that cannot be opened is logged: the run goes on without it,
// its output coming with the result.
func (in *vmInit) startStream(req *guest.Request, iof *guest.IOFile) (stdout, stderr io.Writer, stdin io.Reader, lr *liveRun) {
	stdout, stderr = iof.Stdout(), iof.Stderr()
	f, err := in.openStream()
	if err != nil {
		in.log.Infof("%v; the output comes with the result", err)
		return stdout, stderr, nil, nil
	}
	lr = &liveRun{port: &portConn{f: f}}
	lr.gs = guest.NewGuestStream(lr.port, in.log.Infof)
	if req.Stream.Output {
		stdout = keptTee{iof.Stdout(), lr.gs.Writer(guest.FrameStdout)}
		stderr = keptTee{iof.Stderr(), lr.gs.Writer(guest.FrameStderr)}
	}
	if req.Stream.Stdin {
		pr, pw := io.Pipe()
		lr.gs.SetStdin(pw)
		stdin = pr
	}
	lr.gs.SetSignal(func(sig int) {
		if err := in.sb.Signal(syscall.Signal(sig)); err != nil {
			in.log.Debugf("signal %d to the program: %v", sig, err)
		}
	})
	in.sb.Started = func() { lr.gs.Notify(guest.FrameStarted) }
	in.sb.Exited = func() { time.AfterFunc(streamDrainGrace, lr.gs.Close) }
	return stdout, stderr, stdin, lr
}

// end says the output ended and closes the stream (the device stays
// open: the VM ends soon).
func (lr *liveRun) end() {
	if lr == nil {
		return
	}
	lr.gs.Notify(guest.FrameEnd)
	lr.gs.Close()
	lr.port.closed.Store(true)
}

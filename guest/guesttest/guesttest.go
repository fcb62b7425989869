// Package guesttest helps tests that build guest file systems: it sits in
// the guest layer, so the guest init's tests and the engine's test fixture
// (engine/enginetest) can both use it.
package guesttest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// InstallBusybox copies the static busybox binary to bin/busybox and links
// each of its applets to it in bin (which must exist).
func InstallBusybox(bin, busybox string) error {
	b, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), b, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %w", busybox, err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil {
			return err
		}
	}
	return nil
}

// MakeTree makes a root file system at root for the guest tests: the
// directories dirs and /bin, busybox installed in /bin (InstallBusybox)
// and files (path: content, mode 0644).
func MakeTree(root, busybox string, dirs []string, files map[string]string) error {
	for _, d := range append([]string{"bin"}, dirs...) {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := InstallBusybox(filepath.Join(root, "bin"), busybox); err != nil {
		return err
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// SocketPair returns a connected pair of stream sockets, as the engine and
// QEMU's chardev for the data channel have; both are closed when the test
// ends.
func SocketPair(t testing.TB) (host, guest net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "sock")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// WaitDone waits for c to be closed, failing the test after 10 s.
func WaitDone(t testing.TB, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(10 * time.Second):
		t.Fatal("timed out")
	}
}

package guestinit

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/guest"
)

// A run with a terminal (Request.Stream.TTY, pe run -t): the program's
// stdin, stdout and stderr are the secondary end of a pseudo-terminal of
// the devpts instance in its own /dev, which is its controlling terminal;
// the init holds the primary end. The terminal's line discipline does
// what a terminal does: echo, line editing, and the bytes of Ctrl-C,
// Ctrl-Z and Ctrl-\ that come as stdin turn into signals for the
// terminal's foreground process group, as under docker run -t.
//
// The init opens the primary end through /proc/PID/root of the stage-2
// child, which has made the program's /dev by then: the pseudo-terminal
// is the container's own (/dev/pts/0 in there, owned by the program's
// user), none of the init's devices is handed over, and the child, still
// the container's root, opens the secondary end by its path before it
// executes the program. The device filter already lets the program's
// cgroup open 5:2 (ptmx) and 136:* (the secondary ends).

// devptsMagic is devpts's file system magic (statfs f_type).
const devptsMagic = 0x1cd1

// ttyGroup is the group the program's devpts gives its terminals (its
// mount option gid=5, "tty" in the usual images).
const ttyGroup = 5

// openPTY makes a pseudo-terminal of size ws in the devpts of the
// child's /dev, its secondary end owned by the program's uid. It returns
// the primary end and the secondary end's path in the container.
func (c *stage2Child) openPTY(ws guest.WindowSize, uid uint32) (_ *os.File, slave string, err error) {
	root := fmt.Sprintf("/proc/%d/root", c.cmd.Process.Pid)
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, "", fmt.Errorf("terminal: the program's root: %w", err)
	}
	defer unix.Close(rootfd)
	// Resolved inside the program's root, and then checked: the child
	// mounted a devpts there, and nothing else should answer for it.
	pts, err := guest.Openat2(rootfd, "dev/pts", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: inRoot})
	if err != nil {
		return nil, "", fmt.Errorf("terminal: the program's /dev/pts: %w", err)
	}
	defer unix.Close(pts)
	var st unix.Statfs_t
	if err := unix.Fstatfs(pts, &st); err != nil || st.Type != devptsMagic {
		return nil, "", fmt.Errorf("terminal: the program's /dev/pts is not a devpts (type %#x, %v)", st.Type, err)
	}
	mfd, err := unix.Openat(pts, "ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, "", fmt.Errorf("terminal: open the program's /dev/pts/ptmx: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(mfd)
		}
	}()
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		return nil, "", fmt.Errorf("terminal: unlock: %w", err)
	}
	n, err := unix.IoctlGetUint32(mfd, unix.TIOCGPTN)
	if err != nil {
		return nil, "", fmt.Errorf("terminal: its number: %w", err)
	}
	if err := unix.IoctlSetWinsize(mfd, unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Rows, Col: ws.Cols}); err != nil {
		return nil, "", fmt.Errorf("terminal: size %dx%d: %w", ws.Rows, ws.Cols, err)
	}
	// Non-blocking, the file goes to Go's poller: closing it ends a Read
	// or Write in progress (see settle).
	if err := unix.SetNonblock(mfd, true); err != nil {
		return nil, "", fmt.Errorf("terminal: %w", err)
	}
	name := strconv.FormatUint(uint64(n), 10)
	// Created owned by the init's user, which the program's namespace
	// does not map: its root could not open it, nor its user.
	if err := unix.Fchownat(pts, name, outerID(uid), outerID(ttyGroup), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, "", fmt.Errorf("terminal: give /dev/pts/%s to the program: %w", name, err)
	}
	return os.NewFile(uintptr(mfd), "pty"), "/dev/pts/" + name, nil
}

// setWinsize sets the terminal's size; the kernel sends SIGWINCH to its
// foreground process group when it changed.
func setWinsize(master *os.File, ws guest.WindowSize) error {
	// Not master.Fd(), which would make the file blocking again.
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Rows, Col: ws.Cols})
	}); err != nil {
		return err
	}
	if ioErr != nil {
		return fmt.Errorf("terminal: size %dx%d: %w", ws.Rows, ws.Cols, ioErr)
	}
	return nil
}

// attachTTY, in the stage-2 child, makes the terminal at path its
// controlling terminal and its standard streams: the child is the leader
// of its session (started with setsid), and the program it executes
// inherits both.
func attachTTY(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return setupErr("sandbox: the program's terminal %s: %v", path, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.TIOCSCTTY, 0); err != nil {
		return setupErr("sandbox: make %s the controlling terminal: %v", path, err)
	}
	for std := range 3 {
		if err := unix.Dup3(fd, std, 0); err != nil {
			return setupErr("sandbox: terminal as fd %d: %v", std, err)
		}
	}
	return nil
}

// copyTTYOut copies the terminal's output to w until the program's end:
// a read of the primary end fails (EIO) once no process holds the
// secondary end any more, after what was written before.
func copyTTYOut(master *os.File, w io.Writer) {
	buf := make([]byte, 32<<10)
	for {
		n, err := master.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

package guestinit

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// devProbeEnv makes the test binary a device probe (see TestMain): it
// opens each path of its arguments, "mknod:PATH:MAJOR:MINOR" makes a
// character device, and prints one line per try.
const devProbeEnv = "PE_DEVFILTER_PROBE"

func devProbe() {
	for _, a := range os.Args[1:] {
		if rest, ok := strings.CutPrefix(a, "mknod:"); ok {
			var p string
			var major, minor uint32
			f := strings.Split(rest, ":")
			p = f[0]
			fmt.Sscan(f[1], &major)
			fmt.Sscan(f[2], &minor)
			err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(major, minor)))
			fmt.Printf("mknod %s:%s %s\n", f[1], f[2], errnoName(err))
			continue
		}
		for _, m := range []struct {
			name string
			flag int
		}{{"r", unix.O_RDONLY}, {"w", unix.O_WRONLY}} {
			// Writes only where harmless: the denied nodes include the
			// host's own disks.
			if m.name == "w" && !strings.HasSuffix(a, ".w") {
				continue
			}
			fd, err := unix.Open(a, m.flag|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
			if err == nil {
				unix.Close(fd)
			}
			fmt.Printf("%s %s %s\n", filepath.Base(a), m.name, errnoName(err))
		}
	}
}

func errnoName(err error) string {
	if err == nil {
		return "ok"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

// cgroup2Mount finds a cgroup v2 hierarchy: /sys/fs/cgroup, or the
// unified one of a hybrid host.
func cgroup2Mount() string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		_, post, ok := strings.Cut(line, " - ")
		if ok && strings.HasPrefix(post, "cgroup2 ") {
			return strings.Fields(line)[4]
		}
	}
	return ""
}

// TestDeviceFilter runs a process in a cgroup with the device filter on
// the host, over device nodes on a mount without nodev: the filter alone
// decides. Allowed devices open (or fail in their driver, as /dev/tty
// without a controlling terminal does), every other one and every mknod
// is refused with EPERM.
func TestDeviceFilter(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	mnt := cgroup2Mount()
	if mnt == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Flags&unix.ST_NODEV != 0 {
		t.Skipf("%s is on a nodev mount", dir)
	}
	nodes := []struct {
		name         string
		block        bool
		major, minor uint32
	}{
		{"null.w", false, 1, 3}, {"zero.w", false, 1, 5}, {"full", false, 1, 7},
		{"random", false, 1, 8}, {"urandom.w", false, 1, 9}, {"tty", false, 5, 0},
		{"pts9999", false, 136, 9999}, {"pts-other-major", false, 143, 1},
		{"mem", false, 1, 1}, {"port", false, 1, 4}, {"kmsg", false, 1, 11},
		{"console", false, 5, 1}, {"ttyS0", false, 4, 64}, {"tty0", false, 4, 0},
		{"after-pts", false, 144, 0}, {"misc", false, 10, 200},
		{"vda", true, 254, 0}, {"vdb", true, 254, 16}, {"sda", true, 8, 0},
		{"block-null", true, 1, 3},
	}
	args := []string{}
	for _, n := range nodes {
		mode := uint32(unix.S_IFCHR)
		if n.block {
			mode = unix.S_IFBLK
		}
		p := filepath.Join(dir, n.name)
		if err := unix.Mknod(p, mode|0o666, int(unix.Mkdev(n.major, n.minor))); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	args = append(args, "mknod:"+filepath.Join(dir, "new-null")+":1:3", "mknod:"+filepath.Join(dir, "new-ttyS0")+":4:64")

	parent, err := os.MkdirTemp(mnt, "pe-devfilter-test-")
	if err != nil {
		t.Skipf("cannot make a cgroup: %v", err)
	}
	defer os.Remove(parent)
	cg, err := newCgroupDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.close()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), self, args...)
	cmd.Env = append(os.Environ(), devProbeEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cg.fd, Setsid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, out)
	}
	want := `null.w r ok
null.w w ok
zero.w r ok
zero.w w ok
full r ok
random r ok
urandom.w r ok
urandom.w w ok
tty r ENXIO
pts9999 r EIO
pts-other-major r ENXIO
mem r EPERM
port r EPERM
kmsg r EPERM
console r EPERM
ttyS0 r EPERM
tty0 r EPERM
after-pts r EPERM
misc r EPERM
vda r EPERM
vdb r EPERM
sda r EPERM
block-null r EPERM
mknod 1:3 EPERM
mknod 4:64 EPERM
`
	if diff := cmp.Diff(want, string(out)); diff != "" {
		t.Errorf("what the filter let through (-want +got):\n%s", diff)
	}
}

// newCgroupDir makes a cgroup with the device filter under parent, as
// the sandbox does, but with no controllers: the host's hierarchy may
// not delegate them.
func newCgroupDir(parent string) (*cgroup, error) {
	dir := filepath.Join(parent, "program")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		return nil, err
	}
	if err := attachDeviceFilter(fd); err != nil {
		unix.Close(fd)
		os.Remove(dir)
		return nil, err
	}
	return &cgroup{dir: dir, fd: fd, events: -1, memPeak: -1, memEvents: -1}, nil
}

package guestinit

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/pe-project/pe/guest"
	"golang.org/x/sys/unix"
)

// bootMounts gives PID 1 its basic file systems. The initramfs root is
// first bound onto itself and entered, because pivot_root refuses to move
// away from the initramfs (rootfs) itself, and the sandbox pivots.
func bootMounts() error {
	if err := unix.Mount("/", "/", "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind / onto itself: %w", err)
	}
	// "/.." crosses into the bind mount stacked on the root; chroot makes
	// it the root.
	if err := unix.Chdir("/.."); err != nil {
		return err
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the bound root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	for _, m := range bootFileSystems {
		if err := mountAt(m.source, m.dir, m.fstype, m.flags, m.data); err != nil {
			return err
		}
	}
	return nil
}

// mountSpec is one mount of a table: what mount(2) takes.
type mountSpec struct {
	source, dir, fstype string
	flags               uintptr
	data                string
}

// bootFileSystems are PID 1's own file systems, mounted in this order on
// the bound initramfs root. nodev everywhere but on the devtmpfs, whose
// nodes the init and the program's /dev binds use.
var bootFileSystems = []mountSpec{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0755"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755,size=16m"},
	{"cgroup2", CgroupRoot, "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// cmdline is the parsed kernel command line.
type cmdline struct {
	params       map[string]string // "key=value" and bare "key" (value "")
	moduleParams map[string]string // module name → "param=value param2=value2"
}

// parseCmdline splits the kernel command line. Like modprobe, it collects
// "module.param=value" words as parameters for loadable modules (the kernel
// applies them only to built-in code), e.g. QEMU's virtio_mmio.device=.
func parseCmdline(s string) cmdline {
	c := cmdline{params: map[string]string{}, moduleParams: map[string]string{}}
	for _, w := range splitCmdline(s) {
		k, v, _ := strings.Cut(w, "=")
		c.params[k] = v
		if mod, param, ok := strings.Cut(k, "."); ok && mod != "" && param != "" && mod != "pe" {
			mod = strings.ReplaceAll(mod, "-", "_")
			if c.moduleParams[mod] != "" {
				c.moduleParams[mod] += " "
			}
			c.moduleParams[mod] += w[len(mod)+1:]
		}
	}
	return c
}

// splitCmdline splits on spaces outside double quotes, as the kernel does.
func splitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	quoted := false
	for _, r := range strings.TrimSpace(s) {
		switch {
		case r == '"':
			quoted = !quoted
		case (r == ' ' || r == '\n' || r == '\t') && !quoted:
			if cur.Len() > 0 {
				words = append(words, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		words = append(words, cur.String())
	}
	return words
}

// loadModules loads dir/<name>.ko for each name in the order file, with
// parameters from the command line. A module already present is fine.
func loadModules(dir, orderFile string, params map[string]string, log *logger) (int, error) {
	b, err := os.ReadFile(orderFile)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range strings.Fields(string(b)) {
		f, err := os.Open(filepath.Join(dir, name+".ko"))
		if err != nil {
			return n, fmt.Errorf("module %s: %w", name, err)
		}
		err = unix.FinitModule(int(f.Fd()), params[name], 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return n, fmt.Errorf("load module %s: %w", name, err)
		}
		log.Debugf("module %s loaded %s", name, params[name])
		n++
	}
	return n, nil
}

// waitForDevice waits for a device node: drivers may register disks a
// little after their module loaded.
func waitForDevice(p string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := os.Stat(p)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("device %s did not appear within %v: %w", p, timeout, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// setClock sets the guest's wall clock to the host's.
func setClock(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	tv := unix.NsecToTimeval(t.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("set the clock: %w", err)
	}
	return nil
}

// seedRNG credits the host's random bytes to the kernel's entropy pool so
// that getrandom(2) does not block in a fresh VM (RNDADDENTROPY takes a
// struct rand_pool_info: entropy bits, byte count, bytes).
func seedRNG(seed []byte) error {
	if len(seed) == 0 {
		return nil
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("seed the RNG: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 8+len(seed))
	binary.NativeEndian.PutUint32(buf[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(buf[4:], uint32(len(seed)))
	copy(buf[8:], seed)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return fmt.Errorf("seed the RNG: %w", errno)
	}
	// Crediting entropy to a ready RNG does not rekey it: force a reseed
	// from the pool, or VMs restored from one snapshot, whose RNG state is
	// the snapshot's, would give the same random numbers until the next
	// periodic reseed. ENODATA: the RNG is not ready yet (a fresh boot),
	// and the entropy just credited makes it ready with the seed.
	_, _, errno = unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0)
	if errno != 0 && errno != unix.ENODATA {
		return fmt.Errorf("reseed the RNG: %w", errno)
	}
	return nil
}

// memTotal returns MemTotal from /proc/meminfo, in bytes.
func memTotal() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}

// initReserve is memory kept out of the program's cgroup for the init and
// the kernel, so a program using all it may still leaves the init alive.
const initReserve = 48 << 20

// programMemory picks the program cgroup's memory.max: what the request
// asks, at most the VM's memory minus the init's reserve.
func programMemory(requested, total int64) int64 {
	avail := max(total-max(initReserve, total/10), 16<<20)
	if requested <= 0 || requested > avail {
		return avail
	}
	return requested
}

// uptimeMicros reads /proc/uptime: how long the kernel ran before this point.
func uptimeMicros() int64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		return 0
	}
	return int64(f * 1e6)
}

// loopbackUp brings up lo, so programs can use localhost; there is no
// other network device.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// imageDevice and ioDevice read the disks' names from the command line.
func (c cmdline) imageDevice() string { return c.get(guest.CmdlineImage, guest.DefaultImageDevice) }
func (c cmdline) ioDevice() string    { return c.get(guest.CmdlineIO, guest.DefaultIODevice) }

func (c cmdline) get(key, def string) string {
	if v, ok := c.params[key]; ok && v != "" {
		return v
	}
	return def
}

// waitForWake is the guest's half of the snapshot hand-shake: it puts the
// console in raw mode (no echo, no line editing), writes
// guest.SnapshotReady on it, and blocks until one byte arrives, which the
// host sends to a VM restored from the snapshot taken meanwhile.
func waitForWake(log *logger) error {
	f, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if tio, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		tio.Cc[unix.VMIN], tio.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, tio); err != nil {
			log.Infof("console raw mode: %v", err)
		}
	}
	unix.Sync()
	if _, err := f.WriteString("\n" + guest.SnapshotReady + "\n"); err != nil {
		return fmt.Errorf("console: %w", err)
	}
	b := make([]byte, 1)
	for {
		n, err := f.Read(b)
		if n == 1 {
			return nil
		}
		if err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			return fmt.Errorf("console: waiting for the host: %w", err)
		}
	}
}

// flushBlockDevice drops what the kernel cached of a block device
// (BLKFLSBUF), so that it is read again from the disk.
func flushBlockDevice(dev string) error {
	f, err := os.Open(dev)
	if err != nil {
		return fmt.Errorf("flush %s: %w", dev, err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
		return fmt.Errorf("flush %s: %w", dev, err)
	}
	return nil
}

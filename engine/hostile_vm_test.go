package engine

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/guest"
)

// hostileDevice is a device node the hostile image ships, mode 0666.
type hostileDevice struct {
	name         string
	block        bool
	major, minor uint32
}

// hostileDevices are the VM's disks (virtio-blk 254:*, and the majors a
// kernel may give disks: device-mapper's 253, SCSI's 8, loop's 7, ram's
// 1), its consoles and memory, and nodes of the numbers pe's own /dev
// uses: from the image, even those must not open.
var hostileDevices = []hostileDevice{
	{"vda", true, 254, 0}, {"vdb", true, 254, 16}, {"vdc", true, 254, 32},
	{"dm-0", true, 253, 0}, {"dm-1", true, 253, 16},
	{"sda", true, 8, 0}, {"sdb", true, 8, 16}, {"loop0", true, 7, 0}, {"ram0", true, 1, 0},
	{"ttyS0", false, 4, 64}, {"ttyS1", false, 4, 65}, {"tty0", false, 4, 0}, {"tty1", false, 4, 1},
	{"console", false, 5, 1}, {"kmsg", false, 1, 11}, {"mem", false, 1, 1}, {"port", false, 1, 4},
	{"hvc0", false, 229, 0},
	{"null", false, 1, 3}, {"zero", false, 1, 5}, {"ptmx", false, 5, 2}, {"pts0", false, 136, 0},
}

// TestVMHostileImage runs, in one VM, the attacks of a hostile image
// (issue 14): device nodes for the VM's disks and consoles, a forged
// result on the I/O disk and a forged result-ready line on the console,
// mknod, a setuid-root binary. Every open fails, the run reports the
// program's own status and output, and nothing is left behind.
func TestVMHostileImage(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	probe := filepath.Join(t.TempDir(), "hostileprobe")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", probe, "./testdata/hostileprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the probe: %v\n%s", err, out)
	}
	img := hostileImage(t, f, probe)
	e := newTestEngine(t, f, StaticSource{"hostile": {Reference: "hostile", EROFSPath: img, Config: busyboxConfig()}})
	tmp := e.opts.TempDir

	res := run(t, e, &RunRequest{Image: "hostile", Overrides: Overrides{Cmd: []string{"/x/probe", "attack", "/x/dev"}}})

	var want strings.Builder
	fmt.Fprintf(&want, "\n%s\n", guest.ResultReady)
	names := make([]string, 0, len(hostileDevices))
	for _, d := range hostileDevices {
		names = append(names, d.name)
	}
	// os.ReadDir's order.
	slices.Sort(names)
	for _, n := range names {
		// EACCES: nodev refuses them before the device filter sees them.
		fmt.Fprintf(&want, "open %s r: EACCES\nopen %s w: EACCES\n", n, n)
	}
	want.WriteString("forge result: EACCES\n")
	want.WriteString("mknod vdb: EPERM\nmknod ttyS0: EPERM\n")
	// Only pe's own device nodes, each bound from the init's /dev, and
	// the program's devpts.
	want.WriteString("mounts without nodev: /dev/full /dev/null /dev/pts /dev/random /dev/tty /dev/urandom /dev/zero\n")
	// Setuid root makes the container's root, guest user 100000, which
	// the guest's root-only files refuse.
	want.WriteString("setuid suidprobe as 1000: euid=0 egid=1000\ndrop_caches: EACCES\n")
	want.WriteString("opened 0\n")
	if diff := cmp.Diff(want.String(), string(res.Stdout)); diff != "" {
		t.Errorf("the probe's report (-want +got):\n%s", diff)
	}
	// The program's real status: neither the forged result nor the
	// forged lines replaced it.
	if res.ExitStatus() != 7 || res.Error != "" {
		t.Errorf("exit status %d, error %q; want the program's 7", res.ExitStatus(), res.Error)
	}
	if want := "\n" + guest.ResultReady + "\n"; string(res.Stderr) != want {
		t.Errorf("stderr %q, want %q", res.Stderr, want)
	}
	if res.Rusage.UserMs+res.Rusage.SysMs == 0 && res.Rusage.MaxRSSKB == 0 {
		t.Errorf("rusage %+v: not the program's", res.Rusage)
	}
	if left := walkFiles(tmp); len(left) > 0 {
		t.Errorf("files left behind: %q", left)
	}
}

// hostileImage writes an image of the fixture's busybox tree with the
// probe at /x/probe, a setuid-root copy of it at /x/suidprobe and the
// hostileDevices in /x/dev, mode 0666.
func hostileImage(t *testing.T, f *vmFixture, probe string) string {
	t.Helper()
	bin, err := os.ReadFile(probe)
	if err != nil {
		t.Fatal(err)
	}
	return writeImageWith(t, f, erofs.WriterOptions{}, func(add func(erofs.Entry, []byte)) {
		add(erofs.Entry{Path: "x", Mode: fs.ModeDir | 0o755}, nil)
		add(erofs.Entry{Path: "x/dev", Mode: fs.ModeDir | 0o755}, nil)
		add(erofs.Entry{Path: "x/probe", Mode: 0o755}, bin)
		add(erofs.Entry{Path: "x/suidprobe", Mode: fs.ModeSetuid | 0o755}, bin)
		for _, d := range hostileDevices {
			mode := fs.ModeDevice | 0o666
			if !d.block {
				mode |= fs.ModeCharDevice
			}
			add(erofs.Entry{Path: "x/dev/" + d.name, Mode: mode, DevMajor: d.major, DevMinor: d.minor}, nil)
		}
	})
}

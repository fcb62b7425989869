// Package enginetest gives the VM tests of pe's packages (the engine's own
// and those above it) what a real engine needs: QEMU under TCG, the guest
// kernel make kernel installs, pe's guest init built for the test, and a
// small busybox image. It does not import engine, so engine's own tests can
// use it. Tests that use it boot VMs, which take seconds each under
// emulation; Setup skips them with the reason when -short is given or
// something they need is missing.
package enginetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/guest/guesttest"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// Fixture is what VM tests share: the guest init, the kernel, a busybox
// image and its source tree.
type Fixture struct {
	// Dir holds the fixture's files; Cleanup removes it.
	Dir string
	// Init is the guest init binary.
	Init string
	// Kernel is the guest kernel.
	Kernel *vmm.Kernel
	// Rootfs is the busybox image's source tree; EROFS the image.
	Rootfs, EROFS string
}

var (
	once    sync.Once
	shared  Fixture
	initErr error
)

// Setup skips t unless VMs can run here, and builds the shared fixture
// the first time. Call Cleanup from TestMain to remove it.
func Setup(t testing.TB) *Fixture {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	if _, err := qemu.Find(""); err != nil {
		t.Skipf("QEMU is not installed (make deps, or %s): %v", qemu.InstallHint, err)
	}
	k, err := vmm.FindKernel("")
	if err != nil {
		t.Skipf("no guest kernel (make kernel): %v", err)
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is not installed (apt-get install busybox-static)")
	}
	if out, err := exec.Command("ldd", bb).CombinedOutput(); err == nil && !bytes.Contains(out, []byte("not a dynamic")) {
		t.Skipf("%s is not static (install busybox-static)", bb)
	}
	once.Do(func() {
		shared.Kernel = k
		initErr = build(&shared, bb)
	})
	if initErr != nil {
		t.Fatal(initErr)
	}
	return &shared
}

// Cleanup removes the shared fixture, if one was built.
func Cleanup() {
	if shared.Dir != "" {
		os.RemoveAll(shared.Dir)
	}
}

func build(f *Fixture, busybox string) error {
	dir, err := os.MkdirTemp("", "pe-enginetest-")
	if err != nil {
		return err
	}
	f.Dir = dir
	f.Init = filepath.Join(dir, "pe-init")
	cmd := exec.Command("go", "build", "-ldflags=-s -w", "-o", f.Init, "github.com/pe-project/pe/guest/cmd/pe-init")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building pe-init: %v\n%s", err, out)
	}
	f.Rootfs = filepath.Join(dir, "rootfs")
	if err := MakeBusyboxTree(f.Rootfs, busybox); err != nil {
		return err
	}
	f.EROFS = filepath.Join(dir, "busybox.erofs")
	return image.BuildEROFS(context.Background(), f.Rootfs, f.EROFS, image.BuildOptions{})
}

// MakeBusyboxTree makes a small root file system at root: busybox and its
// applet links in /bin, /etc/passwd and /etc/group with a user alice
// (1000) in the groups alice and staff (50), her home, and /srv/app (the
// image's working directory) holding VERSION.
func MakeBusyboxTree(root, busybox string) error {
	if err := guesttest.MakeTree(root, busybox, []string{"etc", "home/alice", "srv/app", "tmp", "root"}, map[string]string{
		"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000:Alice:/home/alice:/bin/sh\n",
		"etc/group":       "root:x:0:\nstaff:x:50:alice\nalice:x:1000:\n",
		"srv/app/VERSION": "1.2.3\n",
	}); err != nil {
		return err
	}
	return os.Chown(filepath.Join(root, "home/alice"), 1000, 1000)
}

// BusyboxConfig is the config of the busybox image: no entrypoint, a cmd,
// an environment without PATH, a working directory.
func BusyboxConfig() *v1.ConfigFile {
	return &v1.ConfigFile{
		Architecture: "amd64", OS: "linux",
		Config: v1.Config{
			Cmd:        []string{"sh", "-c", "echo default cmd"},
			Env:        []string{"GREETING=hello from the image", "LANG=C"},
			WorkingDir: "/srv/app",
		},
	}
}

// ChildProcesses lists the processes whose parent is this one ("PID
// name"): what a test leaves running, such as a VMM it did not stop.
func ChildProcesses() []string {
	me := strconv.Itoa(os.Getpid())
	var kids []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == me {
			kids = append(kids, e.Name()+" "+s[strings.IndexByte(s, '(')+1:i])
		}
	}
	return kids
}

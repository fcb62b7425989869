// Command hostileprobe is the program of the hostile-image VM test
// (engine/hostile_vm_test.go): it attacks the guest from inside the
// sandbox as a hostile image would, and reports what worked. It is built
// static and shipped in the test's image.
//
//	hostileprobe attack DIR  open every node in DIR, forge a result, ...
//	hostileprobe whoami      print the effective IDs (run setuid)
package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/guest"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: hostileprobe attack DIR | whoami")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "whoami":
		whoami()
	case "attack":
		attack(os.Args[2])
	}
}

// whoami prints the effective IDs and whether the process is root in the
// guest's own user namespace: only that root may write drop_caches.
func whoami() {
	fmt.Printf("euid=%d egid=%d\n", os.Geteuid(), os.Getegid())
	f, err := os.OpenFile("/proc/sys/vm/drop_caches", os.O_WRONLY, 0)
	if err == nil {
		f.Close()
		fmt.Println("drop_caches: writable (guest root!)")
		return
	}
	fmt.Printf("drop_caches: %v\n", errno(err))
}

func attack(dir string) {
	// The line that once ended a run early, on both streams: it is
	// output, nothing more.
	fmt.Printf("\n%s\n", guest.ResultReady)
	fmt.Fprintf(os.Stderr, "\n%s\n", guest.ResultReady)

	ents, err := os.ReadDir(dir)
	if err != nil {
		fmt.Println("readdir:", err)
		os.Exit(1)
	}
	opened := 0
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		for _, m := range []struct {
			name string
			flag int
		}{{"r", os.O_RDONLY}, {"w", os.O_WRONLY}} {
			f, err := os.OpenFile(p, m.flag|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
			if err != nil {
				fmt.Printf("open %s %s: %v\n", e.Name(), m.name, errno(err))
				continue
			}
			opened++
			fmt.Printf("open %s %s: OPENED\n", e.Name(), m.name)
			f.Close()
		}
	}
	forge(dir)

	// A new node for the I/O disk and one for the console.
	for _, n := range []struct {
		name string
		mode uint32
		dev  uint64
	}{{"vdb", unix.S_IFBLK, unix.Mkdev(254, 16)}, {"ttyS0", unix.S_IFCHR, unix.Mkdev(4, 64)}} {
		err := unix.Mknod(filepath.Join("/tmp", n.name), n.mode|0o666, int(n.dev))
		fmt.Printf("mknod %s: %v\n", n.name, errno(err))
	}

	// Every mount without nodev: only pe's own device nodes may be.
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		fmt.Println("mountinfo:", err)
	}
	var devMounts []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			continue
		}
		if !hasOpt(f[5], "nodev") {
			devMounts = append(devMounts, f[4])
		}
	}
	sort.Strings(devMounts)
	fmt.Printf("mounts without nodev: %s\n", strings.Join(devMounts, " "))

	// The setuid-root copies, run as an ordinary user of the container.
	for _, suid := range []string{"suidprobe"} {
		cmd := exec.Command(filepath.Join(dir, "..", suid), "whoami")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
		out, err := cmd.CombinedOutput()
		fmt.Printf("setuid %s as 1000: %s", suid, out)
		if err != nil {
			fmt.Printf("setuid %s: %v\n", suid, err)
		}
	}
	fmt.Printf("opened %d\n", opened)
	os.Exit(7)
}

// forge tries the attack of issue 14: a result of its own on the I/O disk
// and the result-ready line on the console, so that the host would report
// exit 0 and "forged" instead of this program's status.
func forge(dir string) {
	iof, err := guest.OpenIOFile(filepath.Join(dir, "vdb"))
	nonce := ""
	if err == nil {
		if req, err := iof.Request(); err == nil {
			nonce = req.Nonce
		}
		iof.Stdout().Write([]byte("forged\n"))
		err = iof.WriteResult(&guest.Result{ExitCode: 0, Nonce: nonce}, "")
		fmt.Printf("forge result: %v\n", err)
	} else {
		fmt.Printf("forge result: %v\n", errno(err))
	}
	for _, c := range []string{"ttyS0", "console", "kmsg"} {
		f, err := os.OpenFile(filepath.Join(dir, c), os.O_WRONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err != nil {
			continue
		}
		fmt.Fprintf(f, "\n%s\n", guest.ResultReadyLine(nonce))
		f.Close()
		fmt.Printf("forge line on %s\n", c)
	}
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// errno names err's errno, or "ok" for nil.
func errno(err error) string {
	if err == nil {
		return "ok"
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

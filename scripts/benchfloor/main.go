// Command benchfloor is the floor of scripts/bench-run.sh: as PID 1 of a VM
// it powers the VM off at once; run anywhere else with -o it writes an
// initramfs holding itself as /init (with pe's initramfs builder, no
// modules), so that booting that initramfs measures the kernel's boot and
// the VMM's start and stop, and nothing of pe's.
//
//	CGO_ENABLED=0 go build -o floor ./scripts/benchfloor && ./floor -o floor.cpio
package main

import (
	"flag"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/guest"
)

func main() {
	if os.Getpid() == 1 {
		unix.Sync()
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		// A VMM without power-off support: reboot, which -no-reboot ends.
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
		select {}
	}
	out := flag.String("o", "", "the initramfs to write")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "usage: benchfloor -o OUT.cpio")
		os.Exit(2)
	}
	self, err := os.Executable()
	if err == nil {
		err = guest.BuildInitramfs(*out, self, "", []string{})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchfloor:", err)
		os.Exit(1)
	}
}

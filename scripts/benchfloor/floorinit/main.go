// Command floorinit is the init of scripts/bench-run.sh's floor: as PID 1
// of a VM it powers the VM off at once. It is the smallest Go init that
// does that, so the floor holds the kernel's boot and the VMM's start and
// stop, and nothing of pe's.
package main

import "golang.org/x/sys/unix"

func main() {
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// A VMM without power-off support: reboot, which -no-reboot ends.
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

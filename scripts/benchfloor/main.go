// Command benchfloor writes the initramfs of scripts/bench-run.sh's floor
// with pe's initramfs builder (no modules): its /init is INIT, built from
// scripts/benchfloor/floorinit, which powers the VM off at once, so that
// booting it measures the kernel's boot and the VMM's start and stop, and
// nothing of pe's.
//
//	CGO_ENABLED=0 go build -ldflags='-s -w' -o floorinit ./scripts/benchfloor/floorinit
//	go run ./scripts/benchfloor -init floorinit -o floor.cpio
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/pe-project/pe/guest/initramfs"
)

func main() {
	out := flag.String("o", "", "the initramfs to write")
	init := flag.String("init", "", "the static init binary to pack as /init")
	flag.Parse()
	if *out == "" || *init == "" {
		fmt.Fprintln(os.Stderr, "usage: benchfloor -init INIT -o OUT.cpio")
		os.Exit(2)
	}
	if err := initramfs.Build(*out, *init, "", []string{}); err != nil {
		fmt.Fprintln(os.Stderr, "benchfloor:", err)
		os.Exit(1)
	}
}

// Command pe-init is pe's guest init, PID 1 of every pe micro-VM. It must be
// built static, and small, since it is packed into the initramfs:
//
//	CGO_ENABLED=0 go build -ldflags='-s -w' -o pe-init ./guest/cmd/pe-init
//
// Run anywhere else than as PID 1 of a VM it refuses to start. See package
// guestinit for what it does.
package main

import "github.com/pe-project/pe/guest/guestinit"

func main() { guestinit.Main() }

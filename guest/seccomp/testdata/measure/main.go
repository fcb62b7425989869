package main

import (
	"fmt"
	"runtime"
	"time"

	"github.com/pe-project/pe/guest/seccomp"
	"github.com/pe-project/pe/guest/seccomp/dockerprofile"
)

func main() {
	runtime.LockOSThread()
	for i := 0; i < 3; i++ {
		t := time.Now()
		_, _, err := dockerprofile.Program(dockerprofile.DefaultCaps)
		fmt.Printf("generate: %v %v\n", time.Since(t), err)
	}
	t := time.Now()
	err := seccomp.Load()
	fmt.Printf("load: %v %v\n", time.Since(t), err)
	t = time.Now()
	for i := 0; i < 1000; i++ {
		runtime.Gosched()
	}
	fmt.Printf("ok\n")
}

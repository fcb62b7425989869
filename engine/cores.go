package engine

import (
	"runtime"
	"sync"
)

// yielding counts the runs that asked this process to yield cores to
// their VMs (Options.YieldCores), and keeps the GOMAXPROCS to go back to.
var yielding struct {
	sync.Mutex
	runs   int
	before int
	lowest int
}

// yieldCores lowers this process's GOMAXPROCS to the machine's cores minus
// vcpus (at least 1) for as long as the returned func is not called; with
// several runs at once the lowest wins, and the last one to end restores
// the value from before the first.
func yieldCores(vcpus int) (restore func()) {
	want := max(1, runtime.NumCPU()-vcpus)
	yielding.Lock()
	defer yielding.Unlock()
	if yielding.runs == 0 {
		yielding.before = runtime.GOMAXPROCS(0)
		yielding.lowest = yielding.before
	}
	yielding.runs++
	if want < yielding.lowest {
		yielding.lowest = want
		runtime.GOMAXPROCS(want)
	}
	return func() {
		yielding.Lock()
		defer yielding.Unlock()
		yielding.runs--
		if yielding.runs == 0 && yielding.lowest != yielding.before {
			runtime.GOMAXPROCS(yielding.before)
		}
	}
}

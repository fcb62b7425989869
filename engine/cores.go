package engine

import (
	"os"
	"runtime"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
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

// yieldNice is how much lower than its VM pe's own threads run while the
// VM is up (Options.YieldCores): the chunks a lazy run fetches, hashes
// and writes then wait for a core the vCPUs are not using.
const yieldNice = 10

// lowerPriority makes every thread of this process nicer by yieldNice
// (threads made later inherit it from the thread that makes them). It
// cannot be undone without privilege, hence only for a process that runs
// one VM and then ends.
func lowerPriority() {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// getpriority(2) returns 20 - nice.
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			continue
		}
		unix.Setpriority(unix.PRIO_PROCESS, tid, min(19, 20-prio+yieldNice))
	}
}

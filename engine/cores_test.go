package engine

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestYieldCores: runs lower GOMAXPROCS to the cores their VMs leave, the
// lowest of overlapping runs wins, and the last run to end restores it.
func TestYieldCores(t *testing.T) {
	cpus := runtime.NumCPU()
	before := runtime.GOMAXPROCS(cpus + 3) // a value no run asks for
	defer runtime.GOMAXPROCS(before)
	first := yieldCores(1)
	if got, want := runtime.GOMAXPROCS(0), max(1, cpus-1); got != want {
		t.Errorf("one run of 1 vCPU: GOMAXPROCS %d, want %d", got, want)
	}
	second := yieldCores(cpus + 8)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("a second run with more vCPUs than cores: GOMAXPROCS %d, want 1", got)
	}
	first()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("the first run ended, the second goes on: GOMAXPROCS %d, want 1", got)
	}
	second()
	if got := runtime.GOMAXPROCS(0); got != cpus+3 {
		t.Errorf("both runs ended: GOMAXPROCS %d, want the %d from before", got, cpus+3)
	}
}

// TestLowerPriority: every thread of the process ends up yieldNice nicer,
// and threads made afterwards inherit it. In a child process, since it
// cannot be undone without privilege.
func TestLowerPriority(t *testing.T) {
	if os.Getenv("PE_TEST_LOWER_PRIORITY") != "" {
		lowerPriority()
		done := make(chan struct{})
		go func() { // very likely on a new thread, made after the change
			runtime.LockOSThread()
			fmt.Println("new", niceOf(t, unix.Gettid()))
			close(done)
		}()
		<-done
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			fmt.Println("thread", niceOf(t, tid))
		}
		return
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestLowerPriority$")
	cmd.Env = append(os.Environ(), "PE_TEST_LOWER_PRIORITY=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	want := min(19, niceOf(t, unix.Gettid())+yieldNice)
	lines := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		kind, nice, ok := strings.Cut(line, " ")
		if !ok || kind != "new" && kind != "thread" {
			continue
		}
		lines++
		if n, _ := strconv.Atoi(nice); n != want {
			t.Errorf("a %s thread's nice value is %s, want %d", kind, nice, want)
		}
	}
	if lines < 2 {
		t.Errorf("the child reported %d threads:\n%s", lines, out)
	}
}

func niceOf(t *testing.T, tid int) int {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		t.Fatal(err)
	}
	return 20 - prio
}

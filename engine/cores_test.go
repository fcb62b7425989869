package engine

import (
	"runtime"
	"testing"
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

package vmm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// HostTSCKHz returns the host's time-stamp counter frequency in kHz, 0 when
// unknown: /sys/devices/system/cpu/cpu0/tsc_freq_khz where the kernel has
// it, else the "cpu MHz" of /proc/cpuinfo (the TSC rate on virtual machines
// and on CPUs with a constant TSC).
//
// Under TCG a guest reads the host's TSC, and a loaded host can make the
// guest kernel's TSC calibration against the emulated PIT fail; Debian's
// kernel then hangs early in boot. Telling it the frequency with
// tsc_early_khz= skips the calibration.
func HostTSCKHz() int64 {
	tscOnce.Do(func() { tscKHz = readTSCKHz() })
	return tscKHz
}

var (
	tscOnce sync.Once
	tscKHz  int64
)

func readTSCKHz() int64 {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			return v
		}
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return cpuinfoKHz(b)
}

// cpuinfoKHz parses the first "cpu MHz" line of /proc/cpuinfo.
func cpuinfoKHz(b []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || !(mhz > 0) || mhz > 1e7 {
			return 0
		}
		return int64(mhz*1000 + 0.5)
	}
	return 0
}

// FindBinary returns the path of the VMM executable binary, or of def when
// binary is "", with an error that names it and says how to get it (hint).
func FindBinary(binary, def, hint string) (string, error) {
	if binary == "" {
		binary = def
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return "", fmt.Errorf("%s not found (%s): %w", binary, hint, err)
	}
	return path, nil
}

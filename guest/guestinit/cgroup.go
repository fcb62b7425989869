package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CgroupRoot is where the init mounts the cgroup v2 hierarchy.
const CgroupRoot = "/sys/fs/cgroup"

// cgroup is the program's cgroup v2 directory. Everything the program
// starts lands in it, so limits and the final kill cover all of it.
type cgroup struct {
	dir string
	fd  int // the directory, for clone3's CLONE_INTO_CGROUP
	// The files read after the program, opened with the cgroup: a
	// restored VM then only reads them (pread), sparing the opens' and
	// closes' kernel paths, which it would emulate afresh. -1 when absent.
	events, memPeak, memEvents int
	// The limits written so far (-1: none yet), so that setting them
	// again writes only what changed.
	memMax, pids int64
}

// newCgroup creates the cgroup name under parent, enabling the memory and
// pids controllers in parent, with the settings no request changes and
// the device filter (see devfilter.go). Its
// limits are set by [cgroup.limit], before the program starts: the
// sandbox's stage-2 child may wait in it, without them, for a request.
func newCgroup(parent, name string) (*cgroup, error) {
	if err := writeFile(filepath.Join(parent, "cgroup.subtree_control"), "+memory +pids"); err != nil {
		return nil, fmt.Errorf("cgroup: enable memory and pids controllers: %w", err)
	}
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	// One OOM kill ends the whole program rather than leaving a half-dead
	// process tree running until the time limit.
	if err := writeFile(filepath.Join(dir, "memory.oom.group"), "1"); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("cgroup: set memory.oom.group: %w", err)
	}
	// No swap in the VM, but say so in case a kernel has some.
	if err := writeFile(filepath.Join(dir, "memory.swap.max"), "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		os.Remove(dir)
		return nil, fmt.Errorf("cgroup: set memory.swap.max: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	// Fail closed: a program without the device filter would have only
	// nodev between it and a device node an image ships.
	if err := attachDeviceFilter(fd); err != nil {
		unix.Close(fd)
		os.Remove(dir)
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	c := &cgroup{dir: dir, fd: fd, memMax: -1, pids: -1}
	c.events = openStat(dir, "cgroup.events")
	c.memPeak = openStat(dir, "memory.peak")
	c.memEvents = openStat(dir, "memory.events")
	return c, nil
}

// limit sets memory.max and pids.max, writing only what differs from the
// last call. Every limit must take: a program without them could take the
// init down.
func (c *cgroup) limit(memMax int64, pidsMax int) error {
	for _, s := range []struct {
		file    string
		value   int64
		written *int64
	}{
		{"memory.max", memMax, &c.memMax},
		{"pids.max", int64(pidsMax), &c.pids},
	} {
		if *s.written == s.value {
			continue
		}
		if err := writeFile(filepath.Join(c.dir, s.file), strconv.FormatInt(s.value, 10)); err != nil {
			return fmt.Errorf("cgroup: set %s: %w", s.file, err)
		}
		*s.written = s.value
	}
	return nil
}

// kill SIGKILLs everything in the cgroup: cgroup.kill where the kernel has
// it (5.14+), else each listed process until none is left.
func (c *cgroup) kill() error {
	if err := writeFile(filepath.Join(c.dir, "cgroup.kill"), "1"); err == nil {
		return nil
	}
	for range 100 {
		b, err := os.ReadFile(filepath.Join(c.dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			return nil
		}
		for _, p := range pids {
			if pid, err := strconv.Atoi(p); err == nil {
				unix.Kill(pid, unix.SIGKILL)
			}
		}
		time.Sleep(time.Millisecond)
	}
	return errors.New("cgroup: processes keep appearing")
}

// waitEmpty waits until no process is left in the cgroup.
func (c *cgroup) waitEmpty(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		kv, _ := readKeyValues(c.events)
		if kv["populated"] == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// cgroupStats is what the cgroup counted for the whole program.
type cgroupStats struct {
	memoryPeak int64
	oomKills   int64
}

func (c *cgroup) stats() cgroupStats {
	var s cgroupStats
	if b, err := preadAll(c.memPeak); err == nil {
		s.memoryPeak, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	if kv, err := readKeyValues(c.memEvents); err == nil {
		s.oomKills = kv["oom_kill"]
	}
	return s
}

// close releases the directory fd and removes the (empty) cgroup.
func (c *cgroup) close() {
	for _, fd := range []int{c.events, c.memPeak, c.memEvents, c.fd} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	os.Remove(c.dir)
}

// openStat opens the cgroup file name in dir for reading, -1 if it cannot.
func openStat(dir, name string) int {
	fd, err := unix.Open(filepath.Join(dir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1
	}
	return fd
}

// preadAll reads a cgroup file from its start: each read from offset 0
// shows its current values.
func preadAll(fd int) ([]byte, error) {
	if fd < 0 {
		return nil, fs.ErrNotExist
	}
	b := make([]byte, 4096)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		return nil, err
	}
	return b[:n], nil
}

// readKeyValues parses "key value" lines (cgroup.events, memory.events)
// of the open cgroup file fd.
func readKeyValues(fd int) (map[string]int64, error) {
	b, err := preadAll(fd)
	if err != nil {
		return nil, err
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			m[k] = n
		}
	}
	return m, nil
}

// writeFile writes a control file in one write(2), as the kernel wants.
func writeFile(p, s string) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

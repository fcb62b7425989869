package guestinit

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pe-project/pe/guest"
	"golang.org/x/sys/unix"
)

// warmCodecs has encoding/json build what it builds by reflection on a
// type's first use (field lists, encoders) for the request, the result
// and the stage-2 setup and configuration. Done before a snapshot, that
// work is part of it: restored VMs, which emulate every new code path
// afresh, skip it.
func warmCodecs() {
	var req guest.Request
	if b, err := json.Marshal(&guest.Request{
		Argv: []string{"true"}, Env: []string{"A=1"}, Cwd: "/", Groups: []uint32{1},
		Timeout: time.Second, Hostname: "h", Time: time.Now(), Seed: []byte{1},
	}); err == nil {
		json.Unmarshal(b, &req)
	}
	json.Marshal(&guest.Result{Signal: "KILL", Error: "e", Timings: map[string]int64{"program": 1}})
	json.NewEncoder(io.Discard).Encode(&stage2Setup{Root: "/r", Proc: "/r/proc", Dev: "/r/dev", DevDir: "/dev", ShmSize: 1})
	json.NewEncoder(io.Discard).Encode(&stage2Config{Argv: []string{"true"}, Env: []string{"A=1"}, Groups: []uint32{1}})
}

// What warmImage may read before a snapshot: a share of the VM's memory
// (this cap, or an eighth of it) and of the time its creation takes.
const (
	warmMaxBytes = 128 << 20
	warmMaxTime  = 8 * time.Second
)

// warmDirs are the directories whose files warmImage reads before the
// rest: the default PATH's (bin before sbin), then where shared libraries
// and their loader live.
var warmDirs = []string{
	"usr/local/bin", "usr/bin", "bin", "usr/local/sbin", "usr/sbin", "sbin",
	"lib", "lib64", "lib/x86_64-linux-gnu", "usr/lib", "usr/lib64", "usr/lib/x86_64-linux-gnu",
}

// warmStats says what warmImage read.
type warmStats struct {
	Bytes int64
	// Paths are the files read, in order, relative to the root.
	Paths []string
	// Cut is set when the budget or the deadline stopped the reading.
	Cut bool
}

// warmImage reads files of the image mounted at root into the page cache,
// budget bytes at most, until deadline: a VM restored from a snapshot
// taken after it finds them in memory, where it would otherwise read them
// from the image disk, through code paths it emulates afresh, on every
// run. The files programs most likely need come first: the shell, then
// the files directly in warmDirs, then the rest of the tree. Symbolic
// links are resolved inside root and each file is read once, however many
// names it has.
func warmImage(root string, budget int64, deadline time.Time) (*warmStats, error) {
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rootfd)
	w := &warmer{rootfd: rootfd, budget: budget, deadline: deadline, seen: map[[2]uint64]bool{}, buf: make([]byte, 256<<10)}
	w.file("bin/sh")
	for _, d := range warmDirs {
		w.dir(d)
	}
	if !w.full() {
		// The rest, without following links: every directory here is the
		// image's own, under root.
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if w.full() {
				return fs.SkipAll
			}
			if err == nil && d.Type().IsRegular() {
				rel, _ := filepath.Rel(root, p)
				w.file(rel)
			}
			return nil
		})
	}
	w.stats.Cut = w.full()
	return &w.stats, nil
}

type warmer struct {
	rootfd   int
	budget   int64
	deadline time.Time
	seen     map[[2]uint64]bool // device and inode of the files read
	buf      []byte
	stats    warmStats
}

func (w *warmer) full() bool {
	return w.stats.Bytes >= w.budget || time.Now().After(w.deadline)
}

// file reads rel, resolved inside the root, if it is a regular file not
// read yet.
func (w *warmer) file(rel string) {
	if w.full() {
		return
	}
	fd, err := guest.Openat2(w.rootfd, rel, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NONBLOCK, Resolve: inRoot})
	if err != nil {
		return
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	key := [2]uint64{st.Dev, st.Ino}
	if w.seen[key] {
		return
	}
	w.seen[key] = true
	w.stats.Paths = append(w.stats.Paths, rel)
	for !w.full() {
		n, err := unix.Read(fd, w.buf[:min(int64(len(w.buf)), w.budget-w.stats.Bytes)])
		if n > 0 {
			w.stats.Bytes += int64(n)
		}
		if n <= 0 || err != nil {
			return
		}
	}
}

// dir reads the files directly in rel (a directory resolved inside the
// root), in name order.
func (w *warmer) dir(rel string) {
	if w.full() {
		return
	}
	fd, err := guest.Openat2(w.rootfd, rel, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: inRoot})
	if err != nil {
		return
	}
	d := os.NewFile(uintptr(fd), rel)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil && !errors.Is(err, io.EOF) {
		return
	}
	slices.Sort(names)
	for _, name := range names {
		w.file(filepath.Join(rel, name))
	}
}

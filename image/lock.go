package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// fileLock is an flock(2) lock on a file. flock locks belong to the open
// file, so they work between goroutines of one process (each locks its
// own open file) as between processes, and the kernel drops them when a
// process dies: a crashed pe never leaves the cache locked.
type fileLock struct {
	f    *os.File
	path string
}

// lockFile takes an exclusive (or, with shared, a shared) lock on path,
// creating the file if needed. It waits as long as ctx allows, polling,
// because a blocking flock cannot be interrupted; waiting is called once if
// the lock is busy, so the caller can say what it waits for.
func lockFile(ctx context.Context, path string, shared bool, waiting func()) (*fileLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	how := unix.LOCK_EX
	if shared {
		how = unix.LOCK_SH
	}
	delay := 5 * time.Millisecond
	for first := true; ; first = false {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			if sameFile(f, path) {
				return &fileLock{f: f, path: path}, nil
			}
			// The holder removed the lock file as it let go (see
			// unlockRemove): lock the file that is there now.
			f.Close()
			if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644); err != nil {
				return nil, err
			}
			continue
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if first && waiting != nil {
			waiting()
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// unlock releases the lock.
func (l *fileLock) unlock() {
	if l != nil {
		l.f.Close()
	}
}

// unlockRemove removes the lock file and releases the lock, so per-image
// lock files do not pile up. It is safe because lockFile checks, once it
// holds a lock, that the file it locked is still the one at the path, and
// starts again if not. Only an exclusive holder may call it.
func (l *fileLock) unlockRemove() {
	if l != nil {
		os.Remove(l.path)
		l.f.Close()
	}
}

// sameFile reports whether the open file f is the file at path.
func sameFile(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

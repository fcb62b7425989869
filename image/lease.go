package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// Lease keeps a cached image in use: while a lease on it is held, by this
// process or another, Prune, Remove and RemoveID leave the image's
// directory alone. A lease is a shared flock(2) on the image's
// rootfs.erofs, so the kernel drops it with the process that held it: a
// crashed pe never pins an image for ever.
type Lease struct {
	once sync.Once
	f    *os.File
}

// Release ends the lease. It may be called more than once, and on nil.
func (l *Lease) Release() {
	if l == nil {
		return
	}
	l.once.Do(func() { l.f.Close() })
}

// Acquire is Get, and also takes a lease on the image, which the caller
// holds while it uses the image (a run) and then releases. The lease is
// taken while Get still holds the cache lock, so no prune can come in
// between.
func (c *Cache) Acquire(ctx context.Context, ref Reference, opts PullOptions) (*CachedImage, *Lease, error) {
	var lease *Lease
	img, err := c.get(ctx, ref, opts, func(img *CachedImage) error {
		var err error
		lease, err = c.lease(img.Digest)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return img, lease, nil
}

// lease takes a lease on image h. The caller holds the gc lock shared, so
// no one holds the image's exclusive probe (see inUse) for long.
func (c *Cache) lease(h v1.Hash) (*Lease, error) {
	f, err := os.Open(c.path(imagesDir, h.Hex, erofsName))
	if err != nil {
		return nil, fmt.Errorf("holding image %s: %w", h, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_SH)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("holding image %s: %w", h, err)
	}
	return &Lease{f: f}, nil
}

// inUse reports whether someone holds a lease on image h. The caller
// holds the gc lock exclusively, so no new lease can be taken before it
// deletes the image.
func (c *Cache) inUse(h v1.Hash) bool {
	f, err := os.Open(c.path(imagesDir, h.Hex, erofsName))
	if err != nil {
		return false
	}
	defer f.Close()
	return errors.Is(unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB), unix.EWOULDBLOCK)
}

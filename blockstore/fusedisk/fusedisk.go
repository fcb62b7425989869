package fusedisk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// ErrUnavailable is wrapped by Mount's error when FUSE cannot be used on
// this host: no /dev/fuse, or not root and no fusermount3 binary. Callers
// branch on it (errors.Is) to fall back to a local copy of the image.
var ErrUnavailable = errors.New("FUSE is not available")

// ErrClosed is returned by Add after Close.
var ErrClosed = errors.New("fusedisk: mount closed")

// ErrExist is wrapped by Add's error when the mount already has a file of
// that name.
var ErrExist = errors.New("file exists")

// ReaderAtContext is what a backing reader may implement besides
// io.ReaderAt (a *blockstore.Image does): reads then get a context that
// ends when the reading process is interrupted or the mount closes.
type ReaderAtContext interface {
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// Options configure Mount. Zero values take the defaults.
type Options struct {
	// AllowOther lets users other than the mounter use the files (the
	// allow_other mount option): needed when the VMM runs as another
	// user, as pe's confined QEMU does, since FUSE refuses even fstat on
	// an inherited descriptor to such a user otherwise. Mounting without
	// root needs user_allow_other in /etc/fuse.conf for it.
	AllowOther bool
	// MaxRead is the largest read one FUSE request carries; default and
	// maximum 1 MiB (the kernel's limit, 256 pages).
	MaxRead int
	// CloseTimeout is how long Close waits for open files to be closed
	// before it aborts the connection; default 5 s.
	CloseTimeout time.Duration
	// Name is the file system's name in /proc/self/mountinfo (default
	// "pe-lazy").
	Name string
	// Logger receives read errors (the reader only sees EIO); nil
	// discards them.
	Logger *slog.Logger
}

const (
	defaultMaxRead      = 1 << 20
	defaultCloseTimeout = 5 * time.Second
)

// FS is a mounted read-only FUSE file system whose files read from
// io.ReaderAts. Its methods are safe for concurrent use.
type FS struct {
	dir    string
	opts   Options
	srv    *fuse.Server
	root   *rootNode
	dev    uint64 // the mount's st_dev: names its fusectl directory
	direct bool   // mounted with mount(2), not fusermount
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	files   map[string]*fs.Inode
	nextIno uint64
	closed  bool

	closeOnce sync.Once
	closeErr  error
}

// Mount mounts an empty read-only FUSE file system on dir, an existing
// directory. The caller must Close it, whatever happens after.
func Mount(dir string, o Options) (*FS, error) {
	if o.MaxRead <= 0 || o.MaxRead > defaultMaxRead {
		o.MaxRead = defaultMaxRead
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = defaultCloseTimeout
	}
	if o.Name == "" {
		o.Name = "pe-lazy"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("fusedisk: mount point %s: %w", dir, err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("fusedisk: mounting %s: %w: %w", abs, ErrUnavailable, err)
	}
	direct := os.Geteuid() == 0
	if !direct {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			if _, err2 := exec.LookPath("fusermount"); err2 != nil {
				return nil, fmt.Errorf("fusedisk: mounting %s as uid %d needs the fusermount3 binary (Debian: apt install fuse3), not found: %w", abs, os.Geteuid(), ErrUnavailable)
			}
		}
	}
	if !direct && o.AllowOther && !userAllowOther("/etc/fuse.conf") {
		return nil, fmt.Errorf("fusedisk: mounting %s with allow_other as uid %d needs user_allow_other in /etc/fuse.conf: %w", abs, os.Geteuid(), ErrUnavailable)
	}
	if err := clearStale(abs, direct); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &FS{dir: abs, opts: o, direct: direct, ctx: ctx, cancel: cancel,
		files: map[string]*fs.Inode{}, nextIno: 2}
	m.root = &rootNode{m: m}

	// Content never changes, so the kernel may cache entries and
	// attributes; Remove invalidates its entry explicitly.
	timeout := time.Hour
	negative := time.Duration(0) // Add must show a name looked up before
	mo := fuse.MountOptions{
		AllowOther:    o.AllowOther,
		FsName:        o.Name,
		Name:          "pe",
		MaxWrite:      o.MaxRead, // go-fuse sets max_read and max_pages from it
		MaxReadAhead:  o.MaxRead,
		DisableXAttrs: true,
		// Splicing a 1 MiB reply overflows the default pipe and makes
		// go-fuse log and fall back on every read; the copy it saves is
		// small next to a chunk fetch.
		DisableSplice: true,
		Logger:        slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
		// The kernel checks the 0444 mode: writers get EACCES before pe
		// sees anything.
		Options: []string{"default_permissions"},
	}
	if direct {
		mo.DirectMountStrict = true
		mo.DirectMountFlags = syscall.MS_RDONLY | syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_NOEXEC
	} else {
		mo.Options = append(mo.Options, "ro", "nosuid", "nodev", "noexec")
	}
	rawFS := fs.NewNodeFS(m.root, &fs.Options{
		MountOptions:    mo,
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &negative,
	})
	srv, err := fuse.NewServer(rawFS, abs, &mo)
	if err != nil {
		cancel()
		// NewServer leaves nothing mounted when it fails; make sure.
		if mounted(abs) {
			forceUnmount(abs, direct, 0)
		}
		return nil, fmt.Errorf("fusedisk: mounting FUSE on %s: %w", abs, err)
	}
	m.srv = srv
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		m.Close()
		return nil, fmt.Errorf("fusedisk: FUSE mount on %s did not start: %w", abs, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		m.Close()
		return nil, fmt.Errorf("fusedisk: stat of the new mount %s: %w", abs, err)
	}
	m.dev = st.Dev
	m.raiseReadahead()
	return m, nil
}

// userAllowOther reports whether the fuse.conf at path lets users mount
// with allow_other (fusermount3 refuses it otherwise, on its stderr).
func userAllowOther(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if strings.TrimSpace(line) == "user_allow_other" {
			return true
		}
	}
	return false
}

// raiseReadahead lets the kernel's readahead on the mount grow to
// MaxRead: FUSE starts a mount's backing device at 128 KiB and the
// kernel only ever lowers it from the INIT reply, so reads through the
// page cache (all of them, with FOPEN_KEEP_CACHE) would never exceed
// 128 KiB per request. Only root may write the setting; without it reads
// stay at 128 KiB, which works, with more requests.
func (m *FS) raiseReadahead() {
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(m.dev), unix.Minor(m.dev))
	if err := os.WriteFile(p, []byte(strconv.Itoa(m.opts.MaxRead>>10)), 0); err != nil {
		m.opts.Logger.Debug("fusedisk: cannot raise the readahead", "dir", m.dir, "err", err)
	}
}

// Dir returns the mount point.
func (m *FS) Dir() string { return m.dir }

// Add shows size bytes of r as the file name (a plain name, no slashes)
// at the mount's top and returns its path. Reads of the file read r,
// concurrently; r must stay readable until Remove or Close.
func (m *FS) Add(name string, r io.ReaderAt, size int64) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 255 {
		return "", fmt.Errorf("fusedisk: file name %q: must be a plain name of 1 to 255 bytes", name)
	}
	if r == nil || size < 0 {
		return "", fmt.Errorf("fusedisk: file %q: needs a reader and a size ≥ 0 (got %d)", name, size)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return "", ErrClosed
	}
	if m.files[name] != nil {
		return "", fmt.Errorf("fusedisk: adding %q to %s: %w", name, m.dir, ErrExist)
	}
	f := &fileNode{m: m, name: name, r: r, size: size, mtime: time.Now()}
	f.rc, _ = r.(ReaderAtContext)
	ino := m.nextIno
	m.nextIno++
	// Persistent: the file stays while the kernel forgets it, until Remove.
	in := m.root.NewPersistentInode(m.ctx, f, fs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
	if !m.root.AddChild(name, in, false) {
		return "", fmt.Errorf("fusedisk: adding %q to %s: %w", name, m.dir, ErrExist)
	}
	m.files[name] = in
	return filepath.Join(m.dir, name), nil
}

// Remove takes the file name off the mount: it can no longer be opened,
// but descriptors already open keep reading it (the reader must stay
// usable while they do, or their reads get EIO). Removing a name that is
// not there is not an error.
func (m *FS) Remove(name string) error {
	m.mu.Lock()
	in := m.files[name]
	delete(m.files, name)
	closed := m.closed
	m.mu.Unlock()
	if in == nil || closed {
		return nil
	}
	m.root.RmChild(name)
	// The kernel cached the entry for an hour: drop it now. ENOENT means
	// the kernel had no entry to drop.
	if errno := m.root.NotifyEntry(name); errno != 0 && errno != syscall.ENOENT {
		return fmt.Errorf("fusedisk: removing %q from %s: invalidating the kernel's entry: %w", name, m.dir, errno)
	}
	return nil
}

// Close unmounts the file system. Reads in progress end (their context is
// cancelled); if files are still open after Options.CloseTimeout, the
// connection is aborted and the mount detached, so Close returns and no
// mount remains however the readers behave. It returns an error only if
// the mount could not be removed.
func (m *FS) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		m.cancel()
		m.closeErr = m.unmount()
	})
	return m.closeErr
}

// unmount unmounts cleanly, retrying while files are open, then by force;
// it waits for the server's loops to end.
func (m *FS) unmount() error {
	deadline := time.Now().Add(m.opts.CloseTimeout)
	delay := 5 * time.Millisecond
	var err error
	for {
		if err = plainUnmount(m.dir, m.direct); err == nil || !mounted(m.dir) {
			m.opts.Logger.Debug("fusedisk: unmounted", "dir", m.dir, "err", err)
			err = nil
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(delay)
		delay = min(2*delay, 200*time.Millisecond)
	}
	if err != nil {
		m.opts.Logger.Warn("fusedisk: files still open, aborting the FUSE connection", "dir", m.dir, "err", err)
		if ferr := forceUnmount(m.dir, m.direct, m.dev); ferr != nil {
			return fmt.Errorf("fusedisk: unmounting %s: %v; by force: %w", m.dir, err, ferr)
		}
	}
	if m.srv == nil {
		return nil
	}
	// The server's loops end once the kernel's connection does: at once
	// after an abort, or when the last open file closes after a detach.
	done := make(chan struct{})
	go func() { m.srv.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(m.opts.CloseTimeout):
		// Detached and aborted where we could: the mount is gone from
		// the namespace; the loops end when the kernel lets go.
		if m.dev != 0 {
			abortConn(m.dev)
		}
		m.opts.Logger.Warn("fusedisk: FUSE server still running after unmount", "dir", m.dir)
	}
	return nil
}

// plainUnmount unmounts dir, failing (EBUSY) while files are open.
func plainUnmount(dir string, direct bool) error {
	if direct {
		return unix.Unmount(dir, 0)
	}
	return fusermount("-u", dir)
}

// forceUnmount aborts the FUSE connection of dir (dev is its st_dev, or 0
// if unknown) and detaches the mount, so open files fail with ENOTCONN
// instead of keeping it busy. As root, MNT_FORCE makes the FUSE driver
// abort the connection itself (fuse_umount_begin); otherwise the abort
// file of fusectl does it, when fusectl is mounted.
func forceUnmount(dir string, direct bool, dev uint64) error {
	if dev != 0 {
		abortConn(dev)
	}
	if direct {
		err := unix.Unmount(dir, unix.MNT_FORCE|unix.MNT_DETACH)
		if err != nil && mounted(dir) {
			return fmt.Errorf("umount -f -l: %w", err)
		}
		return nil
	}
	if err := fusermount("-u", "-z", dir); err != nil && mounted(dir) {
		return err
	}
	return nil
}

// abortConn writes the fusectl abort file of the connection of the mount
// whose st_dev is dev, if fusectl is mounted.
func abortConn(dev uint64) {
	// fusectl names a connection by the kernel's dev_t of its super block:
	// FUSE's anonymous devices have major 0, so that is the minor.
	p := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", unix.Minor(dev)|unix.Major(dev)<<20)
	if f, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
		f.Write([]byte("1"))
		f.Close()
	}
}

// fusermount runs fusermount3 (or fusermount) with args.
func fusermount(args ...string) error {
	bin, err := exec.LookPath("fusermount3")
	if err != nil {
		if bin, err = exec.LookPath("fusermount"); err != nil {
			return fmt.Errorf("fusermount3 not found: %w", err)
		}
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mounted reports whether dir is a mount point in this process's mount
// namespace, per /proc/self/mountinfo.
func mounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	return MountedIn(b, dir)
}

// MountedIn reports whether dir is a mount point in mountinfo, the
// contents of a /proc/PID/mountinfo file. Tests use it to check that no
// mount leaks.
func MountedIn(mountinfo []byte, dir string) bool {
	_, ok := fsTypeIn(mountinfo, dir)
	return ok
}

// MountsUnder returns the mount points in mountinfo (the contents of a
// /proc/PID/mountinfo file) below dir, not dir itself: what a killed
// process left mounted in a directory its successor removes.
func MountsUnder(mountinfo []byte, dir string) []string {
	var out []string
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for line := range strings.Lines(string(mountinfo)) {
		f := strings.Fields(line)
		if len(f) <= 4 {
			continue
		}
		if p := unescapeMountinfo(f[4]); strings.HasPrefix(p, prefix) {
			out = append(out, p)
		}
	}
	return out
}

// fsTypeIn returns the file system type of the last mount on dir in
// mountinfo, and whether there is one.
func fsTypeIn(mountinfo []byte, dir string) (fsType string, ok bool) {
	for line := range strings.Lines(string(mountinfo)) {
		f := strings.Fields(line)
		if len(f) <= 4 || unescapeMountinfo(f[4]) != dir {
			continue
		}
		ok = true
		fsType = ""
		// Optional fields, then "-", then the type.
		for i := 6; i+1 < len(f); i++ {
			if f[i] == "-" {
				fsType = f[i+1]
				break
			}
		}
	}
	return fsType, ok
}

// fsType is the type of pe's mounts in mountinfo (go-fuse's "fuse."+Name).
const fsType = "fuse.pe"

// clearStale detaches a mount of pe's left on dir by a process that died
// (its connection is gone: ENOTCONN), so that the new mount does not
// stack on a dead one. A live mount there, or another file system, is an
// error.
func clearStale(dir string, direct bool) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil // no way to tell; mount(2) will say if dir is unusable
	}
	typ, ok := fsTypeIn(b, dir)
	if !ok {
		return nil
	}
	// statfs always asks the daemon (stat may answer from the kernel's
	// attribute cache), so it tells a dead connection.
	var st unix.Statfs_t
	serr := unix.Statfs(dir, &st)
	if typ != fsType || (serr != unix.ENOTCONN && serr != unix.ECONNABORTED) {
		return fmt.Errorf("fusedisk: %s is already a mount point (%s, in use)", dir, typ)
	}
	if err := forceUnmount(dir, direct, 0); err != nil {
		return fmt.Errorf("fusedisk: removing the dead FUSE mount on %s left by a process that ended: %w", dir, err)
	}
	return nil
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// rootNode is the mount's top directory: read-only, 0555.
type rootNode struct {
	fs.Inode
	m *FS
}

var _ = (fs.NodeGetattrer)((*rootNode)(nil))

func (r *rootNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	return 0
}

// fileNode is one file: size bytes of r.
type fileNode struct {
	fs.Inode
	m     *FS
	name  string
	r     io.ReaderAt
	rc    ReaderAtContext // r, if it takes a context
	size  int64
	mtime time.Time
}

var (
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeSetattrer)((*fileNode)(nil))
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeReader)((*fileNode)(nil))
)

func (f *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Size = uint64(f.size)
	out.Blocks = (uint64(f.size) + 511) / 512
	out.Blksize = 4096
	out.SetTimes(&f.mtime, &f.mtime, &f.mtime)
	return 0
}

// Setattr refuses every change (truncate, chmod, utimes): the root user
// gets past the 0444 mode, not past this.
func (f *fileNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// Open allows reading only, and lets the kernel keep its page cache
// across opens: the content never changes.
func (f *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// Read reads from the backing reader. A failed read is EIO to the
// reader, as is one still running when the mount closes; an interrupted
// one is EINTR.
func (f *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= f.size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), f.size-off)]
	// ctx ends on FUSE_INTERRUPT and when the connection ends; add the
	// mount's own end (Close).
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(f.m.ctx, cancel)
	defer stop()

	n, err := f.readAt(ctx, dest, off)
	if err == io.EOF && n == len(dest) {
		err = nil
	}
	if err != nil {
		// EINTR only for the reader's own interrupt: a VMM retries an
		// interrupted read, which would spin while the mount closes.
		if ctx.Err() != nil && f.m.ctx.Err() == nil {
			return nil, syscall.EINTR
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // the reader is shorter than its size
		}
		f.m.opts.Logger.Warn("fusedisk: read failed", "file", f.name, "off", off, "len", len(dest), "err", err)
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// readAt reads dest at off from the backing reader, giving up when ctx
// ends. A reader without a context is left to finish on its own buffer,
// since dest is go-fuse's and reused once Read returns.
func (f *fileNode) readAt(ctx context.Context, dest []byte, off int64) (int, error) {
	if f.rc != nil {
		return f.rc.ReadAtContext(ctx, dest, off)
	}
	type result struct {
		n   int
		err error
	}
	buf := make([]byte, len(dest))
	done := make(chan result, 1)
	go func() {
		n, err := f.r.ReadAt(buf, off)
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		copy(dest, buf[:r.n])
		return r.n, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

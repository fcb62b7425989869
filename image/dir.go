package image

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/erofs"
)

// AddDir adds the tree rooted at the host directory root to w: root's own
// metadata becomes the image root's, and everything below it is added in
// byte order of names, without following symbolic links. Each object keeps
// its type, permissions (setuid, setgid and sticky included), owner,
// modification time to the nanosecond, extended attributes, symlink target
// and device numbers; regular files are streamed from disk. Names sharing an
// inode (hard links) stay hard links in the image. Sockets are included.
//
// AddDir checks ctx between entries and while copying file data.
func AddDir(ctx context.Context, w *erofs.Writer, root string) error {
	return addDir(ctx, w, root, nil)
}

// fileID identifies an inode on the host.
type fileID struct{ dev, ino uint64 }

// dirWalker holds the state of one AddDir call.
type dirWalker struct {
	ctx   context.Context
	w     *erofs.Writer
	skip  map[fileID]bool   // host files left out (BuildEROFS's own output)
	links map[fileID]string // image path of the first name of each multiply-linked inode
}

// addDir is AddDir, leaving out the host files in skip.
func addDir(ctx context.Context, w *erofs.Writer, root string, skip map[fileID]bool) error {
	fi, err := os.Stat(root) // the root itself may be given through a symlink
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", root)
	}
	d := &dirWalker{ctx: ctx, w: w, skip: skip, links: make(map[fileID]string)}
	return d.add(root, ".", fi)
}

// add adds the host object at hostPath, whose lstat result is fi, to the
// image as imgPath, and everything below it when it is a directory.
func (d *dirWalker) add(hostPath, imgPath string, fi fs.FileInfo) error {
	if err := d.ctx.Err(); err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no unix stat information", hostPath)
	}
	id := fileID{dev: uint64(st.Dev), ino: st.Ino}
	if d.skip[id] && imgPath != "." {
		return nil
	}
	mode := fi.Mode()
	if !mode.IsDir() && st.Nlink > 1 {
		if first, ok := d.links[id]; ok {
			if err := d.w.Link(imgPath, first); err != nil {
				return fmt.Errorf("adding %s as a hard link to %q: %w", hostPath, first, entryCause(err))
			}
			return nil
		}
	}
	xattrs, err := readXattrs(hostPath)
	if err != nil {
		return err
	}
	e := erofs.Entry{
		Path:    imgPath,
		Mode:    mode,
		UID:     st.Uid,
		GID:     st.Gid,
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Xattrs:  xattrs,
	}
	switch {
	case mode.IsDir():
		if err := d.w.Add(e, nil); err != nil {
			return fmt.Errorf("adding %s: %w", hostPath, entryCause(err))
		}
		return d.addChildren(hostPath, imgPath)
	case mode.IsRegular():
		e.Size = fi.Size()
		if err := d.addFile(hostPath, e); err != nil {
			return err
		}
	default:
		if mode&fs.ModeSymlink != 0 {
			if e.Linkname, err = os.Readlink(hostPath); err != nil {
				return err
			}
		}
		if mode&fs.ModeDevice != 0 {
			e.DevMajor, e.DevMinor = unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
		}
		if err := d.w.Add(e, nil); err != nil {
			return fmt.Errorf("adding %s: %w", hostPath, entryCause(err))
		}
	}
	if st.Nlink > 1 {
		d.links[id] = imgPath
	}
	return nil
}

// addFile streams the regular file at hostPath into the image.
func (d *dirWalker) addFile(hostPath string, e erofs.Entry) error {
	f, err := os.OpenFile(hostPath, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// The file itself, not a wrapper: the writer then copies it with
	// copy_file_range. Cancellation is checked between entries (and a second
	// signal kills pe at once).
	if err := d.w.Add(e, f); err != nil {
		if ctxErr := d.ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("adding %s: %w", hostPath, entryCause(err))
	}
	return f.Close()
}

// addChildren adds the entries of the host directory hostPath, sorted by
// name, below imgPath.
func (d *dirWalker) addChildren(hostPath, imgPath string) error {
	flags := os.O_RDONLY | syscall.O_DIRECTORY
	if imgPath != "." { // the root may be given through a symlink
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(hostPath, flags, 0)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	slices.Sort(names)
	for _, name := range names {
		childHost := filepath.Join(hostPath, name)
		childImg := name
		if imgPath != "." {
			childImg = imgPath + "/" + name
		}
		fi, err := os.Lstat(childHost)
		if err != nil {
			return err
		}
		if err := d.add(childHost, childImg, fi); err != nil {
			return err
		}
	}
	return nil
}

// readXattrs returns the extended attributes of the host object at path,
// without following a symbolic link; nil when it has none or the file system
// does not support them.
func readXattrs(path string) (map[string][]byte, error) {
	list, err := xattrCall(func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) })
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		return nil, &os.PathError{Op: "llistxattr", Path: path, Err: err}
	}
	var xattrs map[string][]byte
	for len(list) > 0 {
		name, rest, _ := cutNUL(list)
		list = rest
		if name == "" {
			continue
		}
		value, err := xattrCall(func(buf []byte) (int, error) { return unix.Lgetxattr(path, name, buf) })
		if err != nil {
			if errors.Is(err, unix.ENODATA) { // removed since it was listed
				continue
			}
			return nil, &os.PathError{Op: "lgetxattr " + name, Path: path, Err: err}
		}
		if xattrs == nil {
			xattrs = make(map[string][]byte)
		}
		xattrs[name] = value
	}
	return xattrs, nil
}

// cutNUL splits b at its first NUL byte.
func cutNUL(b []byte) (string, []byte, bool) {
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), b[i+1:], true
		}
	}
	return string(b), nil, false
}

// xattrCall runs one of the list/get extended attribute system calls,
// growing the buffer while the kernel answers ERANGE (the value grew between
// asking for its size and reading it).
func xattrCall(call func(buf []byte) (int, error)) ([]byte, error) {
	size := 256
	for attempt := 0; ; attempt++ {
		buf := make([]byte, size)
		n, err := call(buf)
		switch {
		case err == nil:
			return buf[:n], nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.ERANGE) || attempt >= 8:
			return nil, err
		}
		// Ask for the size needed, then try again with at least that.
		n, err = call(nil)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return nil, err
		}
		size = max(n, 2*size)
	}
}

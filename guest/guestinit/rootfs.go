package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/guest"
)

// inRoot resolves paths the way the container will see them: symlinks in
// the image are followed but never lead out of the root. The init works on
// the container root as the real root user, so without this an image with
// /tmp -> /dev would have it mount or write on its own tree.
const inRoot = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// mkdirInRoot makes sure rel, a path inside root, is a directory, creating
// missing components with mode and owner uid:gid, and returns its absolute
// path in the caller's view with every symlink resolved.
func mkdirInRoot(root, rel string, mode uint32, uid, gid int) (string, error) {
	rootfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("container root: %w", err)
	}
	defer unix.Close(rootfd)
	rel = strings.TrimPrefix(path.Clean("/"+rel), "/")
	if rel == "" {
		return fdPath(rootfd)
	}
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: inRoot}
	comps := strings.Split(rel, "/")
	for i := range comps {
		prefix := strings.Join(comps[:i+1], "/")
		fd, err := guest.Openat2(rootfd, prefix, how)
		if errors.Is(err, unix.ENOENT) {
			if err := mkdirAt(rootfd, strings.Join(comps[:i], "/"), comps[i], mode, uid, gid); err != nil {
				return "", fmt.Errorf("create /%s in the container: %w", prefix, err)
			}
			fd, err = guest.Openat2(rootfd, prefix, how)
		}
		if err != nil {
			return "", fmt.Errorf("/%s in the container: %w", prefix, err)
		}
		if i < len(comps)-1 {
			unix.Close(fd)
			continue
		}
		defer unix.Close(fd)
		return fdPath(fd)
	}
	panic("unreachable")
}

func mkdirAt(rootfd int, parent, name string, mode uint32, uid, gid int) error {
	if parent == "" {
		parent = "."
	}
	pfd, err := guest.Openat2(rootfd, parent, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: inRoot})
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, name, mode); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return errors.New("exists but is not a directory (a dangling symlink?)")
		}
		return err
	}
	if err := unix.Fchownat(pfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	// mkdir applied the umask.
	return unix.Fchmodat(pfd, name, mode, 0)
}

// fdPath returns the path an O_PATH descriptor refers to.
func fdPath(fd int) (string, error) {
	return os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
}

// idmapMount makes an idmapped copy of the mount at src on dst: files owned
// by guest ID n appear owned by the ID userns maps container ID n to, so the
// image's root-owned files belong to the container's root. It needs kernel
// and file system support (EROFS and overlay layers: Linux 5.19+).
func idmapMount(src, dst string, usernsFD int) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("idmapped mount: open_tree %s: %w", src, err)
	}
	defer unix.Close(fd)
	// The clone keeps the source's nodev; said again here so that this
	// layer never depends on how the source was mounted.
	attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_NODEV, Userns_fd: uint64(usernsFD)}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, attr); err != nil {
		return fmt.Errorf("idmapped mount: mount_setattr %s: %w", src, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("idmapped mount: move_mount to %s: %w", dst, err)
	}
	return nil
}

// chownTree gives everything under dir (dir included) to uid:gid, without
// following symlinks.
func chownTree(dir string, uid, gid int) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// rootLayout names the init's mount points for the container root.
type rootLayout struct {
	lower   string // the EROFS image, read-only
	idLower string // its idmapped copy, the overlay's lower layer
	rw      string // tmpfs holding the overlay's upper and work directories
	root    string // the overlay: the container root
	output  string // tmpfs bound at /run/pe/output in the container
}

var vmLayout = rootLayout{
	lower:   "/mnt/lower",
	idLower: "/mnt/idlower",
	rw:      "/mnt/rw",
	root:    "/mnt/root",
	output:  "/run/pe-output",
}

// rootOptions are the sizes and owner the container root is built with.
type rootOptions struct {
	tmpfsSize int64 // bytes for the overlay's upper layer, /tmp and the output directory
	uid, gid  int   // guest IDs of the program's user, owner of input and output
	// noIDMap skips the idmapped lower layer (the image's files then appear
	// owned by nobody in the container).
	noIDMap bool
}

// mountRoot builds the container root over the already mounted image at
// l.lower: the idmapped lower layer for usernsFD, the tmpfs upper layer
// owned like the image's root directory, the overlay, a tmpfs /tmp, and the
// output tmpfs bound at /run/pe/output. It reports whether the lower layer
// is idmapped.
func mountRoot(l rootLayout, o rootOptions, usernsFD int, log *logger) (idmapped bool, err error) {
	lower := l.lower
	if !o.noIDMap {
		if err := os.MkdirAll(l.idLower, 0o755); err != nil {
			return false, err
		}
		if err := idmapMount(l.lower, l.idLower, usernsFD); err != nil {
			log.Infof("warning: %v; the image's files will appear owned by nobody", err)
		} else {
			lower, idmapped = l.idLower, true
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(lower, &st); err != nil {
		return idmapped, fmt.Errorf("image root: %w", err)
	}
	size := ""
	if o.tmpfsSize > 0 {
		size = ",size=" + itoa(o.tmpfsSize)
	}
	if err := mountAt("tmpfs", l.rw, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"+size); err != nil {
		return idmapped, err
	}
	upper, work := filepath.Join(l.rw, "upper"), filepath.Join(l.rw, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return idmapped, err
		}
	}
	// The overlay's root directory takes its owner and mode from the upper
	// layer's: make them the image root's as the container sees it.
	rootUID, rootGID := int(st.Uid), int(st.Gid)
	if !idmapped {
		rootUID, rootGID = IDBase, IDBase
	}
	if err := os.Chown(upper, rootUID, rootGID); err != nil {
		return idmapped, err
	}
	if err := os.Chmod(upper, fs.FileMode(st.Mode&0o7777)); err != nil {
		return idmapped, err
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work)
	// nodev: the kernel checks it on the mount a device node is opened
	// through, the overlay's, whatever its layers' mounts say; without it
	// a device node the image ships (a disk, the console) opens. Setuid
	// stays, as under docker: the image's setuid files give the
	// container's root, an unprivileged user of the guest (see IDBase).
	if err := mountAt("overlay", l.root, "overlay", unix.MS_NODEV, opts); err != nil {
		return idmapped, err
	}
	tmp, err := mkdirInRoot(l.root, "tmp", 0o1777, IDBase, IDBase)
	if err != nil {
		return idmapped, err
	}
	if err := unix.Mount("tmpfs", tmp, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"+size); err != nil {
		return idmapped, fmt.Errorf("mount /tmp: %w", err)
	}
	owner := fmt.Sprintf(",uid=%d,gid=%d", o.uid, o.gid)
	if err := mountAt("tmpfs", l.output, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=755"+owner+size); err != nil {
		return idmapped, err
	}
	if _, err := mkdirInRoot(l.root, "run/pe", 0o755, IDBase, IDBase); err != nil {
		return idmapped, err
	}
	out, err := mkdirInRoot(l.root, "run/pe/output", 0o755, o.uid, o.gid)
	if err != nil {
		return idmapped, err
	}
	if err := unix.Mount(l.output, out, "", unix.MS_BIND, ""); err != nil {
		return idmapped, fmt.Errorf("bind %s: %w", out, err)
	}
	return idmapped, nil
}

// configureRoot adapts a root mountRoot made with tmpfs size madeSize and
// the container root as owner of the output directory to the run's
// options: the three tmpfs get o's size, the output directory o's owner.
func configureRoot(l rootLayout, madeSize int64, o rootOptions) error {
	if o.tmpfsSize != madeSize && o.tmpfsSize > 0 {
		tmp, err := mkdirInRoot(l.root, "tmp", 0o1777, IDBase, IDBase)
		if err != nil {
			return err
		}
		for _, dir := range []string{l.rw, tmp, l.output} {
			if err := unix.Mount("", dir, "", unix.MS_REMOUNT, "size="+itoa(o.tmpfsSize)); err != nil {
				return fmt.Errorf("resize the tmpfs on %s: %w", dir, err)
			}
		}
	}
	if o.uid != IDBase || o.gid != IDBase {
		if err := os.Chown(l.output, o.uid, o.gid); err != nil {
			return fmt.Errorf("output directory: %w", err)
		}
	}
	return nil
}

// mountAt creates dir and mounts on it.
func mountAt(source, dir, fstype string, flags uintptr, data string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount(source, dir, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, dir, err)
	}
	return nil
}

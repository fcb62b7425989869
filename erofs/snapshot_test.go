package erofs

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	goerofs "github.com/erofs/go-erofs"
	"golang.org/x/sys/unix"
)

// facts are the attributes a round trip must keep for one path.
type facts struct {
	Type      string
	Perm      uint32 // permission bits with setuid, setgid and sticky
	UID, GID  uint32
	Size      int64 // regular files and symlinks
	MtimeNano int64
	Nlink     uint32
	Dev       [2]uint32
	Target    string
	Xattrs    map[string]string
	Digest    string
}

// snapshot maps slash-separated paths ("" for the root) to their facts.
type snapshot map[string]facts

func permBits(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= sISUID
	}
	if m&fs.ModeSetgid != 0 {
		p |= sISGID
	}
	if m&fs.ModeSticky != 0 {
		p |= sISVTX
	}
	return p
}

func digestReader(t testing.TB, r io.Reader) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatalf("reading data: %v", err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// content fills in what f's type says of its content: a file's size and
// digest, a link's target and size, a device's numbers.
func (f *facts) content(t testing.TB, size int64, open func() (io.ReadCloser, error), readlink func() (string, error), major, minor uint32) error {
	switch f.Type {
	case "file":
		r, err := open()
		if err != nil {
			return err
		}
		defer r.Close()
		f.Size, f.Digest = size, digestReader(t, r)
	case "symlink":
		target, err := readlink()
		if err != nil {
			return err
		}
		f.Target, f.Size = target, int64(len(target))
	case "char", "block":
		f.Dev = [2]uint32{major, minor}
	}
	return nil
}

// hostSnapshot walks a directory on the host without following symlinks.
func hostSnapshot(t testing.TB, root string) snapshot {
	t.Helper()
	snap := snapshot{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			rel = ""
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.IsDir() {
			checkDirentTypes(t, p)
		}
		f := facts{
			Type:      TypeName(fi.Mode()),
			Perm:      permBits(fi.Mode()),
			UID:       st.Uid,
			GID:       st.Gid,
			MtimeNano: fi.ModTime().UnixNano(),
			Nlink:     uint32(st.Nlink),
			Xattrs:    hostXattrs(t, p),
		}
		open := func() (io.ReadCloser, error) { return os.Open(p) }
		readlink := func() (string, error) { return os.Readlink(p) }
		if err := f.content(t, fi.Size(), open, readlink, unix.Major(st.Rdev), unix.Minor(st.Rdev)); err != nil {
			return err
		}
		snap[filepath.ToSlash(rel)] = f
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return snap
}

// checkDirentTypes reads a directory with getdents64 and checks that each
// entry's d_type and d_ino agree with lstat, since os.ReadDir silently falls
// back to lstat when d_type is unknown.
func checkDirentTypes(t testing.TB, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	defer unix.Close(fd)
	dtypes := map[uint8]uint32{
		unix.DT_REG: unix.S_IFREG, unix.DT_DIR: unix.S_IFDIR, unix.DT_LNK: unix.S_IFLNK,
		unix.DT_CHR: unix.S_IFCHR, unix.DT_BLK: unix.S_IFBLK, unix.DT_FIFO: unix.S_IFIFO,
		unix.DT_SOCK: unix.S_IFSOCK,
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.ReadDirent(fd, buf)
		if err != nil {
			t.Fatalf("getdents %s: %v", dir, err)
		}
		if n == 0 {
			return
		}
		for b := buf[:n]; len(b) > 0; {
			ino := binary.LittleEndian.Uint64(b[0:])
			reclen := binary.LittleEndian.Uint16(b[16:])
			dtype := b[18]
			raw := b[19:reclen]
			name := string(raw[:bytes.IndexByte(raw, 0)])
			b = b[reclen:]
			if name == "." || name == ".." {
				continue
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(dir, name), &st); err != nil {
				t.Fatalf("lstat: %v", err)
			}
			if dtypes[dtype] != st.Mode&unix.S_IFMT || ino != st.Ino {
				t.Errorf("%s/%q: dirent type %d ino %d, lstat mode %o ino %d", dir, name, dtype, ino, st.Mode, st.Ino)
			}
		}
	}
}

func hostXattrs(t testing.TB, p string) map[string]string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			return nil
		}
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var out map[string]string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		val := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		if out == nil {
			out = map[string]string{}
		}
		out[name] = string(val[:m])
	}
	return out
}

func stringMap(m map[string][]byte) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = string(v)
	}
	return out
}

// goErofsSnapshot walks an image with github.com/erofs/go-erofs, an
// independent reader. It loses setuid, setgid and sticky bits (a known bug
// of v0.3.1), so only the permission bits are kept.
func goErofsSnapshot(t testing.TB, img string) snapshot {
	t.Helper()
	fh, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fh.Close() })
	fsys, err := goerofs.Open(fh)
	if err != nil {
		t.Fatalf("go-erofs: %v", err)
	}
	snap := snapshot{}
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st := fi.Sys().(*goerofs.Stat)
		f := facts{
			Type:      TypeName(fi.Mode()),
			Perm:      uint32(st.Mode.Perm()),
			UID:       st.UID,
			GID:       st.GID,
			MtimeNano: int64(st.Mtime)*1e9 + int64(st.MtimeNs),
			Nlink:     uint32(st.Nlink),
		}
		if len(st.Xattrs) > 0 {
			f.Xattrs = st.Xattrs
		}
		switch f.Type {
		case "file":
			f.Size = fi.Size()
			fh, err := fsys.Open(p)
			if err != nil {
				return err
			}
			f.Digest = digestReader(t, fh)
			fh.Close()
		case "symlink":
			f.Target, err = fs.ReadLink(fsys, p)
			if err != nil {
				return err
			}
			f.Size = int64(len(f.Target))
		case "char", "block":
			f.Dev = [2]uint32{unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))}
		}
		if p == "." {
			p = ""
		}
		snap[p] = f
		return nil
	})
	if err != nil {
		t.Fatalf("walking image with go-erofs: %v", err)
	}
	return snap
}

// project returns a copy of s with fn applied to every entry, to compare
// only what a given reader can show.
func (s snapshot) project(fn func(path string, f facts) facts) snapshot {
	out := make(snapshot, len(s))
	for p, f := range s {
		out[p] = fn(p, f)
	}
	return out
}

func requireRootTool(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount, mknod, chown, trusted.* xattrs); run the tests as root")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH (Debian package erofs-utils / util-linux); `make deps` installs it", tool)
		}
	}
}

// mountImage mounts img read-only through a loop device and unmounts it when
// the test ends. It skips the test when the kernel cannot mount EROFS here.
func mountImage(t testing.TB, img string) string {
	t.Helper()
	requireRootTool(t, "mount", "umount")
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "erofs", "-o", "loop,ro", img, dir).CombinedOutput()
	if err != nil {
		msg := string(out)
		if strings.Contains(msg, "unknown filesystem type") || strings.Contains(msg, "failed to setup loop device") {
			t.Skipf("the kernel cannot loop-mount EROFS here: %s", strings.TrimSpace(msg))
		}
		t.Fatalf("mount %s: %v: %s", img, err, msg)
	}
	t.Cleanup(func() {
		// Something else on the machine (a file indexer, another
		// engineer's find) may hold the mount for a moment: retry, then
		// detach it lazily rather than leave it behind.
		var out []byte
		var err error
		for range 20 {
			if out, err = exec.Command("umount", dir).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		exec.Command("umount", "-l", dir).Run()
		t.Errorf("umount %s: %v: %s", dir, err, out)
	})
	return dir
}

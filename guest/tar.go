package guest

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tarTrailer is the end-of-archive marker: two zero blocks.
const tarTrailer = 2 * blockSize

// treeOptions controls writeTree.
type treeOptions struct {
	// strict makes unsupported file types (devices, FIFOs, sockets) an error
	// instead of being skipped.
	strict bool
	// maxFiles caps the entries written (0 = no cap); past it the archive
	// is cut and reported truncated.
	maxFiles int
	// maxDepth leaves out, as truncated, entries with more path
	// components (0 = no cap).
	maxDepth int
}

// writeTree writes the contents of root (not root itself) as a tar archive
// into aw: directories, regular files and symlinks, with permission bits and
// modification times, never following symlinks. Each entry goes in whole or
// not at all: when the next entry does not fit, the archive ends before it
// and truncated is true. An empty or missing tree writes nothing.
func writeTree(aw *areaWriter, root string, o treeOptions) (truncated bool, err error) {
	if aw.limit < tarTrailer {
		aw.limit = 0
	} else {
		aw.limit -= tarTrailer // keep room for the trailer whatever happens
	}
	count := 0
	walkErr := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if o.strict || p == root && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			if d != nil && d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			if o.strict {
				return err
			}
			return nil
		}
		hdr := &tar.Header{
			Name:    filepath.ToSlash(rel),
			Mode:    int64(info.Mode().Perm()),
			ModTime: info.ModTime().Truncate(time.Second),
		}
		switch {
		case info.Mode().IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case info.Mode().IsRegular():
			hdr.Typeflag = tar.TypeReg
			hdr.Size = info.Size()
		case info.Mode()&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			if hdr.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			if o.strict {
				return fmt.Errorf("%s: unsupported file type %v", p, info.Mode().Type())
			}
			return nil
		}
		if o.maxDepth > 0 && strings.Count(filepath.ToSlash(rel), "/") >= o.maxDepth {
			// Deeper than the host extracts: left out, and said so.
			truncated = true
			if info.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		count++
		if o.maxFiles > 0 && count > o.maxFiles {
			truncated = true
			return fs.SkipAll
		}
		start := aw.pos
		if err := writeEntry(aw, hdr, p); err != nil {
			if errors.Is(err, errAreaFull) {
				aw.pos = start
				truncated = true
				return fs.SkipAll
			}
			return err
		}
		return nil
	})
	aw.limit += tarTrailer
	if walkErr != nil {
		return truncated, walkErr
	}
	if aw.pos > 0 && aw.limit >= tarTrailer {
		if _, err := aw.Write(make([]byte, tarTrailer)); err != nil {
			return truncated, err
		}
	}
	return truncated, nil
}

// writeEntry writes one header and, for a regular file, its contents.
func writeEntry(w io.Writer, hdr *tar.Header, p string) error {
	tw := tar.NewWriter(w)
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%s: file shrank while archiving it", p)
			}
			return err
		}
	}
	return tw.Flush() // pads the entry; the trailer is written once at the end
}

// writeOutputs archives dir into the outputs area at off, at most limit
// bytes, DefaultLimits().MaxFiles entries and MaxOutputDepth components.
func writeOutputs(w io.WriterAt, off, limit int64, dir string) (n int64, truncated bool, err error) {
	aw := &areaWriter{w: w, off: off, limit: limit}
	truncated, err = writeTree(aw, dir, treeOptions{maxFiles: DefaultLimits().MaxFiles, maxDepth: MaxOutputDepth})
	return aw.pos, truncated, err
}

// MaxOutputDepth bounds how deep a path of the output archive may go, in
// path components: the guest archives no deeper, the host refuses deeper.
const MaxOutputDepth = 128

// Errors of [Response.ExtractOutputs] callers may branch on.
var (
	// ErrOutputNotEmpty means the output directory has entries already:
	// pe never changes what was there.
	ErrOutputNotEmpty = errors.New("the output directory is not empty")
	// ErrOutputLimit means the output archive passes a limit: entries
	// (counting the directories its paths imply), bytes or depth.
	ErrOutputLimit = errors.New("the output archive is over a limit")
)

// CheckOutputDir checks that dir can receive a run's outputs: it does not
// exist (its parent may not either), or it is an empty directory.
// Otherwise the error wraps [ErrOutputNotEmpty], or says what dir is.
func CheckOutputDir(dir string) error {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return fmt.Errorf("%w: %s (pe writes outputs only into a new or empty directory)", ErrOutputNotEmpty, dir)
	}
	if err != nil && err != io.EOF {
		return err
	}
	return nil
}

// ExtractOutputs unpacks the guest's output archive into dir, which must
// not exist or be an empty directory ([CheckOutputDir]): pe never changes
// files that were there. The archive goes into a new directory, beside dir
// when dir does not exist (then renamed to dir), inside it when dir is an
// empty directory (then its entries are moved up: dir itself, its mode, a
// mount on it, a shell's working directory in it, stay as they were); so on
// error nothing is left. The archive is hostile: entries with absolute or
// ".." paths, hard links, devices and other types are refused; no entry is
// written through a symlink (symlinks are created as they are, never
// followed); the entries (counting the directories their paths imply),
// their total size (the Limits given to [ReadResult]) and their depth
// ([MaxOutputDepth]) are capped, with errors wrapping [ErrOutputLimit].
// Modes are kept without setuid, setgid and sticky bits and less the
// process's umask; directories stay open to their owner (u+rwx).
func (r *Response) ExtractOutputs(dir string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("extract outputs: %w", err)
		}
	}()
	if err := CheckOutputDir(dir); err != nil {
		return err
	}
	umask := processUmask()
	_, statErr := os.Stat(dir)
	exists := statErr == nil
	var tmp string
	if exists {
		tmp, err = os.MkdirTemp(dir, ".pe-output-")
	} else {
		parent := filepath.Dir(filepath.Clean(dir))
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return err
		}
		tmp, err = os.MkdirTemp(parent, "."+filepath.Base(dir)+".pe-output-")
		if err == nil {
			err = os.Chmod(tmp, 0o755&^umask)
		}
	}
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	if len(r.outputs) > 0 {
		lim := r.lim.WithDefaults()
		o := extractOptions{maxFiles: lim.MaxFiles, maxBytes: lim.MaxOutput, maxDepth: MaxOutputDepth, umask: uint32(umask), ownerDirs: true}
		if err := extractTar(bytes.NewReader(r.outputs), tmp, o); err != nil {
			return err
		}
	}
	if !exists {
		// RENAME_NOREPLACE: a dir made meanwhile is not replaced.
		if err := renameNoReplace(tmp, dir); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%w: %s (made during the run)", ErrOutputNotEmpty, dir)
			}
			return fmt.Errorf("rename %s to %s: %w", tmp, dir, err)
		}
		return nil
	}
	return moveUp(tmp, dir)
}

// moveUp moves the entries of tmp into dir, its parent, never replacing
// one, and removes tmp. On error, what it moved is removed too.
func moveUp(tmp, dir string) error {
	names, err := readDirNames(tmp)
	if err != nil {
		return err
	}
	var moved []string
	for _, name := range names {
		if err := renameNoReplace(filepath.Join(tmp, name), filepath.Join(dir, name)); err != nil {
			for _, m := range moved {
				os.RemoveAll(filepath.Join(dir, m))
			}
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%w: %s (%s was made during the run)", ErrOutputNotEmpty, dir, name)
			}
			return err
		}
		moved = append(moved, name)
	}
	return os.Remove(tmp)
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// renameNoReplace renames old to new unless new exists (EEXIST).
func renameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A file system without RENAME_NOREPLACE: check, then rename.
		if _, lerr := os.Lstat(new); lerr == nil {
			return unix.EEXIST
		}
		err = unix.Rename(old, new)
	}
	return err
}

// processUmask reads the umask from /proc (umask(2) would change it, for
// every thread, while reading it); 022 if /proc says nothing.
func processUmask() fs.FileMode {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return fs.FileMode(n) & 0o777
				}
			}
		}
	}
	return 0o022
}

// extractOptions bounds extractTar.
type extractOptions struct {
	// maxFiles caps what is created: entries and the directories their
	// paths imply.
	maxFiles int
	maxBytes int64
	// maxDepth caps path components (0: no cap).
	maxDepth int
	// umask is cleared from every mode.
	umask uint32
	// ownerDirs keeps directories open to their owner (u+rwx), so that
	// the user can always remove what pe wrote.
	ownerDirs bool
}

// ExtractError names the archive entry that could not be extracted.
type ExtractError struct {
	Name string // entry name as found in the archive
	Err  error
}

func (e *ExtractError) Error() string { return fmt.Sprintf("entry %.200q: %v", e.Name, e.Err) }
func (e *ExtractError) Unwrap() error { return e.Err }

// extractTar unpacks r beneath dir. Every path is resolved with openat2
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS one directory at a time, so neither a
// symlink in the archive nor one already in dir can redirect a write.
func extractTar(r io.Reader, dir string, o extractOptions) error {
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer unix.Close(root)

	type dirAttr struct {
		rel   string
		mode  uint32
		mtime time.Time
	}
	var dirs []dirAttr
	var total int64
	x := &extractor{root: root, max: o.maxFiles}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read archive: %w", err)
		}
		// Every entry counts, even one that creates nothing (a directory
		// again), so the loop is bounded too.
		if err := x.count(); err != nil {
			return err
		}
		rel, err := cleanEntryName(hdr.Name)
		if err != nil {
			return &ExtractError{hdr.Name, err}
		}
		if rel == "." {
			if hdr.Typeflag == tar.TypeDir {
				continue
			}
			return &ExtractError{hdr.Name, errors.New("names the extraction directory itself")}
		}
		if d := strings.Count(rel, "/") + 1; o.maxDepth > 0 && d > o.maxDepth {
			return &ExtractError{hdr.Name, fmt.Errorf("%w: %d path components, the limit on depth is %d", ErrOutputLimit, d, o.maxDepth)}
		}
		mode := uint32(hdr.Mode) & 0o777 &^ o.umask
		switch hdr.Typeflag {
		case tar.TypeDir:
			if o.ownerDirs {
				mode |= 0o700
			}
			if err := x.dir(rel); err != nil {
				return &ExtractError{hdr.Name, err}
			}
			dirs = append(dirs, dirAttr{rel, mode, hdr.ModTime})
		case tar.TypeReg, tar.TypeRegA:
			if hdr.Size > o.maxBytes-total {
				return &ExtractError{hdr.Name, fmt.Errorf("%w: %d bytes would pass the %d-byte limit on extracted data", ErrOutputLimit, hdr.Size, o.maxBytes)}
			}
			total += hdr.Size
			if err := x.file(rel, tr, hdr.Size, mode, hdr.ModTime); err != nil {
				return &ExtractError{hdr.Name, err}
			}
		case tar.TypeSymlink:
			if hdr.Linkname == "" || len(hdr.Linkname) > 4095 || strings.IndexByte(hdr.Linkname, 0) >= 0 {
				return &ExtractError{hdr.Name, fmt.Errorf("bad symlink target %.100q", hdr.Linkname)}
			}
			if err := x.symlink(rel, hdr.Linkname); err != nil {
				return &ExtractError{hdr.Name, err}
			}
		default:
			return &ExtractError{hdr.Name, fmt.Errorf("unsupported entry type %q (only files, directories and symlinks)", hdr.Typeflag)}
		}
	}
	// Directory modes and times last: files created inside would change the
	// times, and a read-only mode would stop the extraction.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		fd, err := openBeneath(root, d.rel, unix.O_RDONLY|unix.O_DIRECTORY)
		if err != nil {
			return &ExtractError{d.rel, err}
		}
		err = unix.Fchmod(fd, d.mode)
		if err == nil {
			err = setTimes(fd, d.mtime)
		}
		unix.Close(fd)
		if err != nil {
			return &ExtractError{d.rel, err}
		}
	}
	return nil
}

// extractor creates entries beneath root, counting what it creates.
type extractor struct {
	root int
	n    int // entries and implied directories so far
	max  int
}

// count accounts for one more entry or directory made.
func (x *extractor) count() error {
	if x.n >= x.max {
		return fmt.Errorf("%w: more than %d entries (directories that deeper paths imply count too)", ErrOutputLimit, x.max)
	}
	x.n++
	return nil
}

// cleanEntryName turns an archive name into a clean relative path, refusing
// absolute paths, ".." components and oversized or NUL-bearing names.
func cleanEntryName(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case len(name) > 4095:
		return "", errors.New("name longer than 4095 bytes")
	case strings.IndexByte(name, 0) >= 0:
		return "", errors.New("name contains a NUL byte")
	case strings.HasPrefix(name, "/"):
		return "", errors.New("absolute path")
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", errors.New(`path contains ".."`)
		}
	}
	return path.Clean(name), nil
}

// resolveFlags make every lookup stay beneath the root and refuse symlinks,
// including /proc magic links.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

func openBeneath(root int, rel string, flags int) (int, error) {
	fd, err := Openat2(root, rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolveFlags})
	if errors.Is(err, unix.ELOOP) {
		return -1, errors.New("path goes through a symlink")
	}
	return fd, err
}

// parentDir opens the directory that will hold rel, creating missing
// directories on the way (mode 0755, each counted), and returns it with
// rel's last element.
func (x *extractor) parentDir(rel string) (int, string, error) {
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")
	if dir == "" {
		fd, err := unix.Dup(x.root)
		return fd, base, err
	}
	cur, err := unix.Dup(x.root)
	if err != nil {
		return -1, "", err
	}
	for _, c := range strings.Split(dir, "/") {
		next, err := openBeneath(cur, c, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) {
			if err = x.count(); err == nil {
				err = unix.Mkdirat(cur, c, 0o755)
			}
			if err == nil {
				next, err = openBeneath(cur, c, unix.O_PATH|unix.O_DIRECTORY)
			}
		}
		unix.Close(cur)
		if err != nil {
			return -1, "", fmt.Errorf("%.100s: %w", c, err)
		}
		cur = next
	}
	return cur, base, nil
}

// clearName removes a non-directory at name so a new entry replaces it
// rather than writing through it; a directory there is an error.
func clearName(dirfd int, name string) error {
	var st unix.Stat_t
	err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return errors.New("a directory is in the way")
	}
	return unix.Unlinkat(dirfd, name, 0)
}

func (x *extractor) dir(rel string) error {
	pfd, base, err := x.parentDir(rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	// 0700 while extracting so the archive's own modes cannot lock us out.
	err = unix.Mkdirat(pfd, base, 0o700)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return errors.New("exists and is not a directory")
		}
		return nil
	}
	return err
}

func (x *extractor) file(rel string, r io.Reader, size int64, mode uint32, mtime time.Time) error {
	pfd, base, err := x.parentDir(rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := clearName(pfd, base); err != nil {
		return err
	}
	// O_EXCL|O_NOFOLLOW: a name that reappeared since clearName is refused
	// rather than followed.
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	if _, err := io.CopyN(f, r, size); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return err
	}
	return setTimes(fd, mtime)
}

func (x *extractor) symlink(rel, target string) error {
	pfd, base, err := x.parentDir(rel)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := clearName(pfd, base); err != nil {
		return err
	}
	return unix.Symlinkat(target, pfd, base)
}

func setTimes(fd int, mtime time.Time) error {
	if mtime.IsZero() {
		return nil
	}
	ts := [2]unix.Timespec{unix.NsecToTimespec(mtime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	// futimens(fd) is utimensat(fd, NULL, ...); x/sys only offers the
	// path form, which would need /proc.
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// Openat2 is unix.Openat2 retried while it fails with EAGAIN. With
// RESOLVE_IN_ROOT or RESOLVE_BENEATH the kernel gives up with EAGAIN when a
// mount or rename anywhere on the system races the lookup (openat2(2):
// "the caller may choose to retry"); on a busy host that happens for real.
func Openat2(dirfd int, path string, how *unix.OpenHow) (int, error) {
	for tries := 0; ; tries++ {
		fd, err := unix.Openat2(dirfd, path, how)
		if err != unix.EAGAIN || tries == 1000 {
			return fd, err
		}
	}
}

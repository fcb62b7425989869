package erofs

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	goerofs "github.com/erofs/go-erofs"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// readerLongName is the longest name mkfs.erofs 1.5 accepts.
var readerLongName = strings.Repeat("n", MaxNameLen-1)

// readerLongLink is a 4000-byte symlink target that still resolves.
var readerLongLink = strings.Repeat("./", 1996) + "size4095"

// readerTree builds the source tree the mkfs-based tests read back and
// returns its directory. Owners, devices and trusted/security xattrs need
// root and are left out otherwise.
func readerTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "src")
	rng := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	file := func(name string, data []byte) {
		t.Helper()
		must(os.WriteFile(filepath.Join(root, name), data, 0o644))
	}
	p := func(name string) string { return filepath.Join(root, name) }
	isRoot := os.Geteuid() == 0

	must(os.MkdirAll(p("bigdir"), 0o755))
	for _, n := range []int{0, 1, 4095, 4096, 4097} {
		file(fmt.Sprintf("size%d", n), random(n))
	}
	file("random3m", random(3<<20+123))
	for i := range 1000 {
		file(fmt.Sprintf("bigdir/entry%04d", i), []byte(fmt.Sprint(i)))
	}
	// mkfs.erofs 1.5 fails on 255-byte names (an off-by-one); the
	// synthetic image tests cover MaxNameLen.
	file(readerLongName, []byte("long name"))
	file("caf\xe9", []byte("latin-1 name"))
	must(os.Symlink("size1", p("link-short")))
	must(os.Symlink(readerLongLink, p("link-long")))
	must(os.Symlink("bigdir", p("link-dir")))
	must(os.Link(p("size4097"), p("hardlink")))
	must(syscall.Mkfifo(p("fifo"), 0o640))
	if l, err := net.Listen("unix", p("socket")); err == nil {
		// Closing a listener removes its file; keep the file.
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
	}

	must(os.MkdirAll(p("modes/sticky"), 0o755))
	must(os.MkdirAll(p("modes/setgid-dir"), 0o755))
	file("modes/setuid", []byte("#!/bin/sh\n"))
	file("modes/setgid", []byte("#!/bin/sh\n"))
	must(os.Chmod(p("modes/setuid"), 0o755|fs.ModeSetuid))
	must(os.Chmod(p("modes/setgid"), 0o750|fs.ModeSetgid))
	must(os.Chmod(p("modes/sticky"), 0o777|fs.ModeSticky))
	must(os.Chmod(p("modes/setgid-dir"), 0o2775|fs.ModeSetgid))

	must(os.MkdirAll(p("xattr/dir"), 0o755))
	file("xattr/file", []byte("x"))
	file("xattr/big", []byte("y"))
	for _, n := range []string{"xattr/file", "xattr/dir", "size0", "size1"} {
		// Used four times, so mkfs shares it with the default -x2.
		readerSetxattr(t, p(n), "user.foo", []byte("bar"))
	}
	readerSetxattr(t, p("xattr/file"), "user.empty", nil)
	readerSetxattr(t, p("xattr/big"), "user.big", bytes.Repeat([]byte("v"), 1500))

	if isRoot {
		must(unix.Mknod(p("chardev"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(unix.Mknod(p("blockdev"), unix.S_IFBLK|0o660, int(unix.Mkdev(259, 70000))))
		file("owned", []byte("owned"))
		must(os.Lchown(p("owned"), 70000, 80000))
		must(os.Lchown(p("modes"), 1000, 1001))
		readerSetxattr(t, p("xattr/dir"), "trusted.overlay.opaque", []byte("y"))
		readerSetxattr(t, p("xattr/file"), "security.capability",
			[]byte{1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	}

	// Times last: creating entries changes their directories' mtimes.
	base := time.Unix(1700000000, 0)
	i := 0
	must(filepath.WalkDir(root, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		i++
		ts := []unix.Timespec{
			unix.NsecToTimespec(base.Add(time.Duration(i) * time.Hour).UnixNano()),
			unix.NsecToTimespec(base.Add(time.Duration(i)*time.Second + time.Duration(i*1234567)).UnixNano()),
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, name, ts, unix.AT_SYMLINK_NOFOLLOW)
	}))
	return root
}

// readerFacts are the attributes compared between a source tree and an
// image for one path.
type readerFacts struct {
	Mode      fs.FileMode
	UID, GID  uint32
	Size      int64 // regular files and symlinks
	Mtime     int64
	MtimeNsec uint32
	Nlink     uint32
	Dev       [2]uint32
	Xattrs    map[string]string
	Target    string
	Digest    string
}

func readerDigest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

// readerSourceFacts describes the source tree with lstat and llistxattr.
func readerSourceFacts(t *testing.T, root string) map[string]readerFacts {
	t.Helper()
	out := make(map[string]readerFacts)
	subdirs := make(map[string]uint32)
	err := filepath.WalkDir(root, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, name)
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(name)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		f := readerFacts{
			Mode:      fi.Mode(),
			UID:       st.Uid,
			GID:       st.Gid,
			Mtime:     st.Mtim.Sec,
			MtimeNsec: uint32(st.Mtim.Nsec),
			Nlink:     uint32(st.Nlink),
			Xattrs:    readerHostXattrs(t, name),
		}
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(name)
			if err != nil {
				return err
			}
			f.Size, f.Digest = fi.Size(), readerDigest(data)
		case fi.Mode()&fs.ModeSymlink != 0:
			f.Target, err = os.Readlink(name)
			if err != nil {
				return err
			}
			f.Size = int64(len(f.Target))
		case fi.Mode()&fs.ModeDevice != 0:
			f.Dev = [2]uint32{unix.Major(st.Rdev), unix.Minor(st.Rdev)}
		case fi.IsDir():
			// EROFS counts 2 + subdirectories, whatever the host
			// file system does.
			f.Nlink = 2
			if rel != "." {
				subdirs[path.Dir(rel)]++
			}
		}
		out[rel] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for dir, n := range subdirs {
		f := out[dir]
		f.Nlink += n
		out[dir] = f
	}
	return out
}

// readerHostXattrs lists the xattrs with the prefixes EROFS stores.
func readerHostXattrs(t *testing.T, name string) map[string]string {
	t.Helper()
	sz, err := unix.Llistxattr(name, nil)
	if err != nil || sz == 0 {
		return nil
	}
	buf := make([]byte, sz)
	sz, err = unix.Llistxattr(name, buf)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string)
	for _, n := range strings.Split(strings.TrimRight(string(buf[:sz]), "\x00"), "\x00") {
		if !strings.HasPrefix(n, "user.") && !strings.HasPrefix(n, "trusted.") && !strings.HasPrefix(n, "security.") {
			continue
		}
		vsz, err := unix.Lgetxattr(name, n, nil)
		if err != nil {
			t.Fatal(err)
		}
		v := make([]byte, vsz)
		vsz, err = unix.Lgetxattr(name, n, v)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = string(v[:vsz])
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// readerImageFacts describes an image through FS: Lstat, Sys, ReadLink,
// ReadFile. stats receives each path's *Stat.
func readerImageFacts(t *testing.T, fsys *FS, stats map[string]*Stat) map[string]readerFacts {
	t.Helper()
	out := make(map[string]readerFacts)
	err := fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := fsys.Lstat(name)
		if err != nil {
			return err
		}
		if fi.Mode().Type() != d.Type() {
			t.Errorf("%s: dirent type %v, inode type %v", name, d.Type(), fi.Mode().Type())
		}
		st := fi.Sys().(*Stat)
		stats[name] = st
		if got, want := fi.ModTime(), time.Unix(st.Mtime, int64(st.MtimeNsec)); !got.Equal(want) {
			t.Errorf("%s: ModTime %v, Stat says %v", name, got, want)
		}
		if fileMode(uint16(st.Mode)) != fi.Mode() {
			t.Errorf("%s: Mode %v, Stat.Mode %#o", name, fi.Mode(), st.Mode)
		}
		f := readerFacts{
			Mode:      fi.Mode(),
			UID:       st.UID,
			GID:       st.GID,
			Mtime:     st.Mtime,
			MtimeNsec: st.MtimeNsec,
			Nlink:     st.Nlink,
			Dev:       [2]uint32{st.DevMajor, st.DevMinor},
		}
		if st.Xattrs != nil {
			f.Xattrs = make(map[string]string)
			for k, v := range st.Xattrs {
				f.Xattrs[k] = string(v)
			}
		}
		switch {
		case fi.Mode().IsRegular():
			data, err := fsys.ReadFile(name)
			if err != nil {
				return err
			}
			f.Size, f.Digest = fi.Size(), readerDigest(data)
		case fi.Mode()&fs.ModeSymlink != 0:
			f.Target, err = fsys.ReadLink(name)
			if err != nil {
				return err
			}
			f.Size = fi.Size()
		}
		out[name] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReaderMkfsModes(t *testing.T) {
	requireTool(t, "mkfs.erofs")
	src := readerTree(t)
	want := readerSourceFacts(t, src)

	tests := []struct {
		name string
		args []string
		// adjust turns source facts into what this mode stores.
		adjust func(f *readerFacts)
		// check looks at the layout and inode format mkfs chose.
		check func(t *testing.T, name string, st *Stat)
	}{
		{name: "default"},
		{
			name: "fixed-time-compact",
			args: []string{"-T0", "--ignore-mtime"},
			adjust: func(f *readerFacts) {
				f.Mtime, f.MtimeNsec = 0, 0
			},
			check: func(t *testing.T, name string, st *Stat) {
				if st.Extended != (st.UID > 0xffff || st.GID > 0xffff) {
					t.Errorf("%s: Extended = %v for uid %d gid %d", name, st.Extended, st.UID, st.GID)
				}
			},
		},
		{
			name: "chunked",
			args: []string{"--chunksize=8192"},
			check: func(t *testing.T, name string, st *Stat) {
				if st.Mode&sIFMT == sIFREG && st.Size > 0 && st.Layout != layoutChunkBased {
					t.Errorf("%s: layout %d, want chunk-based", name, st.Layout)
				}
			},
		},
		{
			name: "extended",
			args: []string{"-Eforce-inode-extended"},
			check: func(t *testing.T, name string, st *Stat) {
				if !st.Extended {
					t.Errorf("%s: compact inode", name)
				}
			},
		},
		{
			name: "no-inline",
			args: []string{"-Enoinline_data"},
			check: func(t *testing.T, name string, st *Stat) {
				if st.Mode&sIFMT == sIFREG && st.Layout == layoutFlatInline {
					t.Errorf("%s: inline layout", name)
				}
			},
		},
		{
			name:   "no-xattrs",
			args:   []string{"-x-1"},
			adjust: func(f *readerFacts) { f.Xattrs = nil },
		},
		{
			name: "all-root-no-sbcrc",
			args: []string{"--all-root", "-Enosbcrc"},
			adjust: func(f *readerFacts) {
				f.UID, f.GID = 0, 0
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			img := mkfsImage(t, src, tc.args...)
			fsys := readerOpenFile(t, img)
			want := readerAdjust(want, tc.adjust)
			stats := make(map[string]*Stat)
			got := readerImageFacts(t, fsys, stats)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("image differs from source (-source +image):\n%s", diff)
			}
			for name, st := range stats {
				if tc.check != nil {
					tc.check(t, name, st)
				}
			}
			if stats["hardlink"].Nid != stats["size4097"].Nid {
				t.Errorf("hard link has nid %d, its target %d", stats["hardlink"].Nid, stats["size4097"].Nid)
			}
			readerCheckFile(t, fsys, "random3m", src)
			readerCheckGoErofs(t, readerOpenOS(t, img), fsys)
			if err := fstest.TestFS(fsys, "size0", "size4097", "random3m", "bigdir/entry0999",
				"caf\xe9", readerLongName, "link-long", "modes/sticky", "xattr/dir"); err != nil {
				t.Error(err)
			}
		})
	}
}

// readerAdjust applies adjust to a copy of facts.
func readerAdjust(facts map[string]readerFacts, adjust func(*readerFacts)) map[string]readerFacts {
	out := make(map[string]readerFacts, len(facts))
	for k, f := range facts {
		if adjust != nil {
			adjust(&f)
		}
		out[k] = f
	}
	return out
}

// readerCheckFile reads a file in every way FS offers: Read in odd sizes,
// ReadAt at odd offsets, Seek.
func readerCheckFile(t *testing.T, fsys *FS, name, src string) {
	t.Helper()
	want, err := os.ReadFile(filepath.Join(src, name))
	if err != nil {
		t.Fatal(err)
	}
	f, err := fsys.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got []byte
	buf := make([]byte, 12345)
	for {
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: Read gives %d bytes, differing from the source's %d", name, len(got), len(want))
	}
	ra := f.(io.ReaderAt)
	for _, off := range []int64{0, 1, 4095, 4096, 8191, 8192, 100000, int64(len(want)) - 5000} {
		p := make([]byte, 5000)
		n, err := ra.ReadAt(p, off)
		if n != len(p) || err != nil {
			t.Fatalf("ReadAt(%d): %d, %v", off, n, err)
		}
		if !bytes.Equal(p, want[off:off+5000]) {
			t.Errorf("ReadAt(%d): wrong data", off)
		}
	}
	p := make([]byte, 10)
	if n, err := ra.ReadAt(p, int64(len(want))-3); n != 3 || err != io.EOF {
		t.Errorf("ReadAt across the end: %d, %v; want 3, EOF", n, err)
	}
	sk := f.(io.Seeker)
	if pos, err := sk.Seek(-10, io.SeekEnd); err != nil || pos != int64(len(want))-10 {
		t.Fatalf("Seek: %d, %v", pos, err)
	}
	rest, err := io.ReadAll(f)
	if err != nil || !bytes.Equal(rest, want[len(want)-10:]) {
		t.Errorf("read after Seek: %q, %v", rest, err)
	}
	if _, err := sk.Seek(-1, io.SeekStart); err == nil {
		t.Error("Seek to a negative offset succeeded")
	}
}

// readerCheckGoErofs compares names, sizes, contents and link targets with
// what github.com/erofs/go-erofs reads from the same image.
func readerCheckGoErofs(t *testing.T, img io.ReaderAt, fsys *FS) {
	t.Helper()
	other, err := goerofs.Open(img)
	if err != nil {
		t.Fatalf("go-erofs: %v", err)
	}
	type entry struct {
		Type   fs.FileMode
		Size   int64
		Digest string
		Target string
	}
	collect := func(fsys fs.FS) map[string]entry {
		out := make(map[string]entry)
		err := fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			e := entry{Type: d.Type()}
			switch {
			case d.Type().IsRegular():
				data, err := fs.ReadFile(fsys, name)
				if err != nil {
					return err
				}
				e.Size, e.Digest = int64(len(data)), readerDigest(data)
			case d.Type()&fs.ModeSymlink != 0:
				e.Target, err = fs.ReadLink(fsys, name)
				if err != nil {
					return err
				}
			}
			out[name] = e
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if diff := cmp.Diff(collect(other), collect(fsys)); diff != "" {
		t.Errorf("go-erofs and FS differ (-go-erofs +FS):\n%s", diff)
	}
}

// readerSymlinkTree is a tree of symlinks for path resolution tests.
func readerSymlinkTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "links")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "dir/sub"), 0o755))
	must(os.WriteFile(filepath.Join(root, "dir/file"), []byte("content"), 0o644))
	links := map[string]string{
		"l-abs":          "/dir/file",
		"l-rel":          "dir/file",
		"dir/sub/l-up":   "../file",
		"dir/sub/l-upup": "../../../../dir/file",
		"l-dir":          "dir",
		"l-dir-abs":      "/dir/",
		"l-chain1":       "l-chain2",
		"l-chain2":       "l-rel",
		"l-loop1":        "l-loop2",
		"l-loop2":        "l-loop1",
		"l-self":         "l-self",
		"l-dangling":     "nope",
		"l-through-file": "dir/file/x",
		"l-dot":          "dir/./sub/../file",
		"l-root":         "/",
	}
	// c0 -> c1 -> ... -> c40 -> dir/file: 41 links from c0, 40 from c1.
	for i := range 41 {
		links[fmt.Sprintf("c%d", i)] = fmt.Sprintf("c%d", i+1)
	}
	links["c40"] = "dir/file"
	for name, target := range links {
		must(os.Symlink(target, filepath.Join(root, name)))
	}
	return root
}

func TestReaderSymlinks(t *testing.T) {
	requireTool(t, "mkfs.erofs")
	fsys := readerOpenFile(t, mkfsImage(t, readerSymlinkTree(t)))
	content := func(name string) func() (string, error) {
		return func() (string, error) {
			b, err := fsys.ReadFile(name)
			return string(b), err
		}
	}
	lstatMode := func(name string) func() (string, error) {
		return func() (string, error) {
			fi, err := fsys.Lstat(name)
			if err != nil {
				return "", err
			}
			return fi.Mode().Type().String(), nil
		}
	}
	statMode := func(name string) func() (string, error) {
		return func() (string, error) {
			fi, err := fsys.Stat(name)
			if err != nil {
				return "", err
			}
			return fi.Name() + " " + fi.Mode().Type().String(), nil
		}
	}
	readlink := func(name string) func() (string, error) {
		return func() (string, error) { return fsys.ReadLink(name) }
	}
	readdir := func(name string) func() (string, error) {
		return func() (string, error) {
			ents, err := fsys.ReadDir(name)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			return strings.Join(names, ","), err
		}
	}
	open := func(name string) func() (string, error) {
		return func() (string, error) {
			f, err := fsys.Open(name)
			if err != nil {
				return "", err
			}
			return "", f.Close()
		}
	}
	tests := []struct {
		name    string
		op      func() (string, error)
		want    string
		wantErr error
		msg     string
	}{
		{name: "absolute", op: content("l-abs"), want: "content"},
		{name: "relative", op: content("l-rel"), want: "content"},
		{name: "dotdot", op: content("dir/sub/l-up"), want: "content"},
		{name: "dotdot clamps at root", op: content("dir/sub/l-upup"), want: "content"},
		{name: "intermediate", op: content("l-dir/file"), want: "content"},
		{name: "intermediate absolute with slash", op: content("l-dir-abs/file"), want: "content"},
		{name: "two intermediate", op: content("l-dir/sub/l-up"), want: "content"},
		{name: "chain", op: content("l-chain1"), want: "content"},
		{name: "dot components", op: content("l-dot"), want: "content"},
		{name: "40 hops", op: content("c1"), want: "content"},
		{name: "41 hops", op: content("c0"), wantErr: errSymlinkLoop, msg: "too many levels"},
		{name: "loop", op: statMode("l-loop1"), wantErr: errSymlinkLoop},
		{name: "self loop", op: content("l-self"), wantErr: errSymlinkLoop},
		{name: "lstat loop", op: lstatMode("l-loop1"), want: "L---------"},
		{name: "readlink loop", op: readlink("l-loop1"), want: "l-loop2"},
		{name: "dangling", op: statMode("l-dangling"), wantErr: fs.ErrNotExist},
		{name: "lstat dangling", op: lstatMode("l-dangling"), want: "L---------"},
		{name: "through a file", op: statMode("l-through-file"), wantErr: fs.ErrNotExist, msg: "not a directory"},
		{name: "path through a file", op: open("dir/file/x"), wantErr: fs.ErrNotExist},
		{name: "stat keeps the name", op: statMode("l-dir"), want: "l-dir d---------"},
		{name: "lstat follows intermediate", op: lstatMode("l-dir/sub/l-up"), want: "L---------"},
		{name: "readlink follows intermediate", op: readlink("l-dir/sub/l-up"), want: "../file"},
		{name: "readlink of a directory", op: readlink("dir"), wantErr: fs.ErrInvalid},
		{name: "readdir through a link", op: readdir("l-dir"), want: "file,sub"},
		{name: "readdir of root link", op: readdir("l-root/dir"), want: "file,sub"},
		{name: "readdir of a file", op: readdir("dir/file"), wantErr: fs.ErrNotExist},
		{name: "readfile of a directory", op: content("dir"), wantErr: fs.ErrInvalid},
		{name: "missing", op: open("nope"), wantErr: fs.ErrNotExist},
		{name: "leading slash", op: open("/dir"), wantErr: fs.ErrInvalid},
		{name: "trailing slash", op: open("dir/"), wantErr: fs.ErrInvalid},
		{name: "dotdot in name", op: open("dir/../dir"), wantErr: fs.ErrInvalid},
		{name: "dot in name", op: open("./dir"), wantErr: fs.ErrInvalid},
		{name: "empty name", op: open(""), wantErr: fs.ErrInvalid},
		{name: "root", op: statMode("."), want: ". d---------"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.op()
			if tc.wantErr != nil {
				var pe *fs.PathError
				if !errors.Is(err, tc.wantErr) || !errors.As(err, &pe) || !strings.Contains(fmt.Sprint(err), tc.msg) {
					t.Fatalf("error %v; want a *fs.PathError wrapping %v containing %q", err, tc.wantErr, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestReaderCompressed reads mkfs.erofs's lz4 images: legacy and compact
// indexes, big pclusters, tail packing, lz4hc.
func TestReaderCompressed(t *testing.T) {
	requireTool(t, "mkfs.erofs")
	src := filepath.Join(t.TempDir(), "src")
	zTree(1<<20).writeDir(t, src)
	for _, args := range [][]string{
		{"-zlz4"},
		{"-zlz4hc"},
		{"-zlz4", "-C16384"},
		{"-zlz4hc,6", "-C65536"},
		{"-zlz4", "-C65536", "-Elegacy-compress"},
		{"-zlz4", "-Elegacy-compress"},
		{"-zlz4", "-Eztailpacking"},
		{"-zlz4", "-C16384", "-Eztailpacking"},
	} {
		t.Run(strings.Join(args, ""), func(t *testing.T) {
			t.Parallel()
			img := mkfsImage(t, src, append(args, "-T0", "--all-root")...)
			fsys := readerOpenFile(t, img)
			compressed := zCheckContents(t, fsys, src)
			if compressed == 0 {
				t.Errorf("no file of the image is compressed")
			}
			readerCheckFile(t, fsys, "mixed/large", src)
			readerCheckFile(t, fsys, "sizes/mixed-327687", src)
		})
	}
}

// readerSmallTree is a small tree for corruption tests and fuzz seeds.
func readerSmallTree(t testing.TB) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "small")
	for name, data := range map[string]string{
		"a/file":  "file content",
		"a/empty": "",
		"b":       strings.Repeat("block-sized ", 400),
	} {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a/file", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	readerSetxattr(t, filepath.Join(root, "a/file"), "user.k", []byte("value"))
	return root
}

// readerWalkAll reads everything in fsys and returns the first error.
func readerWalkAll(fsys *FS) error {
	return fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if _, err := fsys.Lstat(name); err != nil {
			return err
		}
		switch {
		case d.Type().IsRegular():
			_, err = fsys.ReadFile(name)
		case d.Type()&fs.ModeSymlink != 0:
			_, err = fsys.ReadLink(name)
		}
		return err
	})
}

func TestReaderCorrupt(t *testing.T) {
	requireTool(t, "mkfs.erofs")
	img, err := os.ReadFile(mkfsImage(t, readerSmallTree(t)))
	if err != nil {
		t.Fatal(err)
	}
	fsys := readerOpenBytes(t, img)
	if err := readerWalkAll(fsys); err != nil {
		t.Fatalf("intact image: %v", err)
	}
	stat := func(name string) *Stat {
		fi, err := fsys.Lstat(name)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*Stat)
	}
	inodePos := func(name string) int { return int(fsys.metaBase) + int(stat(name).Nid)*inodeSlotSize }
	rootIn, err := fsys.inode(stat(".").Nid)
	if err != nil {
		t.Fatal(err)
	}
	m, err := fsys.mapper(rootIn)
	if err != nil {
		t.Fatal(err)
	}
	rootDir, err := m.mapExtent(0)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		mutate func(b []byte) []byte
		fix    bool // recompute the superblock checksum
		want   error
		msg    string
	}{
		{name: "empty", mutate: func(b []byte) []byte { return b[:0] }, want: ErrCorrupt, msg: "too small"},
		{name: "truncated in superblock", mutate: func(b []byte) []byte { return b[:superOffset+64] }, want: ErrCorrupt},
		{name: "truncated in block 0", mutate: func(b []byte) []byte { return b[:superOffset+superSize+5] }, want: ErrCorrupt, msg: "checksummed first block"},
		{name: "truncated after block 0", mutate: func(b []byte) []byte { return b[:4096] }, want: ErrCorrupt, msg: "truncated"},
		{name: "truncated in half", mutate: func(b []byte) []byte { return b[:len(b)/2] }, want: ErrCorrupt, msg: "truncated"},
		{name: "last block missing", mutate: func(b []byte) []byte { return b[:len(b)-4096] }, want: ErrCorrupt, msg: "truncated"},
		{name: "bad magic", mutate: func(b []byte) []byte { b[superOffset] ^= 1; return b }, want: ErrCorrupt, msg: "magic"},
		{name: "bad checksum", mutate: func(b []byte) []byte { b[superOffset+64] ^= 1; return b }, want: ErrCorrupt, msg: "checksum mismatch"},
		{name: "bad block size", mutate: func(b []byte) []byte { b[superOffset+12] = 8; return b }, fix: true, want: ErrCorrupt, msg: "block size"},
		{name: "root inode beyond end", mutate: func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[superOffset+14:], 0xFFFF)
			return b
		}, fix: true, want: ErrCorrupt, msg: "offset beyond end of image"},
		{name: "meta block beyond end", mutate: func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[superOffset+40:], 1<<30)
			return b
		}, fix: true, want: ErrCorrupt, msg: "meta_blkaddr"},
		{name: "xattr count beyond end", mutate: func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[inodePos("a/file")+2:], 0xFFFF)
			return b
		}, fix: true, want: ErrCorrupt, msg: "xattr"},
		{name: "dirent first name offset garbage", mutate: func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[rootDir.phys+8:], 0xFFFF)
			return b
		}, fix: true, want: ErrCorrupt, msg: "name offset"},
		{name: "dirent name offset garbage", mutate: func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[rootDir.phys+dirEntrySize+8:], 0xFFF0)
			return b
		}, fix: true, want: ErrCorrupt, msg: "name offsets"},
		{name: "dirent nid garbage", mutate: func(b []byte) []byte {
			for i := range 5 { // ".", "..", "a", "b", "link"
				binary.LittleEndian.PutUint64(b[int(rootDir.phys)+i*dirEntrySize:], 1<<50+uint64(i))
			}
			return b
		}, fix: true, want: ErrCorrupt, msg: "offset beyond end of image"},
		{name: "unknown inode format bits", mutate: func(b []byte) []byte {
			b[inodePos("b")] |= 0x80
			return b
		}, fix: true, want: ErrCorrupt, msg: "i_format"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(bytes.Clone(img))
			if tc.fix {
				readerFixChecksum(b)
			}
			fsys, err := Open(bytes.NewReader(b))
			if err == nil {
				err = readerWalkAll(fsys)
			}
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.msg) {
				t.Fatalf("error %v; want %v containing %q", err, tc.want, tc.msg)
			}
			t.Log(err)
		})
	}
}

// readerAtOnly hides every method of a reader but ReadAt.
type readerAtOnly struct{ r io.ReaderAt }

func (r readerAtOnly) ReadAt(p []byte, off int64) (int, error) { return r.r.ReadAt(p, off) }

func TestReaderOpenSize(t *testing.T) {
	syn := readerSynthImage(12, true)
	if _, err := Open(readerAtOnly{bytes.NewReader(syn.img)}); err == nil || !strings.Contains(err.Error(), "OpenSize") {
		t.Errorf("Open of a bare ReaderAt: %v, want an error pointing to OpenSize", err)
	}
	fsys, err := OpenSize(readerAtOnly{bytes.NewReader(syn.img)}, int64(len(syn.img)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.ReadFile("plain"); err != nil {
		t.Error(err)
	}
	// A size larger than the data: reads past the real end fail as I/O
	// errors, not format errors.
	fsys, err = OpenSize(readerAtOnly{bytes.NewReader(syn.img[:len(syn.img)-4096+5])}, int64(len(syn.img)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.ReadFile("plain"); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short reader: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := OpenSize(bytes.NewReader(syn.img), -1); err == nil {
		t.Error("negative size accepted")
	}
	f, err := os.CreateTemp(t.TempDir(), "img")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(syn.img); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]io.ReaderAt{
		"file":    f,
		"section": io.NewSectionReader(bytes.NewReader(syn.img), 0, int64(len(syn.img))),
		"seeker": struct {
			io.ReadSeeker
			io.ReaderAt
		}{bytes.NewReader(syn.img), bytes.NewReader(syn.img)},
	} {
		fsys, err := Open(r)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got, err := fsys.ReadFile("lp"); err != nil || string(got) != "hello" {
			t.Errorf("%s: ReadFile = %q, %v", name, got, err)
		}
	}
}

// TestReaderConcurrent reads one FS from many goroutines (run with -race).
func TestReaderConcurrent(t *testing.T) {
	syn := readerSynthImage(12, true)
	fsys := readerOpenBytes(t, syn.img)
	f, err := fsys.Open("chunked")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	errc := make(chan error, 8)
	for i := range 8 {
		go func() {
			for range 50 {
				if _, err := fsys.ReadDir("."); err != nil {
					errc <- err
					return
				}
				if got, err := fsys.ReadFile("plain"); err != nil || !bytes.Equal(got, syn.plain) {
					errc <- fmt.Errorf("ReadFile: %v", err)
					return
				}
				p := make([]byte, 100)
				off := int64(i * 1000)
				if _, err := f.(io.ReaderAt).ReadAt(p, off); err != nil || !bytes.Equal(p, syn.chunked[off:off+100]) {
					errc <- fmt.Errorf("ReadAt: %v", err)
					return
				}
			}
			errc <- nil
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

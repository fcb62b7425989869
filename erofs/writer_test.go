package erofs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestWriterRejects(t *testing.T) {
	t.Parallel()
	type step struct {
		entry  Entry
		data   string
		linkTo string
	}
	file := func(p string) step { return step{entry: Entry{Path: p, Mode: 0o644, Size: 1}, data: "x"} }
	dir := func(p string) step { return step{entry: Entry{Path: p, Mode: fs.ModeDir | 0o755}} }
	for _, tc := range []struct {
		name    string
		steps   []step
		wantErr error
		wantMsg string
	}{
		{"dotdot", []step{file("a/../../etc/passwd")}, ErrInvalidPath, `"a/../../etc/passwd"`},
		{"dotdot-only", []step{file("..")}, ErrInvalidPath, `".."`},
		{"long-name", []step{file("d/" + strings.Repeat("x", 256))}, ErrInvalidPath, "256 bytes"},
		{"nul", []step{file("a\x00b")}, ErrInvalidPath, "NUL"},
		{"file-then-dir", []step{file("a"), dir("a")}, ErrTypeConflict, `"a"`},
		{"dir-then-file", []step{dir("a"), file("a")}, ErrTypeConflict, `"a"`},
		{"file-as-parent", []step{file("a"), file("a/b")}, ErrNotDir, `"a/b"`},
		{"root-as-file", []step{file("/")}, ErrTypeConflict, `"/"`},
		{"short-data", []step{{entry: Entry{Path: "s", Mode: 0o644, Size: 10000}, data: "only this"}}, ErrShortData, `"s"`},
		{"short-tail", []step{{entry: Entry{Path: "s", Mode: 0o644, Size: 10}, data: "only"}}, ErrShortData, `"s"`},
		{"bad-xattr-prefix", []step{{entry: Entry{Path: "x", Mode: 0o644, Xattrs: map[string][]byte{"foo.bar": nil}}}}, ErrUnsupportedXattr, "foo.bar"},
		{"empty-xattr-name", []step{{entry: Entry{Path: "x", Mode: 0o644, Xattrs: map[string][]byte{"user.": nil}}}}, ErrUnsupportedXattr, "user."},
		{"link-missing", []step{{entry: Entry{Path: "l"}, linkTo: "nothing"}}, ErrNotExist, "nothing"},
		{"link-over-dir", []step{file("f"), dir("d"), {entry: Entry{Path: "d"}, linkTo: "f"}}, ErrTypeConflict, `"d"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, err := os.Create(filepath.Join(t.TempDir(), "img"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w, err := NewWriter(f, WriterOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var last error
			for _, s := range tc.steps {
				if s.linkTo != "" {
					last = w.Link(s.entry.Path, s.linkTo)
				} else {
					last = w.Add(s.entry, strings.NewReader(s.data))
				}
			}
			if !errors.Is(last, tc.wantErr) {
				t.Fatalf("got error %v, want %v", last, tc.wantErr)
			}
			if !strings.Contains(last.Error(), tc.wantMsg) {
				t.Errorf("error %q does not name %s", last, tc.wantMsg)
			}
			// A rejected entry leaves the writer usable.
			if err := w.Add(Entry{Path: "after", Mode: 0o644, Size: 5}, strings.NewReader("after")); err != nil {
				t.Fatalf("Add after a rejected entry: %v", err)
			}
			if err := w.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
		})
	}
}

// patternReader yields n bytes of a pattern that does not repeat with any
// block-aligned period, without holding them in memory.
type patternReader struct {
	off, n int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	for i := range b {
		x := uint64(p.off + int64(i))
		b[i] = byte(x ^ x>>8 ^ x>>17 ^ x>>29)
	}
	p.off += int64(len(b))
	return len(b), nil
}

// TestLargeFile writes a file over 4 GiB, which needs an extended inode and
// more than 2^20 blocks. It writes about 4.3 GB to disk, so it only runs with
// PE_TEST_LARGE=1.
func TestLargeFile(t *testing.T) {
	if os.Getenv("PE_TEST_LARGE") == "" {
		t.Skip("writes a 4.3 GB image; set PE_TEST_LARGE=1 to run")
	}
	const size = 4<<30 + 4097
	h := sha256.New()
	if _, err := io.Copy(h, &patternReader{n: size}); err != nil {
		t.Fatal(err)
	}
	s := &treeSpec{}
	s.add(Entry{Path: "small", Mode: 0o644, ModTime: time.Unix(5, 0)}, []byte("small"))
	s.items = append(s.items, specItem{
		entry:    Entry{Path: "huge", Mode: 0o644, Size: size, ModTime: time.Unix(5, 0)},
		dataFunc: func() io.Reader { return &patternReader{n: size} },
		digest:   hex.EncodeToString(h.Sum(nil)),
	})
	img := s.write(t, WriterOptions{})
	want := s.expected(t, WriterOptions{})
	got := hostSnapshot(t, mountImage(t, img))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mounted image differs (-want +got):\n%s", diff)
	}
}

// fuzzTree turns fuzzer bytes into a valid tree: each op picks a kind, a path
// from a small set of names (so paths collide, replace and nest), a size
// around block boundaries and attributes. Ops the writer would reject
// (a directory over a file and so on) are skipped, so the writer must accept
// everything that remains.
func fuzzTree(data []byte) *treeSpec {
	names := []string{"a", "b", "c", "-", "\xff\xfe", strings.Repeat("l", 255), ".wh.x", "d.e"}
	sizes := []int{0, 1, 31, 100, 2000, 4000, 4063, 4095, 4096, 4097, 8192, 9000}
	times := []time.Time{time.Unix(0, 0), time.Unix(1700000000, 0), time.Unix(1700000000, 5), time.Unix(1<<32+3, 999999999)}
	ids := []uint32{0, 1, 1000, 65535, 65536, 1 << 31}
	xattrSets := []map[string][]byte{nil, {"user.a": []byte("1")}, {"user.a": []byte("1"), "trusted.overlay.opaque": []byte("y")},
		{"security.capability": {1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}, {"user.big": bytes.Repeat([]byte("v"), 3000)}}
	next := func() int {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return int(b)
	}
	types := map[string]bool{} // path → is a directory
	s := &treeSpec{}
	for len(data) > 0 && len(s.items) < 200 {
		kind := next() % 7
		depth := next()%3 + 1
		var parts []string
		for range depth {
			parts = append(parts, names[next()%len(names)])
		}
		p := strings.Join(parts, "/")
		// Parents must be directories (or absent); the path itself must
		// keep its kind.
		ok := true
		for i := 1; i < len(parts); i++ {
			if isDir, seen := types[strings.Join(parts[:i], "/")]; seen && !isDir {
				ok = false
			}
		}
		isDir, seen := types[p]
		wantDir := kind == 1
		if !ok || (seen && isDir != wantDir) {
			continue
		}
		e := Entry{Path: p, UID: ids[next()%len(ids)], GID: ids[next()%len(ids)], ModTime: times[next()%len(times)],
			Xattrs: xattrSets[next()%len(xattrSets)]}
		perm := fs.FileMode(next()%8)<<6 | fs.FileMode(next()%8)<<3 | fs.FileMode(next()%8)
		var body []byte
		switch kind {
		case 0:
			e.Mode = perm
			n := sizes[next()%len(sizes)]
			body = bytes.Repeat([]byte{byte(next())}, n)
			for i := range body {
				body[i] ^= byte(i * 7)
			}
		case 1:
			e.Mode = fs.ModeDir | perm
		case 2:
			e.Mode = fs.ModeSymlink | 0o777
			e.Linkname = strings.Repeat("t", sizes[next()%len(sizes)]%4095+1)
		case 3:
			var targets []string
			for q, d := range types {
				if !d {
					targets = append(targets, q)
				}
			}
			if len(targets) == 0 {
				continue
			}
			slices.Sort(targets)
			s.link(p, targets[next()%len(targets)])
			types[p] = false
			markParents(types, parts)
			continue
		case 4:
			e.Mode = fs.ModeNamedPipe | perm
		case 5:
			e.Mode = fs.ModeDevice | fs.ModeCharDevice | perm
			e.DevMajor, e.DevMinor = uint32(next()), uint32(next())<<8|uint32(next())
		case 6:
			e.Mode = fs.ModeSetuid | fs.ModeSetgid | perm
		}
		if kind == 2 || kind == 4 || kind == 5 {
			// Linux hides user.* attributes of anything but regular files
			// and directories (fs/xattr.c), so a mount could not show them.
			e.Xattrs = withoutUserXattrs(e.Xattrs)
		}
		s.add(e, body)
		types[p] = wantDir
		markParents(types, parts)
	}
	return s
}

func withoutUserXattrs(m map[string][]byte) map[string][]byte {
	var out map[string][]byte
	for k, v := range m {
		if !strings.HasPrefix(k, "user.") {
			if out == nil {
				out = map[string][]byte{}
			}
			out[k] = v
		}
	}
	return out
}

func markParents(types map[string]bool, parts []string) {
	for i := 1; i < len(parts); i++ {
		types[strings.Join(parts[:i], "/")] = true
	}
}

func FuzzWriter(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 7, 5, 4, 9})
	f.Add([]byte("\x01\x02\x00\x01\x02\x03\x01\x02\x03\x04\x05\x06\x00\x01\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"))
	f.Fuzz(func(t *testing.T, data []byte) {
		spec := fuzzTree(data)
		img := spec.write(t, WriterOptions{})
		want := spec.expected(t, WriterOptions{})
		checkImageWithReader(t, img, want)
		if os.Geteuid() == 0 {
			if diff := cmp.Diff(want, hostSnapshot(t, mountImage(t, img))); diff != "" {
				t.Errorf("mounted image differs (-want +got):\n%s", diff)
			}
		}
	})
}

// TestWriterFormatChoices checks the on-disk choices the round trips cannot
// see: compact inodes where the format allows them and extended ones where
// it does not, file tails packed inline, attributes carried by several
// inodes moved to the shared area, and the superblock checksum.
func TestWriterFormatChoices(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	shared := map[string][]byte{"user.shared": []byte("on two files")}
	s := &treeSpec{}
	// Most inodes carry t0, so it becomes the build time and they can be
	// compact.
	s.add(Entry{Path: "/", Mode: fs.ModeDir | 0o755, ModTime: t0}, nil)
	s.add(Entry{Path: "plain", Mode: 0o644, ModTime: t0}, []byte("small"))
	s.add(Entry{Path: "tail", Mode: 0o644, ModTime: t0}, bytes.Repeat([]byte("t"), 5000))
	s.add(Entry{Path: "whole-blocks", Mode: 0o644, ModTime: t0}, bytes.Repeat([]byte("b"), 8192))
	s.add(Entry{Path: "big-tail", Mode: 0o644, ModTime: t0}, bytes.Repeat([]byte("x"), 4095))
	s.add(Entry{Path: "uid", Mode: 0o644, UID: 70000, ModTime: t0}, []byte("u"))
	s.add(Entry{Path: "gid", Mode: 0o644, GID: 70000, ModTime: t0}, []byte("g"))
	s.add(Entry{Path: "nsec", Mode: 0o644, ModTime: t0.Add(time.Nanosecond)}, []byte("n"))
	s.add(Entry{Path: "shared1", Mode: 0o644, ModTime: t0, Xattrs: shared}, []byte("1"))
	s.add(Entry{Path: "shared2", Mode: 0o644, ModTime: t0, Xattrs: shared}, []byte("2"))
	s.add(Entry{Path: "own", Mode: 0o644, ModTime: t0, Xattrs: map[string][]byte{"user.own": []byte("only here")}}, []byte("o"))
	img := s.write(t, WriterOptions{})
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}

	sb := unmarshalSuperBlock(b[superOffset:])
	if sb.FeatureCompat&featureCompatSBChecksum == 0 {
		t.Error("superblock checksum feature not set")
	}
	if want := superBlockChecksum(b, 1<<sb.BlkSzBits); sb.Checksum != want {
		t.Errorf("superblock checksum %#08x, want %#08x", sb.Checksum, want)
	}
	if got, want := time.Unix(int64(sb.BuildTime), int64(sb.BuildTimeNsec)), t0; !got.Equal(want) {
		t.Errorf("build time %v, want the most common mtime %v", got, want)
	}

	type choice struct {
		Extended bool
		Layout   int
		Shared   int // shared xattr ids in the inode's xattr header
		Inline   int // inline xattrs
	}
	fsys := readerOpenFile(t, img)
	got := map[string]choice{}
	for _, name := range []string{"plain", "tail", "whole-blocks", "big-tail", "uid", "gid", "nsec", "shared1", "shared2", "own"} {
		fi, err := fsys.Lstat(name)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*Stat)
		c := choice{Extended: st.Extended, Layout: st.Layout, Inline: len(st.Xattrs)}
		if len(st.Xattrs) > 0 {
			// erofs_xattr_ibody_header follows the inode: h_shared_count
			// is its fifth byte.
			pos := int64(sb.MetaBlkAddr)<<sb.BlkSzBits + int64(st.Nid)*32 + int64(inodeSizeOf(st))
			c.Shared = int(b[pos+4])
			c.Inline -= c.Shared
		}
		got[name] = c
	}
	want := map[string]choice{
		"plain":        {Layout: layoutFlatInline},
		"tail":         {Layout: layoutFlatInline},
		"whole-blocks": {Layout: layoutFlatPlain},
		// 4095 bytes and a 32-byte inode do not fit in one block.
		"big-tail": {Layout: layoutFlatPlain},
		"uid":      {Extended: true, Layout: layoutFlatInline},
		"gid":      {Extended: true, Layout: layoutFlatInline},
		"nsec":     {Extended: true, Layout: layoutFlatInline},
		"shared1":  {Layout: layoutFlatInline, Shared: 1},
		"shared2":  {Layout: layoutFlatInline, Shared: 1},
		"own":      {Layout: layoutFlatInline, Inline: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("format choices (-want +got):\n%s", diff)
	}
}

// inodeSizeOf is the on-disk size of the inode st describes.
func inodeSizeOf(st *Stat) int {
	if st.Extended {
		return extendedInodeSize
	}
	return compactInodeSize
}

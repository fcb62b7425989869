package erofs

import (
	"io"
	"io/fs"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
)

// readerSnapshot walks an image with this package's reader.
func readerSnapshot(t testing.TB, fsys *FS) snapshot {
	t.Helper()
	snap := snapshot{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := fsys.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*Stat)
		f := facts{
			Type:      TypeName(fi.Mode()),
			Perm:      permBits(fi.Mode()),
			UID:       st.UID,
			GID:       st.GID,
			MtimeNano: fi.ModTime().UnixNano(),
			Nlink:     st.Nlink,
			Xattrs:    stringMap(st.Xattrs),
		}
		open := func() (io.ReadCloser, error) { return fsys.Open(p) }
		readlink := func() (string, error) { return fsys.ReadLink(p) }
		if err := f.content(t, fi.Size(), open, readlink, st.DevMajor, st.DevMinor); err != nil {
			return err
		}
		if p == "." {
			p = ""
		}
		snap[p] = f
		return nil
	})
	if err != nil {
		t.Fatalf("walking image with pe's reader: %v", err)
	}
	return snap
}

func TestRoundTripReaders(t *testing.T) {
	t.Parallel()
	spec := fullTree(2000)
	img := spec.write(t, WriterOptions{})
	want := spec.expected(t, WriterOptions{})

	fsys := readerOpenFile(t, img)
	if diff := cmp.Diff(want, readerSnapshot(t, fsys)); diff != "" {
		t.Errorf("pe's reader differs from the source (-want +got):\n%s", diff)
	}

	// go-erofs drops setuid/setgid/sticky bits on read (v0.3.1), so compare
	// permission bits only.
	wantGo := want.project(func(_ string, f facts) facts { f.Perm &= 0o777; return f })
	if diff := cmp.Diff(wantGo, goErofsSnapshot(t, img)); diff != "" {
		t.Errorf("go-erofs differs from the source (-want +got):\n%s", diff)
	}
}

// checkImageWithReader opens img with pe's reader and compares it to want.
func checkImageWithReader(t *testing.T, img string, want snapshot) {
	t.Helper()
	fsys := readerOpenFile(t, img)
	if diff := cmp.Diff(want, readerSnapshot(t, fsys)); diff != "" {
		t.Errorf("pe's reader differs from the source (-want +got):\n%s", diff)
	}
}

// TestReaderFSTestOnWriterImage runs the io/fs conformance checks over an
// image this package's writer made (the mkfs.erofs images get the same in
// reader_test.go).
func TestReaderFSTestOnWriterImage(t *testing.T) {
	t.Parallel()
	// TestFS opens every entry it finds, so leave out the symlinks that
	// dangle on purpose.
	spec := &treeSpec{}
	for _, it := range fullTree(50).items {
		if it.entry.Mode&fs.ModeSymlink == 0 || it.entry.Path == "links/short" {
			spec.items = append(spec.items, it)
		}
	}
	img := spec.write(t, WriterOptions{})
	fsys := readerOpenFile(t, img)
	// TestFS runs its fs.Sub check on the directory of the first name with
	// a slash, and fs.Sub refuses non-UTF-8 names (big/ has some): make it
	// a directory without them, whatever the map order.
	expect := []string{"sizes/f1"}
	for p := range spec.expected(t, WriterOptions{}) {
		if p != "" {
			expect = append(expect, p)
		}
	}
	if err := fstest.TestFS(fsys, expect...); err != nil {
		t.Fatal(err)
	}
}

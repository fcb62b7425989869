package erofs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// requireTool skips the test when a command it runs is not installed.
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("needs %s on PATH (Debian package erofs-utils); `make deps` installs it", name)
	}
}

// mkfsImage runs mkfs.erofs with args over the directory src and returns the
// path of the image, in a fresh temporary directory.
func mkfsImage(t testing.TB, src string, args ...string) string {
	t.Helper()
	requireTool(t, "mkfs.erofs")
	img := filepath.Join(t.TempDir(), "image.erofs")
	argv := append(append([]string{"--quiet"}, args...), img, src)
	cmd := exec.CommandContext(t.Context(), "mkfs.erofs", argv...)
	// SOURCE_DATE_EPOCH (even empty) makes mkfs use a fixed time for every
	// inode; the tests compare the source's mtimes.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "SOURCE_DATE_EPOCH=")
	})
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.erofs %q: %v\n%s", argv, err, out)
	}
	return img
}

// readerOpenBytes opens an in-memory image, failing the test on error.
func readerOpenBytes(t testing.TB, img []byte) *FS {
	t.Helper()
	fsys, err := Open(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return fsys
}

// readerOpenOS opens a file for the rest of the test.
func readerOpenOS(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// readerOpenFile opens an image file, failing the test on error.
func readerOpenFile(t testing.TB, path string) *FS {
	t.Helper()
	fsys, err := Open(readerOpenOS(t, path))
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	return fsys
}

// readerFixChecksum recomputes the superblock checksum of an image after a
// test changed bytes in it, when the image has one.
func readerFixChecksum(img []byte) {
	sb := unmarshalSuperBlock(img[superOffset:])
	if sb.FeatureCompat&featureCompatSBChecksum == 0 {
		return
	}
	bs := int64(1) << sb.BlkSzBits
	binary.LittleEndian.PutUint32(img[superOffset+4:], superBlockChecksum(img, bs))
}

// readerSetxattr sets an extended attribute on a test file, tolerating file
// systems without xattr support (tmpfs before Linux 6.6 has no user.*): the
// comparisons read the source's xattrs back, so they stay consistent.
func readerSetxattr(t testing.TB, path, name string, value []byte) {
	t.Helper()
	err := unix.Lsetxattr(path, name, value, 0)
	if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
		t.Logf("%s: no xattr support here: %v", path, err)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
}

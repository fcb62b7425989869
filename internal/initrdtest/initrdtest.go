// Package initrdtest writes the tiny initramfs images that VM tests boot a
// guest kernel with (busybox, a few modules and a shell script as /init),
// for the packages whose tests boot a kernel without pe's guest init
// (blockstore/nbd, vmm/qemu; erofs keeps its own copy, since it may import
// nothing of pe's, tests included). It sits in internal, below every
// folder; it imports nothing of pe's.
package initrdtest

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Write writes a gzip-compressed newc cpio archive holding the
// directories bin and lib and files (archive path → content, each mode
// 0755: "init", "bin/busybox", "lib/virtio_blk.ko"...) into a t.TempDir,
// and returns its path.
func Write(t testing.TB, files map[string][]byte) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	names := []string{"bin", "lib"}
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for i, n := range names {
		mode, data := uint32(0o040755), []byte(nil)
		if b, ok := files[n]; ok {
			mode, data = 0o100755, b
		}
		writeNewc(zw, i+1, n, mode, data)
	}
	writeNewc(zw, 0, "TRAILER!!!", 0, nil)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "initrd.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeNewc writes one newc cpio record, its name and data each padded to
// 4 bytes.
func writeNewc(w io.Writer, ino int, name string, mode uint32, data []byte) {
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	w.Write([]byte(hdr))
	w.Write(append([]byte(name), 0))
	w.Write(make([]byte, (4-(len(hdr)+len(name)+1)%4)%4))
	w.Write(data)
	w.Write(make([]byte, (4-len(data)%4)%4))
}

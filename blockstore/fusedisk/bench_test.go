package fusedisk

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore"
)

// BenchmarkRead reads a 32 MiB image through the mount, each iteration
// as a new file (a new inode: nothing in the page cache), the way a VMM
// reads a new run's disk: from a bytes.Reader (FUSE's own cost), and
// from a blockstore.Image whose chunks are all cached (a warm run).
func BenchmarkRead(b *testing.B) {
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		b.Skip("needs /dev/fuse and root")
	}
	dir := filepath.Join(b.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	m, err := Mount(dir, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	data := randomBytes(32<<20, 12)
	src := filepath.Join(b.TempDir(), "img")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		b.Fatal(err)
	}
	ix, err := blockstore.BuildIndexFile(b.Context(), src, 512<<10)
	if err != nil {
		b.Fatal(err)
	}
	store, err := blockstore.NewStore(blockstore.Options{Dir: b.TempDir(), RequestTimeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	sf, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer sf.Close()
	img, err := store.Open(ix, blockstore.FileFetcher{R: sf})
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	if _, err := img.ReadAt(make([]byte, len(data)), 0); err != nil { // warm the store
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		r    io.ReaderAt
	}{
		{"bytes", bytes.NewReader(data)},
		{"warm-store", img},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			buf := make([]byte, 1<<20)
			for i := 0; b.Loop(); i++ {
				name := fmt.Sprintf("%s-%d", bc.name, i)
				path, err := m.Add(name, bc.r, int64(len(data)))
				if err != nil {
					b.Fatal(err)
				}
				f, err := os.Open(path)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.CopyBuffer(io.Discard, f, buf); err != nil {
					b.Fatal(err)
				}
				f.Close()
				m.Remove(name)
			}
		})
	}
}

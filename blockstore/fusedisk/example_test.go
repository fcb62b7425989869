package fusedisk_test

import (
	"log"
	"os"
	"path/filepath"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/fusedisk"
)

// A process mounts once, in a directory only it can search, and shows
// each run's lazy image as a file that the VMM opens as its disk.
func ExampleMount() {
	var img *blockstore.Image // from Store.Open(index, fetcher)

	dir := filepath.Join(os.TempDir(), "pe-fuse") // private: 0700
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Fatal(err)
	}
	// AllowOther: confined QEMU runs as another uid.
	m, err := fusedisk.Mount(dir, fusedisk.Options{AllowOther: os.Geteuid() == 0})
	if err != nil {
		log.Fatal(err) // errors.Is(err, fusedisk.ErrUnavailable): use a local copy
	}
	defer m.Close()

	path, err := m.Add("run-1234.erofs", img, img.Size())
	if err != nil {
		log.Fatal(err)
	}
	defer m.Remove("run-1234.erofs")
	_ = path // vmm.Disk{Path: path, ReadOnly: true}
}

package erofs

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// blockLog is an io.ReaderAt that notes the blocks read through it.
type blockLog struct {
	r      io.ReaderAt
	bs     int64
	mu     sync.Mutex
	blocks map[int64]bool
}

func (b *blockLog) ReadAt(p []byte, off int64) (int, error) {
	b.mu.Lock()
	for bn := off / b.bs; bn*b.bs < off+int64(len(p)); bn++ {
		b.blocks[bn] = true
	}
	b.mu.Unlock()
	return b.r.ReadAt(p, off)
}

// statWalkBlocks opens the image through a fresh reader and walks every
// name with Lstat (which reads xattrs), ReadDir and ReadLink: what "ls -lR"
// and a program's first lookups read. It returns the blocks it touched.
func statWalkBlocks(t *testing.T, img string) map[int64]bool {
	t.Helper()
	log := &blockLog{r: readerOpenOS(t, img), bs: 4096, blocks: map[int64]bool{}}
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := OpenSize(log, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := fsys.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if _, err := fsys.ReadLink(p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return log.blocks
}

func rangeBlocks(rs []ByteRange, bs int64) map[int64]bool {
	out := map[int64]bool{}
	for _, r := range rs {
		for bn := r.Off / bs; bn*bs < r.Off+r.Len; bn++ {
			out[bn] = true
		}
	}
	return out
}

func sortedKeys(m map[int64]bool) []int64 {
	var out []int64
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestMetadataRanges: for images of pe's writer and of mkfs.erofs, plain
// and compressed, MetadataRanges covers every block a walk of all names,
// stats, xattrs and link targets reads; for plain images exactly those
// (with compression the indexes come on top); and no file data.
func TestMetadataRanges(t *testing.T) {
	src := t.TempDir()
	zTree(3<<20).writeDir(t, src)
	for _, tt := range []struct {
		name  string
		img   func(t *testing.T) string
		exact bool
	}{
		{"pe writer", func(t *testing.T) string { return fullTree(300).write(t, WriterOptions{}) }, true},
		{"pe writer lz4", func(t *testing.T) string {
			return zTree(3<<20).write(t, WriterOptions{Compression: CompressionLZ4, PclusterSize: 16384})
		}, false},
		{"mkfs.erofs", func(t *testing.T) string { return mkfsImage(t, src) }, true},
		{"mkfs.erofs lz4hc", func(t *testing.T) string { return mkfsImage(t, src, "-zlz4hc") }, false},
		{"mkfs.erofs legacy lz4 indexes", func(t *testing.T) string { return mkfsImage(t, src, "-zlz4", "-Elegacy-compress") }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			img := tt.img(t)
			fi, err := os.Stat(img)
			if err != nil {
				t.Fatal(err)
			}
			rs, err := MetadataRanges(readerOpenOS(t, img), fi.Size())
			if err != nil {
				t.Fatal(err)
			}
			got := rangeBlocks(rs, 4096)
			walked := statWalkBlocks(t, img)
			var missing []int64
			for bn := range walked {
				if !got[bn] {
					missing = append(missing, bn)
				}
			}
			slices.Sort(missing)
			if len(missing) > 0 {
				t.Errorf("blocks a stat walk reads that MetadataRanges lacks: %v (ranges %v)", missing, rs)
			}
			if tt.exact {
				if d := cmp.Diff(sortedKeys(walked), sortedKeys(got)); d != "" {
					t.Errorf("metadata blocks (-stat walk +MetadataRanges):\n%s", d)
				}
			}
			var total int64
			for _, r := range rs {
				total += r.Len
			}
			// The trees hold megabytes of file data and far less
			// metadata.
			if total*10 > fi.Size() {
				t.Errorf("metadata of %d bytes in a %d-byte image: file data included? %v", total, fi.Size(), rs)
			}
			t.Logf("%d metadata bytes in %d ranges, image %d bytes", total, len(rs), fi.Size())
		})
	}
}

func TestMetadataRangesRejectsCorrupt(t *testing.T) {
	img := fullTree(10).write(t, WriterOptions{})
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	b[superOffset] ^= 0xff // magic
	bad := filepath.Join(t.TempDir(), "bad.erofs")
	os.WriteFile(bad, b, 0o644)
	if _, err := MetadataRanges(readerOpenOS(t, bad), int64(len(b))); err == nil {
		t.Error("MetadataRanges of an image with a bad magic: no error")
	}
}

// TestWriterPutsMetadataFirst: with a file output, every byte of metadata
// is in one range at the image's start, the data after it; the image reads
// back right, whether the data was moved by FALLOC_FL_INSERT_RANGE or by
// copying (same bytes); with MetadataAtEnd the metadata stays after the
// data.
func TestWriterPutsMetadataFirst(t *testing.T) {
	fsck, _ := exec.LookPath("fsck.erofs")
	for _, tt := range []struct {
		name string
		spec *treeSpec
		opts WriterOptions
	}{
		{"plain", fullTree(300), WriterOptions{}},
		{"lz4hc compact indexes", zTree(3 << 20), WriterOptions{Compression: CompressionLZ4HC, PclusterSize: 16384}},
		{"lz4 full indexes", zTree(3 << 20), WriterOptions{Compression: CompressionLZ4, CompressIndex: IndexFull}},
		{"512-byte blocks", fullTree(300), WriterOptions{BlockSize: 512}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.spec.expected(t, tt.opts)
			img := tt.spec.write(t, tt.opts)
			size := fileSize(t, img)
			rs, err := MetadataRanges(readerOpenOS(t, img), size)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != 1 || rs[0].Off != 0 || rs[0].Len*10 > size {
				t.Errorf("metadata ranges %v in a %d-byte image: want one, from 0, much smaller than the image", rs, size)
			}
			checkImageWithReader(t, img, want)
			if fsck != "" && tt.opts.BlockSize == 0 { // erofs-utils 1.5: 4 KiB only
				if out, err := exec.Command(fsck, img).CombinedOutput(); err != nil {
					t.Errorf("fsck.erofs: %v\n%s", err, out)
				}
			}

			// The data of these small trees was copied; moved with
			// INSERT_RANGE (big images), or by copying after the file
			// system refused it, the image is the same.
			oldMin, oldInsert := insertRangeMin, insertRange
			insertRangeMin = 0
			var inserts, refusals int
			insertRange = func(f fileOutput, off, gap int64) error {
				inserts++
				return oldInsert(f, off, gap)
			}
			inserted := tt.spec.write(t, tt.opts)
			insertRange = func(fileOutput, int64, int64) error { refusals++; return unix.EOPNOTSUPP }
			refused := tt.spec.write(t, tt.opts)
			insertRangeMin, insertRange = oldMin, oldInsert
			if inserts != 1 || refusals != 1 {
				t.Errorf("INSERT_RANGE tried %d and %d times, want once each", inserts, refusals)
			}
			a, _ := os.ReadFile(img)
			for _, other := range []string{inserted, refused} {
				if b, _ := os.ReadFile(other); !bytes.Equal(a, b) {
					t.Errorf("%s: the image differs from the one made by copying (%d and %d bytes)", other, len(a), len(b))
				}
			}

			o := tt.opts
			o.MetadataAtEnd = true
			atEnd := tt.spec.write(t, o)
			endSize := fileSize(t, atEnd)
			rs, err = MetadataRanges(readerOpenOS(t, atEnd), endSize)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) < 2 || rs[0].Off != 0 || rs[len(rs)-1].Off+rs[len(rs)-1].Len != endSize {
				t.Errorf("MetadataAtEnd: metadata ranges %v in a %d-byte image: want the superblock's, and the rest at the end", rs, endSize)
			}
			if endSize != size {
				t.Errorf("MetadataAtEnd image has %d bytes, the metadata-first one %d", endSize, size)
			}
			checkImageWithReader(t, atEnd, want)
		})
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// FuzzMetadataRanges: whatever the image, MetadataRanges returns an error
// or sorted, disjoint ranges inside the image, reading nothing outside it
// and never panicking. The seeds are FuzzReader's.
func FuzzMetadataRanges(f *testing.F) {
	f.Add(readerSynthImage(9, true).img)
	f.Add(readerSynthImage(10, false).img)
	f.Fuzz(func(t *testing.T, data []byte) {
		size := int64(len(data))
		rs, err := MetadataRanges(boundedReaderAt{t, bytes.NewReader(data)}, size)
		if err != nil {
			return
		}
		end := int64(-1)
		for _, r := range rs {
			if r.Len <= 0 || r.Off <= end || r.Off+r.Len > size {
				t.Fatalf("bad ranges %v for a %d-byte image", rs, size)
			}
			end = r.Off + r.Len
		}
	})
}

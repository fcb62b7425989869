package erofs

import (
	"errors"
	"fmt"
	"io"

	"golang.org/x/sys/unix"
)

// shiftBuf is the size of the pieces shiftFile copies when it must copy.
const shiftBuf = 4 << 20

// fileOutput is an output whose data Close can move: an *os.File, or a
// type embedding one (an atomically renamed output file).
type fileOutput interface {
	io.ReaderAt
	io.WriterAt
	Fd() uintptr
}

// insertRange inserts a hole of gap bytes at off; a variable so that tests
// can take the copying path on file systems that would not.
var insertRange = func(f fileOutput, off, gap int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_INSERT_RANGE, off, gap)
}

// insertRangeMin is the least data shiftFile moves with INSERT_RANGE
// rather than by copying. On ext4 INSERT_RANGE first writes the file's
// dirty pages back and waits for them, which made building a 128 MB image
// 0.4-0.7 s slower than copying its data in the page cache
// (docs/benchmarks.md); past a few hundred MB the copy's reads and
// second writes cost more than the writeback, which happens anyway.
// A variable so that tests can take either path.
var insertRangeMin int64 = 256 << 20

// shiftFile moves the n bytes of f at off up by gap bytes, leaving the
// gap in front of them (zeros or old bytes: the caller overwrites it).
// Much data is moved by asking the file system to insert the gap
// (FALLOC_FL_INSERT_RANGE: extents move, no byte is copied), which needs
// off and gap to be multiples of its block size; less data, or where that
// is refused, is copied, last piece first so that nothing is overwritten
// before it is read.
func shiftFile(f fileOutput, off, n, gap int64) error {
	if n == 0 || gap == 0 {
		return nil
	}
	if n >= insertRangeMin {
		err := insertRange(f, off, gap)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
			return fmt.Errorf("inserting %d bytes at %d: %w", gap, off, err)
		}
	}
	buf := make([]byte, min(n, shiftBuf))
	for end := off + n; end > off; {
		start := max(off, end-int64(len(buf)))
		b := buf[:end-start]
		if _, err := f.ReadAt(b, start); err != nil {
			return fmt.Errorf("reading %d bytes at %d: %w", len(b), start, err)
		}
		if _, err := f.WriteAt(b, start+gap); err != nil {
			return fmt.Errorf("writing %d bytes at %d: %w", len(b), start+gap, err)
		}
		end = start
	}
	return nil
}

package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	gzip "github.com/klauspost/compress/gzip"
	"io"
	"io/fs"
	"math"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/pe-project/pe/erofs"
)

// AddTar adds the entries of the tar stream r to w. The stream may be plain
// or compressed with gzip, zstd or xz; the compression is recognised by its
// magic bytes. Ustar, PAX and GNU archives are read, with long names, PAX
// extended attributes (SCHILY.xattr.*), nanosecond times and sparse files.
//
// Names are taken relative to the image root ("./a" and "a" are the same
// entry). An absolute name, a name or hard link target with a ".."
// component, or a name component longer than erofs.MaxNameLen bytes is an
// error, as is a path that is both a directory and a non-directory, a
// truncated stream or an entry type EROFS cannot hold. Every error names the
// tar entry at fault. When a name appears more than once with the same
// type, the last entry wins.
//
// AddTar reads r as a user's tarball (see tarStrict): an empty stream, or
// one whose archive ends without its end-of-archive marker (cut short
// exactly between two entries), is an error too.
//
// AddTar checks ctx between entries and while copying file data, and
// stays within lim (Limits{}: no limits): an entry that would take the
// stream over one of the limits stops it with a *LimitError.
func AddTar(ctx context.Context, w *erofs.Writer, r io.Reader, lim Limits) error {
	if err := lim.check(); err != nil {
		return err
	}
	return walkTar(ctx, r, tarStrict, &budget{lim: lim}, func(hdr *tar.Header, data io.Reader) error {
		return addTarEntry(ctx, w, data, hdr)
	})
}

// tarEnd says how walkTar treats the end of an archive.
type tarEnd int

const (
	// tarLenient accepts a stream that ends cleanly between two entries
	// as the end of the archive, with or without the end-of-archive marker
	// (zero blocks), and an empty stream as an empty archive, as docker
	// and containerd do for image layers: some layer producers omit the
	// marker.
	tarLenient tarEnd = iota
	// tarStrict, for tarballs a user hands pe (build-erofs FILE or -,
	// import and --tar), refuses an empty stream and an archive without
	// its end-of-archive marker: both are what a truncated download or an
	// interrupted copy leaves, and a short image would otherwise be built
	// from it without a word.
	tarStrict
)

// walkTar calls fn for each entry of the tar stream r, plain or compressed
// (see decompress), with the entry's header and a reader of its data; what
// fn leaves unread is skipped. An error from fn stops the walk and is
// returned as it is; errors of the stream name the entry they cut short.
// end says whether an empty stream and a missing end-of-archive marker
// are errors. After the end-of-archive marker walkTar reads r to its end,
// so that a corrupt compressed stream is noticed and whoever checks the
// digest of r sees all of it. walkTar checks ctx between entries and on
// every read, and counts every entry and the decompressed stream against
// b (nil: no limits), stopping with its *LimitError.
func walkTar(ctx context.Context, r io.Reader, end tarEnd, b *budget, fn func(hdr *tar.Header, data io.Reader) error) (err error) {
	stream, format, closeStream, err := decompress(ctx, ctxReader{ctx, r})
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return err
	}
	defer closeStream()
	if b != nil {
		stream = budgetReader{stream, b}
		// A limit reached inside the tar reader or the writer comes back
		// wrapped in their messages: it is the cause, and says it all.
		defer func() {
			var le *LimitError
			if errors.As(err, &le) {
				err = le
			}
		}()
	}
	blocks := &blockTracker{r: stream}
	tr := tar.NewReader(blocks)
	var last string // name of the last entry read
	var next int64  // where the header after the last entry starts (tarStrict)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			if end == tarStrict {
				inner := format
				if _, ok := r.(*gunzipReader); ok {
					inner = "gzip" // decompressed by fastGunzip before it came here
				}
				if err := checkTarEnd(blocks.off, next, last, inner); err != nil {
					return err
				}
			}
			break
		}
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return ctxErr
			}
			switch name := blocks.partialName(); {
			case name != "":
				return fmt.Errorf("reading tar header of entry %q: %w", name, err)
			case last != "":
				return fmt.Errorf("reading tar header after entry %q: %w", last, err)
			default:
				return fmt.Errorf("reading tar header: %w", err)
			}
		}
		last = hdr.Name
		if err := b.entry(hdr); err != nil {
			return err
		}
		if err := fn(hdr, tr); err != nil {
			return err
		}
		if end == tarStrict {
			// Read what fn left of the entry's data (tr.Next would skip it
			// the same way), to know where the next header starts.
			if _, err := io.Copy(io.Discard, tr); err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return ctxErr
				}
				return fmt.Errorf("reading tar entry %q: %w", hdr.Name, err)
			}
			next = (blocks.off + 511) &^ 511
		}
	}
	// Read what follows the end-of-archive marker (the rest of the last
	// record, a compressed stream's checksum) so that a corrupt compressed
	// stream is noticed and a writer on the other end of a pipe is not cut
	// off.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		if format == "gzip" && errors.Is(err, gzip.ErrHeader) {
			return nil // padding after the last gzip member, as GNU tar allows
		}
		if format == "" {
			return fmt.Errorf("reading after the end of the tar: %w", err)
		}
		return fmt.Errorf("reading %s stream after the end of the tar: %w", format, err)
	}
	return nil
}

// checkTarEnd tells, for tarStrict, whether an archive that tar.Reader
// found at its end really ended: off is how far the tar stream was read,
// next where the header after the last entry (named last; "" if none)
// starts, format the compression ("" for none). tar.Reader reports the end
// both at the end-of-archive marker, which it reads past, and when the
// stream simply stops where the next header would start.
func checkTarEnd(off, next int64, last, format string) error {
	switch {
	case off == 0 && format == "":
		return errors.New("empty input, not a tar archive")
	case off == 0:
		return fmt.Errorf("empty %s stream, not a tar archive", format)
	case off <= next && last != "":
		return fmt.Errorf("tar ends after entry %q without its end-of-archive marker: truncated?", last)
	}
	return nil
}

// addTarEntry adds the entry hdr, whose data tr is positioned at, to w.
func addTarEntry(ctx context.Context, w *erofs.Writer, tr io.Reader, hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	name, err := cleanTarPath(hdr.Name)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if hdr.Typeflag == tar.TypeLink {
		target, err := cleanTarPath(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("tar entry %q: hard link target %q: %w", hdr.Name, hdr.Linkname, err)
		}
		if err := w.Link(name, target); err != nil {
			return fmt.Errorf("tar entry %q: hard link to %q: %w", hdr.Name, hdr.Linkname, entryCause(err))
		}
		return nil
	}
	e, err := tarEntryMeta(hdr)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	e.Path = name
	return addTarData(ctx, w, e, tr, hdr.Name)
}

// addTarData adds e to w, reading a regular file's data from tr, and names
// the tar entry in errors, telling a truncated stream from a problem in the
// writer.
func addTarData(ctx context.Context, w *erofs.Writer, e erofs.Entry, tr io.Reader, entryName string) error {
	var data io.Reader
	var tracker *errTracker
	if e.Mode.IsRegular() {
		tracker = &errTracker{r: tr}
		data = tracker
	}
	if err := w.Add(e, data); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		if tracker != nil && tracker.err != nil {
			return fmt.Errorf("reading tar entry %q: %w", entryName, tracker.err)
		}
		return fmt.Errorf("tar entry %q: %w", entryName, entryCause(err))
	}
	return nil
}

// tarEntryMeta converts the header of a tar entry other than a hard link
// or a PAX global header to an erofs.Entry without a Path: type,
// permissions, owner, time, size, symlink target, device numbers and the
// extended attributes carried as PAX SCHILY.xattr.* records.
func tarEntryMeta(hdr *tar.Header) (erofs.Entry, error) {
	e := erofs.Entry{
		Mode:    tarPerm(hdr.Mode),
		ModTime: hdr.ModTime,
	}
	var err error
	if e.UID, err = toUint32("uid", hdr.Uid); err == nil {
		e.GID, err = toUint32("gid", hdr.Gid)
	}
	if err != nil {
		return e, err
	}
	for k, v := range hdr.PAXRecords {
		if xname, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			if e.Xattrs == nil {
				e.Xattrs = make(map[string][]byte)
			}
			e.Xattrs[xname] = []byte(v)
		}
	}
	switch hdr.Typeflag {
	case tar.TypeReg, '\x00', tar.TypeCont, tar.TypeGNUSparse:
		e.Size = hdr.Size
	case tar.TypeDir:
		e.Mode |= fs.ModeDir
	case tar.TypeSymlink:
		e.Mode |= fs.ModeSymlink
		e.Linkname = hdr.Linkname
	case tar.TypeChar, tar.TypeBlock:
		e.Mode |= fs.ModeDevice
		if hdr.Typeflag == tar.TypeChar {
			e.Mode |= fs.ModeCharDevice
		}
		if e.DevMajor, err = toUint32("device major", hdr.Devmajor); err == nil {
			e.DevMinor, err = toUint32("device minor", hdr.Devminor)
		}
		if err != nil {
			return e, err
		}
	case tar.TypeFifo:
		e.Mode |= fs.ModeNamedPipe
	default:
		return e, fmt.Errorf("unsupported entry type %q", hdr.Typeflag)
	}
	return e, nil
}

// invalidPathError is an unsafe or malformed name in a source. It matches
// erofs.ErrInvalidPath with errors.Is.
type invalidPathError struct{ reason string }

func (e *invalidPathError) Error() string        { return e.reason }
func (e *invalidPathError) Is(target error) bool { return target == erofs.ErrInvalidPath }

// cleanTarPath turns a tar name into a path relative to the image root:
// "./a/b/" and "a//b" become "a/b", "./" and "." the root ".". Absolute
// names, ".." components and components longer than erofs.MaxNameLen are
// errors.
func cleanTarPath(name string) (string, error) {
	if name == "" {
		return "", &invalidPathError{"empty name"}
	}
	if strings.HasPrefix(name, "/") {
		return "", &invalidPathError{"path is absolute"}
	}
	var parts []string
	for part := range strings.SplitSeq(name, "/") {
		switch {
		case part == "" || part == ".":
			continue
		case part == "..":
			return "", &invalidPathError{"path escapes the root"}
		case len(part) > erofs.MaxNameLen:
			return "", &invalidPathError{fmt.Sprintf("name component of %d bytes is longer than %d", len(part), erofs.MaxNameLen)}
		}
		parts = append(parts, part)
	}
	if len(parts) == 0 {
		return ".", nil
	}
	return strings.Join(parts, "/"), nil
}

// tarPerm converts the mode field of a tar header to permission, setuid,
// setgid and sticky bits.
func tarPerm(mode int64) fs.FileMode {
	m := fs.FileMode(mode & 0o777)
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// toUint32 checks that a numeric header field fits EROFS's 32 bits.
func toUint32[T int | int64](field string, v T) (uint32, error) {
	if v < 0 || int64(v) > math.MaxUint32 {
		return 0, fmt.Errorf("%s %d out of range", field, v)
	}
	return uint32(v), nil
}

// errTracker remembers the last error other than io.EOF its reader
// returned, to tell a truncated archive from a problem in the writer.
type errTracker struct {
	r   io.Reader
	err error
}

func (t *errTracker) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		t.err = err
	}
	return n, err
}

// blockTracker passes a tar stream through, keeping the bytes read so far of
// the current 512-byte block, so that an error in a header cut short can
// name the entry the header was for.
type blockTracker struct {
	r     io.Reader
	off   int64
	block [512]byte
}

func (b *blockTracker) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		start := int(b.off % 512)
		b.off += int64(n)
		inBlock := int(b.off % 512)
		if n >= inBlock {
			// The current block began within this read.
			copy(b.block[:inBlock], p[n-inBlock:n])
		} else {
			copy(b.block[start:inBlock], p[:n])
		}
	}
	return n, err
}

// partialName returns the name field of an incomplete header block the
// stream ended in, or "" when there is none.
func (b *blockTracker) partialName() string {
	got := b.block[:b.off%512]
	field := got[:min(len(got), 100)]
	name, _, terminated := bytes.Cut(field, []byte{0})
	if !terminated {
		return "" // the name is cut short, or this is not a header
	}
	return string(name)
}

// Magic bytes of the compressed formats AddTar reads.
var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
	xzMagic   = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
)

// decompress recognises a compressed stream by its magic bytes and returns
// a reader of its decompressed bytes, the format's name ("" for none) and a
// function releasing the decompressor, which walkTar must call. ctx stops a
// decompressor running as a process (see newXZReader).
func decompress(ctx context.Context, r io.Reader) (io.Reader, string, func(), error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(len(xzMagic))
	if err != nil && err != io.EOF {
		return nil, "", nil, fmt.Errorf("reading tar stream: %w", err)
	}
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, "", nil, fmt.Errorf("reading gzip header: %w", err)
		}
		return prefixErrors{zr, "gzip"}, "gzip", func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, zstdMagic):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, "", nil, fmt.Errorf("zstd: %w", err)
		}
		return prefixErrors{zr, "zstd"}, "zstd", zr.Close, nil
	case bytes.HasPrefix(magic, xzMagic):
		xr, release, err := newXZReader(ctx, br)
		if err != nil {
			return nil, "", nil, err
		}
		return prefixErrors{xr, "xz"}, "xz", release, nil
	}
	return br, "", func() {}, nil
}

// prefixErrors makes sure the errors of a decompressor say which format
// they are about ("zstd: unexpected EOF").
type prefixErrors struct {
	r      io.Reader
	format string
}

func (p prefixErrors) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if err != nil && err != io.EOF && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) &&
		!strings.HasPrefix(err.Error(), p.format+":") {
		err = fmt.Errorf("%s: %w", p.format, err)
	}
	return n, err
}

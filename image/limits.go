package image

import (
	"archive/tar"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Limits bound what converting an image may cost: the bytes its layers
// unpack to, the entries they hold and how deep a path goes. They are
// checked while the layers stream into the EROFS writer, at every tar
// header, before the entry's data is read, so a hostile layer (a sparse
// entry declaring an exabyte, a gzip bomb, a million tiny files) is
// refused after doing no more than the limit's worth of work. Zero fields
// mean no limit.
type Limits struct {
	// MaxUnpacked caps the bytes the layers unpack to: the sum, over every
	// entry of every layer, of the size its tar header declares (a sparse
	// file counts at its declared size, holes included; a file an upper
	// layer hides counts too, as it would on a docker host, which unpacks
	// each layer). The decompressed tar streams themselves (headers,
	// padding, what follows the end of the archive) may not exceed it by
	// more than a few KiB per entry either.
	MaxUnpacked int64
	// MaxEntries caps the tar entries of all layers together (headers of
	// files, directories, links, whiteouts).
	MaxEntries int64
	// MaxDepth caps the components of an entry's path in the image ("a/b/c"
	// is 3), the prefix of an imported tarball included.
	MaxDepth int
}

// The default limits of pe's commands. Entries and depth are finite even
// where the bytes are not: each entry costs memory while a conversion
// runs, and a path thousands of directories deep serves no real image.
const (
	// DefaultMaxUnpacked is the CLI's default for MaxUnpacked: large
	// enough for any real image (the largest common ones, CUDA or TeX
	// Live, unpack to 10–20 GiB) and small enough that one bad image
	// cannot take the whole disk.
	DefaultMaxUnpacked = 64 << 30
	// DefaultMaxEntries is the CLI's default for MaxEntries: ten times
	// the files of a full TeX Live image. A conversion holds about 1.4 KiB
	// of memory per entry (690 MB at 500,000), so this is about 3 GiB.
	DefaultMaxEntries = 2_000_000
	// DefaultMaxDepth is the default for MaxDepth: Linux's PATH_MAX of
	// 4096 bytes allows at most 2048 components; real images stay under 40.
	DefaultMaxDepth = 256
	// ServeMaxUnpacked is pe serve's default for MaxUnpacked: the original
	// Program Explorer's limit of 3 GB of image data, rounded to GiB.
	ServeMaxUnpacked = 3 << 30
	// ServeMaxEntries is pe serve's default for MaxEntries.
	ServeMaxEntries = 500_000
)

// DefaultLimits returns the CLI's default limits.
func DefaultLimits() Limits {
	return Limits{MaxUnpacked: DefaultMaxUnpacked, MaxEntries: DefaultMaxEntries, MaxDepth: DefaultMaxDepth}
}

// ServeLimits returns pe serve's default limits.
func ServeLimits() Limits {
	return Limits{MaxUnpacked: ServeMaxUnpacked, MaxEntries: ServeMaxEntries, MaxDepth: DefaultMaxDepth}
}

func (l Limits) check() error {
	if l.MaxUnpacked < 0 || l.MaxEntries < 0 || l.MaxDepth < 0 {
		return fmt.Errorf("negative image limit: %+v", l)
	}
	return nil
}

// LimitKind names one of the Limits.
type LimitKind string

// The kinds of LimitError, spelled as the flags that set them.
const (
	LimitUnpacked LimitKind = "--max-image-unpacked"
	LimitEntries  LimitKind = "--max-image-entries"
	LimitDepth    LimitKind = "--max-image-depth"
)

// LimitError is a conversion stopped by one of Limits. It matches
// ErrTooLarge with errors.Is.
type LimitError struct {
	// Kind is the limit exceeded; Max its value.
	Kind LimitKind
	Max  int64
	// Layer names the layer ("layer sha256:… of busybox"; "" for a plain
	// tarball) and Entry the tar entry ("" when the stream went over
	// between entries: After then names the last entry read).
	Layer, Entry, After string
	// Declared is the entry's declared size (LimitUnpacked), Total the
	// bytes, entries or depth reached.
	Declared, Total int64
	// Stream is set when the decompressed tar stream, rather than the
	// entries' declared sizes, went over LimitUnpacked.
	Stream bool
}

func (e *LimitError) Error() string {
	var b strings.Builder
	b.WriteString("image exceeds ")
	b.WriteString(string(e.Kind))
	b.WriteString(" ")
	if e.Kind == LimitUnpacked {
		b.WriteString(formatBytes(e.Max))
	} else {
		b.WriteString(strconv.FormatInt(e.Max, 10))
	}
	if e.Layer != "" {
		b.WriteString(" at " + e.Layer)
	}
	switch {
	case e.Entry != "":
		fmt.Fprintf(&b, ", tar entry %q", e.Entry)
	case e.After != "":
		fmt.Fprintf(&b, ", after tar entry %q", e.After)
	}
	switch {
	case e.Kind == LimitUnpacked && e.Stream:
		fmt.Fprintf(&b, ": %s of decompressed tar stream", formatBytes(e.Total))
	case e.Kind == LimitUnpacked:
		fmt.Fprintf(&b, ": declared %s, %s in all", formatBytes(e.Declared), formatBytes(e.Total))
	case e.Kind == LimitEntries:
		fmt.Fprintf(&b, ": entry number %d", e.Total)
	case e.Kind == LimitDepth:
		fmt.Fprintf(&b, ": %d path components", e.Total)
	}
	return b.String()
}

// Is makes a LimitError an ErrTooLarge.
func (e *LimitError) Is(target error) bool { return target == ErrTooLarge }

// formatBytes writes n the way the size flags take it: "3GiB", "64KiB",
// "1.5GiB", "1000 bytes".
func formatBytes(n int64) string {
	units := []string{"EiB", "PiB", "TiB", "GiB", "MiB", "KiB"}
	for i, u := range units {
		size := int64(1) << (10 * (len(units) - i))
		if n >= size {
			if n%size == 0 {
				return strconv.FormatInt(n/size, 10) + u
			}
			return strconv.FormatFloat(float64(n)/float64(size), 'f', 1, 64) + u
		}
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// streamSlack is how far, per entry, a decompressed tar stream may go
// beyond the entries' declared sizes: headers (512 bytes, PAX records,
// GNU long names) and padding. Real entries need 1–3 KiB; a stream that
// needs more is a bomb made of headers (an endless chain of PAX headers
// yields no entry at all) or of junk after the end of the archive.
const streamSlack = 16 << 10

// budget counts what the layers of one conversion cost against its
// Limits. It is shared by the layers' walks.
type budget struct {
	lim Limits
	// layer names the layer being read; depthBase is the depth of its
	// prefix.
	layer     string
	depthBase int
	// paused stops counting: a layer read a second time (see
	// flattener.reread) was counted the first time.
	paused bool

	entries  int64
	unpacked int64 // declared sizes
	stream   int64 // decompressed tar bytes
	last     string
}

// entry counts the tar entry hdr.
func (b *budget) entry(hdr *tar.Header) error {
	if b == nil || b.paused {
		return nil
	}
	b.entries++
	if b.lim.MaxEntries > 0 && b.entries > b.lim.MaxEntries {
		return &LimitError{Kind: LimitEntries, Max: b.lim.MaxEntries, Layer: b.layer, Entry: hdr.Name, Total: b.entries}
	}
	if b.lim.MaxDepth > 0 {
		depth := b.depthBase
		for c := range strings.SplitSeq(hdr.Name, "/") {
			if c != "" && c != "." {
				depth++
			}
		}
		if depth > b.lim.MaxDepth {
			return &LimitError{Kind: LimitDepth, Max: int64(b.lim.MaxDepth), Layer: b.layer, Entry: hdr.Name, Total: int64(depth)}
		}
	}
	if hasData(hdr.Typeflag) && hdr.Size > 0 {
		// Declared sizes are 64-bit: add without overflowing.
		if b.lim.MaxUnpacked > 0 && hdr.Size > b.lim.MaxUnpacked-b.unpacked {
			return &LimitError{Kind: LimitUnpacked, Max: b.lim.MaxUnpacked, Layer: b.layer, Entry: hdr.Name,
				Declared: hdr.Size, Total: satAdd(b.unpacked, hdr.Size)}
		}
		b.unpacked = satAdd(b.unpacked, hdr.Size)
	}
	b.last = hdr.Name
	return nil
}

// read counts n bytes of decompressed tar stream.
func (b *budget) read(n int) error {
	if b == nil || b.paused || b.lim.MaxUnpacked == 0 {
		return nil
	}
	b.stream += int64(n)
	allowed := satAdd(b.lim.MaxUnpacked, satMul(b.entries+1, streamSlack))
	if b.stream > allowed {
		return &LimitError{Kind: LimitUnpacked, Max: b.lim.MaxUnpacked, Layer: b.layer, After: b.last, Total: b.stream, Stream: true}
	}
	return nil
}

// hasData reports whether archive/tar reads data for an entry of type
// typ: every type but the header-only ones.
func hasData(typ byte) bool {
	switch typ {
	case tar.TypeLink, tar.TypeSymlink, tar.TypeChar, tar.TypeBlock, tar.TypeDir, tar.TypeFifo:
		return false
	}
	return true
}

func satAdd(a, b int64) int64 {
	if a > 0 && b > (1<<63-1)-a {
		return 1<<63 - 1
	}
	return a + b
}

func satMul(a, b int64) int64 {
	if a != 0 && b > (1<<63-1)/a {
		return 1<<63 - 1
	}
	return a * b
}

// budgetReader counts a decompressed tar stream against a budget.
type budgetReader struct {
	r io.Reader
	b *budget
}

func (r budgetReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if berr := r.b.read(n); berr != nil {
		return n, berr
	}
	return n, err
}

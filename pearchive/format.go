package pearchive

import (
	"fmt"
	"math"
	"strings"
)

// ContentType is the HTTP media type of a framed request or response body
// carrying a v1 archive (see [SplitFramed]).
const ContentType = "application/x.pe.archivev1"

// Message tags.
const (
	tagFile byte = 0x01
	tagDir  byte = 0x02
	tagPop  byte = 0x03
)

const (
	// maxNameLen is the longest name, in bytes.
	maxNameLen = 255
	// maxFileSize is the largest file content a u32 size can describe.
	maxFileSize = 1<<32 - 1
)

// Defaults of [Limits] and [PackOptions].
const (
	defaultMaxDepth = 32
	defaultMaxFiles = 10000
	defaultMaxBytes = 64 << 20
)

// FormatError reports malformed archive data: what was wrong and where.
type FormatError struct {
	// Offset is the byte offset in the archive of the offending message, or
	// of the point where the data ran out for a truncated archive.
	Offset int64
	// Msg describes the problem, naming the entry's path when known.
	Msg string
}

// Error implements the error interface.
func (e *FormatError) Error() string {
	return fmt.Sprintf("pearchive: malformed archive at offset %d: %s", e.Offset, e.Msg)
}

// Limits bounds what a [Reader] (and so [UnpackDir] and [ReadAll]) accepts.
// A zero field means its default (see [DefaultLimits]); a negative field
// means no limit.
type Limits struct {
	// MaxDepth is the deepest directory nesting: an entry inside MaxDepth
	// directories is accepted, a directory at depth MaxDepth+1 is not.
	MaxDepth int
	// MaxFiles is the largest number of entries, files and directories
	// together.
	MaxFiles int
	// MaxBytes is the largest total size of all file contents.
	MaxBytes int64
}

// DefaultLimits returns the limits used for zero fields of [Limits]: depth
// 32, 10000 entries, 64 MiB of content.
func DefaultLimits() Limits {
	return Limits{MaxDepth: defaultMaxDepth, MaxFiles: defaultMaxFiles, MaxBytes: defaultMaxBytes}
}

// resolve replaces zero fields by their defaults and negative ones by "no
// limit" (the largest value).
func (l Limits) resolve() Limits {
	d := DefaultLimits()
	l.MaxDepth = pick(l.MaxDepth, d.MaxDepth)
	l.MaxFiles = pick(l.MaxFiles, d.MaxFiles)
	l.MaxBytes = pick64(l.MaxBytes, d.MaxBytes)
	return l
}

// pick returns def for v == 0, no limit (math.MaxInt) for v < 0, else v.
func pick(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 0:
		return math.MaxInt
	}
	return v
}

// pick64 is pick for int64.
func pick64(v, def int64) int64 {
	switch {
	case v == 0:
		return def
	case v < 0:
		return math.MaxInt64
	}
	return v
}

// checkName returns why name is not a valid archive name, or "".
func checkName(name string) string {
	switch {
	case name == "":
		return "empty name"
	case len(name) > maxNameLen:
		return fmt.Sprintf("name of %d bytes is longer than %d bytes", len(name), maxNameLen)
	case name == "." || name == "..":
		return fmt.Sprintf("name %q is not allowed", name)
	case strings.IndexByte(name, '/') >= 0:
		return fmt.Sprintf("name %q contains '/'", name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Sprintf("name %q contains NUL", name)
	}
	return ""
}

// joinPath joins a directory path ("" at the top) and a name.
func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// parentPath returns the directory part of a slash-separated path, "" at the
// top.
func parentPath(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

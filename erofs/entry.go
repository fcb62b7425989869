package erofs

import (
	"errors"
	"fmt"
	"io/fs"
	"time"
)

// Entry describes one file system object given to Writer.Add.
type Entry struct {
	// Path is the slash-separated path inside the image. Leading "/" and
	// "./" are ignored; "", "." and "/" name the root directory. ".." and
	// empty components are errors.
	Path string
	// Mode holds the file type bits (fs.ModeDir, fs.ModeSymlink,
	// fs.ModeDevice, fs.ModeCharDevice, fs.ModeNamedPipe, fs.ModeSocket; none
	// for a regular file) and the permission, setuid, setgid and sticky bits.
	Mode fs.FileMode
	// UID and GID own the file.
	UID, GID uint32
	// ModTime is the modification time, kept to the nanosecond.
	ModTime time.Time
	// Size is the length of a regular file's data; Add reads exactly this
	// many bytes from its reader.
	Size int64
	// Linkname is a symbolic link's target.
	Linkname string
	// DevMajor and DevMinor identify a character or block device.
	DevMajor, DevMinor uint32
	// Xattrs are the extended attributes, full names such as "user.x",
	// "trusted.overlay.opaque" or "security.capability".
	Xattrs map[string][]byte
}

// Stat is what FileInfo.Sys returns for files of an image read with Open.
type Stat struct {
	Nid       uint64 // inode number within the image (its metadata slot)
	Ino       uint32 // the inode's stored 32-bit inode number
	Mode      uint32 // raw i_mode: type bits and permissions
	UID, GID  uint32
	Nlink     uint32
	Size      int64
	Mtime     int64 // seconds since the epoch
	MtimeNsec uint32
	DevMajor  uint32
	DevMinor  uint32
	Layout    int  // data layout (0 flat, 1 compressed full, 2 inline, 3 compressed compact, 4 chunk)
	Extended  bool // 64-byte inode
	Xattrs    map[string][]byte
}

// EntryError reports a problem with one entry given to the Writer.
type EntryError struct {
	Path string
	Err  error
}

func (e *EntryError) Error() string { return fmt.Sprintf("%q: %v", e.Path, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// Errors callers of the Writer may test for with errors.Is.
var (
	// ErrInvalidPath is returned for paths with "..", empty components or
	// names longer than MaxNameLen bytes.
	ErrInvalidPath = errors.New("invalid path")
	// ErrTypeConflict is returned when a path is added as a directory and as
	// a non-directory.
	ErrTypeConflict = errors.New("path is both a directory and a non-directory")
	// ErrNotDir is returned when a path's parent is not a directory.
	ErrNotDir = errors.New("parent is not a directory")
	// ErrNotExist is returned when a hard link names a target that was not
	// added.
	ErrNotExist = errors.New("no such file")
	// ErrShortData is returned when a regular file's reader ends before
	// Entry.Size bytes.
	ErrShortData = errors.New("file data shorter than its size")
	// ErrUnsupportedXattr is returned for an extended attribute whose name
	// has no EROFS prefix, or that is too long.
	ErrUnsupportedXattr = errors.New("unsupported extended attribute")
	// ErrCorrupt is returned by the reader for images that break the format.
	ErrCorrupt = errors.New("corrupt EROFS image")
)

// unixMode converts an fs.FileMode to the i_mode bits EROFS stores.
func unixMode(m fs.FileMode) uint16 {
	mode := uint16(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= sISUID
	}
	if m&fs.ModeSetgid != 0 {
		mode |= sISGID
	}
	if m&fs.ModeSticky != 0 {
		mode |= sISVTX
	}
	switch {
	case m.IsDir():
		mode |= sIFDIR
	case m&fs.ModeSymlink != 0:
		mode |= sIFLNK
	case m&fs.ModeCharDevice != 0:
		mode |= sIFCHR
	case m&fs.ModeDevice != 0:
		mode |= sIFBLK
	case m&fs.ModeNamedPipe != 0:
		mode |= sIFIFO
	case m&fs.ModeSocket != 0:
		mode |= sIFSOCK
	default:
		mode |= sIFREG
	}
	return mode
}

// fileMode converts EROFS i_mode bits to an fs.FileMode.
func fileMode(mode uint16) fs.FileMode {
	m := fs.FileMode(mode & 0o777)
	if mode&sISUID != 0 {
		m |= fs.ModeSetuid
	}
	if mode&sISGID != 0 {
		m |= fs.ModeSetgid
	}
	if mode&sISVTX != 0 {
		m |= fs.ModeSticky
	}
	switch mode & sIFMT {
	case sIFDIR:
		m |= fs.ModeDir
	case sIFLNK:
		m |= fs.ModeSymlink
	case sIFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case sIFBLK:
		m |= fs.ModeDevice
	case sIFIFO:
		m |= fs.ModeNamedPipe
	case sIFSOCK:
		m |= fs.ModeSocket
	case sIFREG:
	default:
		m |= fs.ModeIrregular
	}
	return m
}

// dirFileType is the dirent file_type for i_mode bits.
func dirFileType(mode uint16) uint8 {
	switch mode & sIFMT {
	case sIFREG:
		return ftRegular
	case sIFDIR:
		return ftDir
	case sIFCHR:
		return ftChrdev
	case sIFBLK:
		return ftBlkdev
	case sIFIFO:
		return ftFIFO
	case sIFSOCK:
		return ftSocket
	case sIFLNK:
		return ftSymlink
	}
	return ftUnknown
}

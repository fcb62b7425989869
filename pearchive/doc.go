// Package pearchive reads and writes the Program Explorer v1 file archive
// ("pearchive"), the format the original Program Explorer uses to carry a
// tree of input files from the browser into the VM and the output files back
// (HTTP content type [ContentType]). pe's archives are byte-compatible with
// the original's.
//
// # Format
//
// An archive has no header, magic number, version, count or checksum. It is a
// flat sequence of messages that runs to the end of the data:
//
//	File  0x01, name, 0x00, u32 little-endian size, size bytes of content
//	Dir   0x02, name, 0x00      following messages are inside this directory
//	Pop   0x03                  leave the current directory
//
// A name is one path component: 1 to 255 raw bytes (not necessarily UTF-8),
// without NUL or '/', and neither "." nor "..". An empty directory is
// "Dir name Pop". The archive is complete only when every Dir has been popped
// at the end of the data. Nothing else is stored: no modes, owners, times,
// links or special files, and a file holds at most 4 GiB − 1 bytes. One file
// "file1" holding "data1" is
//
//	01 66 69 6c 65 31 00 05 00 00 00 64 61 74 61 31
//
// The format is canonical: a given sequence of entries has exactly one
// encoding, so decoding an archive and encoding the entries again gives the
// same bytes.
//
// # API
//
// [Writer] and [Reader] stream messages, in the manner of archive/tar.
// [PackDir] and [UnpackDir] convert between an archive and a directory on
// disk; [PackFiles] and [ReadAll] between an archive and in-memory files.
// [SplitFramed] and [WriteFramed] handle the "u32 LE JSON length ‖ JSON ‖
// archive" framing of the HTTP API's request and response bodies.
//
// # Differences from the original
//
// The original's unpackers trust their input more than pe does:
//
//   - A duplicate name within a directory is refused (a [*FormatError]); the
//     original overwrote the first file in place.
//   - Names are validated: empty names, names longer than 255 bytes, names
//     containing '/' and the names "." and ".." are refused. The original
//     relied on a chroot in a user namespace to contain such names.
//   - Extraction ([UnpackDir]) goes through [os.Root], so no entry can reach
//     outside the target directory, through ".." or through a symbolic link
//     already present in it; it never overwrites an existing file (O_EXCL).
//   - Unknown message tags, truncated messages and directories left open at
//     the end are errors (the original's TypeScript reader stopped silently).
//   - The reader enforces [Limits] on nesting depth, entry count and total
//     content size.
//   - Files are created with mode 0644 and directories with 0755 (before the
//     umask) rather than the original's 0611 and 0744.
//   - [PackDir] emits entries sorted by name, so its output is deterministic;
//     the original used the directory's on-disk order.
package pearchive

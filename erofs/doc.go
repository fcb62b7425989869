// Package erofs writes and reads EROFS (Enhanced Read-Only File System)
// images, the read-only root filesystem format pe hands to its micro-VMs.
//
// The Writer is fed entries one at a time, in any order, streaming file data
// straight to the output while keeping only metadata in memory; Close lays
// out directories, inodes and extended attributes after the data and writes
// the superblock. The FS type reads an image back as an io/fs file system.
//
// The on-disk layout follows the Linux kernel's fs/erofs/erofs_fs.h. The
// writer only emits features that Linux 6.1 (the Debian guest kernel) reads:
// compact and extended inodes, flat and tail-packed (inline) data, inline and
// shared extended attributes with the built-in name prefixes, a superblock
// checksum, and lz4-compressed files (WriterOptions.Compression) with compact
// or full indexes, zero padding and big physical clusters. The reader also
// reads chunked files and mkfs.erofs's tail-packed compressed files.
//
// The package knows nothing about OCI images or tar files.
package erofs

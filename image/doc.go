// Package image turns file trees into the read-only EROFS images pe boots its
// micro-VMs with.
//
// Sources are streamed straight into an erofs.Writer, one entry at a time,
// without unpacking anything onto the host disk:
//
//   - AddDir walks a directory on the host (lstat, extended attributes,
//     symlinks, devices, hard links);
//   - AddTar reads a tar stream, plain or compressed with gzip, zstd or xz,
//     and refuses names that would escape the image root;
//   - BuildEROFS builds an image file from either kind of source atomically:
//     the output appears complete or not at all.
package image

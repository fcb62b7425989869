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
//
// Container images come through a Cache, pe's content-addressed image
// cache:
//
//   - ParseReference reads what users type: registry references with
//     docker's defaults, oci:PATH[:TAG|@DIGEST] layouts and
//     docker-archive:PATH[:TAG] tarballs;
//   - Cache.Get and Cache.Pull resolve a reference for a platform (through
//     go-containerregistry for registries: docker credentials, retries,
//     digest and size checks), fetch the layer blobs the cache lacks, and
//     flatten the layers with Flatten into one EROFS image per manifest
//     digest, once, even when several processes ask at the same time;
//   - Cache.Import and Cache.BuildImportEROFS lay a tarball over a base
//     image's layers (Compiler Explorer's compiler builds);
//   - Cache.List, Cache.Remove and Cache.Prune manage what is cached;
//     Cache.Acquire is Get with a Lease that keeps the image from being
//     removed while a run uses it, whichever process prunes;
//   - Limits bound what a conversion may unpack (bytes, entries, path
//     depth), checked while the layers stream, and stop it with a
//     LimitError.
package image

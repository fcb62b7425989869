// Package fusedisk shows lazily read images to a VMM as regular files on a
// read-only FUSE mount: the disk path for cloud-hypervisor, which has no
// NBD client (issue 16; QEMU reads the same store over NBD, see
// blockstore/nbd). Each file is backed by an io.ReaderAt and a size, in
// practice a *blockstore.Image, so a read of the file by the VMM fetches
// the chunks it touches through the chunk store.
//
// One FS per process (see Mount) holds any number of files (one per run); Add and
// Remove change them while the mount is in use, and a file removed while a
// VMM has it open stays readable through that descriptor.
//
// Choices, and why:
//   - Mounting: as root, with mount(2) directly (no fusermount binary
//     needed); otherwise through fusermount3 (or fusermount), with an
//     error wrapping ErrUnavailable when neither is installed or
//     /dev/fuse is missing, so the caller can fall back to a local copy.
//   - Reads of up to 1 MiB per request (max_pages 256), and
//     FOPEN_KEEP_CACHE: the content never changes, so the host page cache
//     stays valid across opens and page-cache hits never reach pe.
//   - Read-only: the mount is MS_RDONLY, files are 0444 and default
//     permissions are enforced by the kernel; opening for writing,
//     truncating or a shared writable mmap fails with EROFS or EACCES.
//   - A read that fails (a chunk that cannot be fetched or verified)
//     returns EIO to the reader; a read whose caller is interrupted, or
//     that is still running when the mount closes, ends at once (the
//     reader's ReadAtContext, when it has one, gets a cancelled context;
//     a plain ReadAt is abandoned), so a VMM never hangs on pe.
//   - Close unmounts; when files are still open (a VMM that has not
//     exited, a read that hangs) it waits up to Options.CloseTimeout and
//     then aborts the connection (umount with MNT_FORCE as root, which the
//     FUSE driver turns into an abort; /sys/fs/fuse/connections/N/abort
//     when fusectl is mounted) and detaches the mount: readers get
//     ENOTCONN, and no mount outlives Close.
//   - Users other than the mounter (pe's confined QEMU runs as another
//     uid) cannot even stat a FUSE file unless the mount has allow_other
//     (Options.AllowOther); the files are still 0444 and read-only, and
//     the caller should mount in a directory only it can search.
package fusedisk

// Package nbd is a read-only NBD (Network Block Device) server: it offers
// named exports, each an io.ReaderAt of a given size, to clients such as
// QEMU's built-in NBD client (-drive file=nbd+unix:///NAME?socket=PATH),
// qemu-img, qemu-io and libnbd's nbdinfo and nbdcopy, over a Unix socket.
// It is how a micro-VM reads a disk image pe fetches lazily: the chunk store
// behind an export fetches what the guest touches.
//
// The subset of the protocol (doc/proto.md of
// github.com/NetworkBlockDevice/nbd) written here from its text:
//   - the fixed newstyle handshake, with NBD_OPT_EXPORT_NAME, NBD_OPT_GO and
//     NBD_OPT_INFO (answered with the size and flags, block sizes, and the
//     name and description when asked), NBD_OPT_LIST and NBD_OPT_ABORT;
//     every other option, structured replies and TLS included, is refused
//     with NBD_REP_ERR_UNSUP, and clients fall back to simple replies;
//   - the transmission phase with simple replies: NBD_CMD_READ,
//     NBD_CMD_FLUSH (nothing to flush) and NBD_CMD_DISC; writes, trims and
//     write-zeroes get EPERM, anything else EINVAL. Exports are flagged
//     read-only, flush-capable and safe for several connections at once.
//
// Reads of one connection run concurrently (QEMU keeps up to 16 in flight)
// and their replies are written whole, one at a time. Everything a client
// controls is bounded: the handshake's time, options' length and number,
// export names, a read's length (32 MiB by default, announced as the
// maximum payload), and the requests and bytes in flight per connection.
// A client that breaks the protocol is disconnected and logged at Warn
// with the reason; a failed ReadAt becomes an EIO reply, logged at Error.
// Shutdown lets started requests finish; Close and RemoveExport end
// connections at once. Stats counts connections, reads, bytes and errors.
package nbd

// Package guest holds everything pe runs inside the micro-VM and the contract
// both sides of the VM boundary share.
//
// The host↔guest protocol is one raw file, the I/O file, attached to the VM as
// a virtio-blk disk (/dev/vdb by default). The host writes a versioned header,
// the [Request], the program's stdin and a tar of the input directory with
// [WriteIOFile]; the guest init opens the disk with [OpenIOFile], runs the
// program and writes the [Result], stdout, stderr and a tar of the output
// directory into areas the host reserved for them, then a commit record last.
// The host reads it back with [ReadResult], treating every byte the guest wrote
// as hostile: lengths are checked against the file and the [Limits], and
// [Response.ExtractOutputs] never writes outside its directory.
//
// File layout, version 1 (all integers little endian, every area starts on a
// 512-byte boundary, areas appear in this order and never overlap):
//
//	block 0   header, written by the host only
//	          0   "PEIO"
//	          4   u32 version (1)
//	          8   u32 header size (512)
//	          12  u32 area count (7)
//	          16  7 × {u64 offset, u64 capacity, u64 length}:
//	              request (JSON), stdin, inputs (tar),
//	              result, stdout, stderr, outputs (tar)
//	          508 u32 CRC-32C of bytes 0..507
//	request   JSON [Request], length in the header
//	stdin     raw bytes, length in the header
//	inputs    tar of the input directory, length in the header
//	result    block 0: commit record, written last by the guest
//	            0   "PERS"
//	            4   u32 version (1)
//	            8   u64 result JSON length
//	            16  u64 stdout length
//	            24  u64 stderr length
//	            32  u64 outputs length
//	            508 u32 CRC-32C of bytes 0..507
//	          then the JSON [Result]
//	stdout    program output, capped at the request's MaxOutput
//	stderr    idem
//	outputs   tar of /run/pe/output, capped at MaxOutput
//
// The host leaves the guest→host areas zeroed (the file is sparse), so a
// result record of zeros means the guest never finished: [ErrNoResult].
//
// A VM restored from a snapshot (see [CmdlineSnapshot]) reads its I/O
// disk for the first time once woken; the host gives every restored VM a
// fresh I/O file of the size the snapshot's guest saw.
//
// The guest init itself lives in package guest/guestinit and the command
// guest/cmd/pe-init; package guest/initramfs packs it with the kernel modules it
// needs.
package guest

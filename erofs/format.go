package erofs

import (
	"encoding/binary"
	"hash/crc32"
)

// On-disk constants from Linux fs/erofs/erofs_fs.h.
const (
	superOffset = 1024       // byte offset of the superblock in block 0
	superMagic  = 0xE0F5E1E2 // erofs_super_block.magic
	superSize   = 128        // size of the core superblock

	featureCompatSBChecksum = 0x1

	// Incompatible features this package knows. The reader refuses images
	// with any bit outside featureIncompatKnown.
	featureIncompatZeroPadding  = 0x01
	featureIncompatBigPcluster  = 0x02
	featureIncompatChunkedFile  = 0x04
	featureIncompatDeviceTable  = 0x08
	featureIncompatZTailpacking = 0x10
	featureIncompatFragments    = 0x20
	featureIncompatXattrPrefix  = 0x40
	featureIncompatKnown        = featureIncompatZeroPadding | featureIncompatBigPcluster
	// featureIncompatComprCfgs shares its bit with big pclusters: images
	// with it keep per-algorithm configuration records after the superblock
	// and say in u1 which algorithms they use.
	featureIncompatComprCfgs = featureIncompatBigPcluster

	inodeSlotSize     = 32 // nid granularity
	compactInodeSize  = 32
	extendedInodeSize = 64
	dirEntrySize      = 12
	xattrHeaderSize   = 12 // erofs_xattr_ibody_header without the shared id array
	xattrEntryHdrSize = 4  // erofs_xattr_entry without name and value

	// MaxNameLen is the longest file name (one path component) EROFS stores.
	MaxNameLen = 255
)

// Inode data layouts (i_format bits 1..3).
const (
	layoutFlatPlain         = 0
	layoutCompressedFull    = 1
	layoutFlatInline        = 2
	layoutCompressedCompact = 3
	layoutChunkBased        = 4
	formatExtendedBit       = 0x1
	formatLayoutShift       = 1
	formatLayoutMask        = 0x7
	formatKnownBits         = 0xF
)

// Compressed inodes (Linux fs/erofs/erofs_fs.h and zmap.c).
const (
	zMapHeaderSize = 8 // struct z_erofs_map_header
	zFullIndexSize = 8 // struct z_erofs_lcluster_index

	// h_advise bits.
	zAdviseCompacted2B    = 0x0001
	zAdviseBigPcluster1   = 0x0002
	zAdviseBigPcluster2   = 0x0004
	zAdviseInlinePcluster = 0x0008
	zAdviseInterlaced     = 0x0010
	zAdviseFragment       = 0x0020

	// Logical cluster (lcluster) index types, the low two bits of
	// di_advise or of a compacted entry.
	zTypePlain   = 0 // uncompressed pcluster of one lcluster
	zTypeHead1   = 1 // first lcluster of an extent, algorithm h_algorithmtype & 15
	zTypeNonhead = 2 // lcluster inside an extent started earlier
	zTypeHead2   = 3 // first lcluster, algorithm h_algorithmtype >> 4

	// zD0Cblkcnt in delta[0] of the first NONHEAD lcluster of a big
	// pcluster says the rest of the field is the pcluster's block count.
	zD0Cblkcnt = 1 << 11
	// zFragmentBit in h_clusterbits: the whole file is in the packed inode.
	zFragmentBit = 7

	zAlgLZ4 = 0 // Z_EROFS_COMPRESSION_LZ4

	// zPclusterMaxSize is Z_EROFS_PCLUSTER_MAX_SIZE, the largest encoded
	// pcluster Linux reads; zPclusterMaxDSize is Z_EROFS_PCLUSTER_MAX_DSIZE,
	// the largest decoded extent current kernels accept.
	zPclusterMaxSize  = 1 << 20
	zPclusterMaxDSize = 12 << 20

	// lz4MaxDistance is the LZ4 format's largest match offset, what the
	// superblock's lz4_max_distance and the lz4 config record announce.
	lz4MaxDistance = 65535
	// lz4CfgsSize is sizeof(struct z_erofs_lz4_cfgs): max_distance,
	// max_pclusterblks and 10 reserved bytes.
	lz4CfgsSize = 14
)

// Directory entry file types (EROFS_FT_*).
const (
	ftUnknown = 0
	ftRegular = 1
	ftDir     = 2
	ftChrdev  = 3
	ftBlkdev  = 4
	ftFIFO    = 5
	ftSocket  = 6
	ftSymlink = 7
)

// Unix mode type bits (S_IFMT and friends), as stored in i_mode.
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
	sISUID  = 0o4000
	sISGID  = 0o2000
	sISVTX  = 0o1000
)

// Built-in extended attribute name prefixes (EROFS_XATTR_INDEX_*).
var xattrPrefixes = []struct {
	index  uint8
	prefix string
}{
	{1, "user."},
	{2, "system.posix_acl_access"},
	{3, "system.posix_acl_default"},
	{4, "trusted."},
	{5, "lustre."},
	{6, "security."},
}

// superBlock is the 128-byte core of erofs_super_block.
type superBlock struct {
	Magic           uint32
	Checksum        uint32
	FeatureCompat   uint32
	BlkSzBits       uint8
	SBExtSlots      uint8
	RootNid         uint16
	Inos            uint64
	BuildTime       uint64
	BuildTimeNsec   uint32
	Blocks          uint32
	MetaBlkAddr     uint32
	XattrBlkAddr    uint32
	UUID            [16]byte
	VolumeName      [16]byte
	FeatureIncompat uint32
	U1              uint16 // available_compr_algs or lz4_max_distance
	ExtraDevices    uint16
	DevtSlotOff     uint16
	DirBlkBits      uint8
	XattrPrefixCnt  uint8
	XattrPrefixOff  uint32
	PackedNid       uint64
	XattrFilterRes  uint8
	Reserved2       [23]byte
}

func (sb *superBlock) marshal() []byte {
	b := make([]byte, superSize)
	le := binary.LittleEndian
	le.PutUint32(b[0:], sb.Magic)
	le.PutUint32(b[4:], sb.Checksum)
	le.PutUint32(b[8:], sb.FeatureCompat)
	b[12] = sb.BlkSzBits
	b[13] = sb.SBExtSlots
	le.PutUint16(b[14:], sb.RootNid)
	le.PutUint64(b[16:], sb.Inos)
	le.PutUint64(b[24:], sb.BuildTime)
	le.PutUint32(b[32:], sb.BuildTimeNsec)
	le.PutUint32(b[36:], sb.Blocks)
	le.PutUint32(b[40:], sb.MetaBlkAddr)
	le.PutUint32(b[44:], sb.XattrBlkAddr)
	copy(b[48:64], sb.UUID[:])
	copy(b[64:80], sb.VolumeName[:])
	le.PutUint32(b[80:], sb.FeatureIncompat)
	le.PutUint16(b[84:], sb.U1)
	le.PutUint16(b[86:], sb.ExtraDevices)
	le.PutUint16(b[88:], sb.DevtSlotOff)
	b[90] = sb.DirBlkBits
	b[91] = sb.XattrPrefixCnt
	le.PutUint32(b[92:], sb.XattrPrefixOff)
	le.PutUint64(b[96:], sb.PackedNid)
	b[104] = sb.XattrFilterRes
	copy(b[105:128], sb.Reserved2[:])
	return b
}

func unmarshalSuperBlock(b []byte) superBlock {
	le := binary.LittleEndian
	var sb superBlock
	sb.Magic = le.Uint32(b[0:])
	sb.Checksum = le.Uint32(b[4:])
	sb.FeatureCompat = le.Uint32(b[8:])
	sb.BlkSzBits = b[12]
	sb.SBExtSlots = b[13]
	sb.RootNid = le.Uint16(b[14:])
	sb.Inos = le.Uint64(b[16:])
	sb.BuildTime = le.Uint64(b[24:])
	sb.BuildTimeNsec = le.Uint32(b[32:])
	sb.Blocks = le.Uint32(b[36:])
	sb.MetaBlkAddr = le.Uint32(b[40:])
	sb.XattrBlkAddr = le.Uint32(b[44:])
	copy(sb.UUID[:], b[48:64])
	copy(sb.VolumeName[:], b[64:80])
	sb.FeatureIncompat = le.Uint32(b[80:])
	sb.U1 = le.Uint16(b[84:])
	sb.ExtraDevices = le.Uint16(b[86:])
	sb.DevtSlotOff = le.Uint16(b[88:])
	sb.DirBlkBits = b[90]
	sb.XattrPrefixCnt = b[91]
	sb.XattrPrefixOff = le.Uint32(b[92:])
	sb.PackedNid = le.Uint64(b[96:])
	sb.XattrFilterRes = b[104]
	copy(sb.Reserved2[:], b[105:128])
	return sb
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// superBlockChecksum computes the value the kernel expects in
// erofs_super_block.checksum: crc32c seeded with ~0 and not inverted at the
// end, over the bytes from the superblock on to the end of its block (or one
// block's worth for blocks of 1 KiB and less), with the checksum field
// zeroed. head holds the image from offset 0.
func superBlockChecksum(head []byte, blockSize int64) uint32 {
	n := blockSize
	if n > superOffset {
		n -= superOffset
	}
	buf := make([]byte, n)
	copy(buf, head[superOffset:])
	binary.LittleEndian.PutUint32(buf[4:], 0)
	// crc32.Update inverts on entry and exit; the kernel's crc32c() does
	// neither, so undo the final inversion.
	return ^crc32.Update(0, castagnoli, buf)
}

// diskInode is the union of the compact and extended on-disk inodes.
type diskInode struct {
	Format     uint16
	XattrCount uint16
	Mode       uint16
	Nlink      uint32
	Size       uint64
	U          uint32 // raw_blkaddr, rdev or compressed_blocks
	Ino        uint32
	UID        uint32
	GID        uint32
	Mtime      uint64
	MtimeNsec  uint32
}

func (di *diskInode) extended() bool { return di.Format&formatExtendedBit != 0 }
func (di *diskInode) layout() int    { return int(di.Format>>formatLayoutShift) & formatLayoutMask }
func (di *diskInode) size() int {
	if di.extended() {
		return extendedInodeSize
	}
	return compactInodeSize
}

// marshal encodes the inode into b, which must be di.size() bytes long.
func (di *diskInode) marshal(b []byte) {
	le := binary.LittleEndian
	le.PutUint16(b[0:], di.Format)
	le.PutUint16(b[2:], di.XattrCount)
	le.PutUint16(b[4:], di.Mode)
	if di.extended() {
		le.PutUint16(b[6:], 0)
		le.PutUint64(b[8:], di.Size)
		le.PutUint32(b[16:], di.U)
		le.PutUint32(b[20:], di.Ino)
		le.PutUint32(b[24:], di.UID)
		le.PutUint32(b[28:], di.GID)
		le.PutUint64(b[32:], di.Mtime)
		le.PutUint32(b[40:], di.MtimeNsec)
		le.PutUint32(b[44:], di.Nlink)
		clear(b[48:64])
		return
	}
	le.PutUint16(b[6:], uint16(di.Nlink))
	le.PutUint32(b[8:], uint32(di.Size))
	le.PutUint32(b[12:], 0)
	le.PutUint32(b[16:], di.U)
	le.PutUint32(b[20:], di.Ino)
	le.PutUint16(b[24:], uint16(di.UID))
	le.PutUint16(b[26:], uint16(di.GID))
	le.PutUint32(b[28:], 0)
}

// unmarshalInode decodes an inode from b, which must hold at least the
// compact size, and the extended size when the format bit says so. Compact
// inodes take their mtime from the superblock's build time.
func unmarshalInode(b []byte, sb *superBlock) diskInode {
	le := binary.LittleEndian
	var di diskInode
	di.Format = le.Uint16(b[0:])
	di.XattrCount = le.Uint16(b[2:])
	di.Mode = le.Uint16(b[4:])
	if di.extended() {
		di.Size = le.Uint64(b[8:])
		di.U = le.Uint32(b[16:])
		di.Ino = le.Uint32(b[20:])
		di.UID = le.Uint32(b[24:])
		di.GID = le.Uint32(b[28:])
		di.Mtime = le.Uint64(b[32:])
		di.MtimeNsec = le.Uint32(b[40:])
		di.Nlink = le.Uint32(b[44:])
		return di
	}
	di.Nlink = uint32(le.Uint16(b[6:]))
	di.Size = uint64(le.Uint32(b[8:]))
	di.U = le.Uint32(b[16:])
	di.Ino = le.Uint32(b[20:])
	di.UID = uint32(le.Uint16(b[24:]))
	di.GID = uint32(le.Uint16(b[26:]))
	di.Mtime = sb.BuildTime
	di.MtimeNsec = sb.BuildTimeNsec
	return di
}

// xattrIbodySize is the byte size of the inline xattr area for an
// i_xattr_icount value.
func xattrIbodySize(icount uint16) int {
	if icount == 0 {
		return 0
	}
	return xattrHeaderSize + 4*(int(icount)-1)
}

// encodeDev packs a device number as the kernel's new_encode_dev does.
func encodeDev(major, minor uint32) uint32 {
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12
}

// decodeDev is the inverse of encodeDev (new_decode_dev).
func decodeDev(dev uint32) (major, minor uint32) {
	major = (dev & 0xfff00) >> 8
	minor = (dev & 0xff) | ((dev >> 12) & 0xfff00)
	return major, minor
}

func align(n, a int64) int64 { return (n + a - 1) / a * a }

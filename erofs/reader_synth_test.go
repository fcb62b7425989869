package erofs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// readerSynth assembles an EROFS image by hand, for what mkfs.erofs 1.5
// cannot make (block sizes other than 4096, 8-byte chunk indexes, long
// xattr prefixes, 255-byte names) and for precise corruption.
type readerSynth struct {
	bits    uint8
	bs      int
	metaBlk int
	img     []byte
}

func newReaderSynth(bits uint8, blocks int) *readerSynth {
	bs := 1 << bits
	return &readerSynth{
		bits:    bits,
		bs:      bs,
		metaBlk: (superOffset + superSize + bs - 1) / bs,
		img:     make([]byte, blocks*bs),
	}
}

// nid is the nid of an inode at byte off of meta block k.
func (s *readerSynth) nid(k, off int) uint64 { return uint64((k*s.bs + off) / inodeSlotSize) }

// inodePos is the image offset of inode nid.
func (s *readerSynth) inodePos(nid uint64) int { return s.metaBlk*s.bs + int(nid)*inodeSlotSize }

// putInode writes an inode followed by its xattr area and tail bytes (inline
// data or a chunk array, aligned by the caller).
func (s *readerSynth) putInode(nid uint64, di diskInode, xattrs []byte, tail []byte) {
	if len(xattrs) > 0 {
		di.XattrCount = uint16((len(xattrs)-xattrHeaderSize)/4 + 1)
	}
	pos := s.inodePos(nid)
	di.marshal(s.img[pos : pos+di.size()])
	pos += di.size()
	pos += copy(s.img[pos:], xattrs)
	copy(s.img[pos:], tail)
}

func (s *readerSynth) putBlock(blk int, data []byte) { copy(s.img[blk*s.bs:], data) }

// finish writes the superblock (and its checksum when asked) and returns
// the image.
func (s *readerSynth) finish(sb superBlock) []byte {
	sb.Magic = superMagic
	sb.BlkSzBits = s.bits
	sb.MetaBlkAddr = uint32(s.metaBlk)
	sb.Blocks = uint32(len(s.img) / s.bs)
	copy(s.img[superOffset:], sb.marshal())
	readerFixChecksum(s.img)
	return s.img
}

type readerDent struct {
	name string
	nid  uint64
	ft   uint8
}

// readerDirBlock encodes one directory block: dirents, then names without
// terminators. ents must be sorted.
func readerDirBlock(ents ...readerDent) []byte {
	var d, names []byte
	for _, e := range ents {
		var b [dirEntrySize]byte
		binary.LittleEndian.PutUint64(b[0:], e.nid)
		binary.LittleEndian.PutUint16(b[8:], uint16(len(ents)*dirEntrySize+len(names)))
		b[10] = e.ft
		d = append(d, b[:]...)
		names = append(names, e.name...)
	}
	return append(d, names...)
}

type readerXattr struct {
	index uint8
	name  string
	value string
}

func readerXattrEntry(x readerXattr) []byte {
	b := []byte{byte(len(x.name)), x.index, 0, 0}
	binary.LittleEndian.PutUint16(b[2:], uint16(len(x.value)))
	b = append(append(b, x.name...), x.value...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// readerXattrArea encodes an inline xattr area.
func readerXattrArea(shared []uint32, xs ...readerXattr) []byte {
	b := make([]byte, xattrHeaderSize)
	b[4] = byte(len(shared))
	for _, id := range shared {
		b = binary.LittleEndian.AppendUint32(b, id)
	}
	for _, x := range xs {
		b = append(b, readerXattrEntry(x)...)
	}
	return b
}

// readerPattern is deterministic file content that differs per block.
func readerPattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i/7) + byte(i>>9)
	}
	return b
}

// readerSynthFiles is a synthetic image with what tests need to know
// about it: expected contents, nids, offsets to corrupt.
type readerSynthFiles struct {
	img                 []byte
	chunked, plain      []byte
	nidLP, nidChunked   uint64
	nidPlain, nidRoot   uint64
	lpTailOff, rootSize int
}

// readerSynthImage is a hand-made image with block size 1<<bits:
//
//	/                   extended inode, inline directory
//	/chunked            5 blocks - 7 bytes in 2-block chunks with 8-byte
//	                    indexes: data, hole, data; an xattr area of 20 bytes
//	                    so the index array needs aligning
//	/dev                char device 259:70000
//	/lp                 inline "hello", xattrs through a long prefix, a
//	                    built-in prefix and a shared entry
//	/NNN…N (255 bytes)  empty file
//	/plain              extended inode, flat, 1 block + 10 bytes, uid 70000
//	/sym                symlink to "plain"
//
// The shared xattr and the long prefix table live in blocks of their own.
func readerSynthImage(bits uint8, checksum bool) *readerSynthFiles {
	s := newReaderSynth(bits, 0)
	bs := s.bs
	m := s.metaBlk
	// Meta blocks m..m+5, then the xattr block, prefix block, data.
	xattrBlk, prefixBlk := m+6, m+7
	d0, d2, p0 := m+8, m+10, m+12
	s.img = make([]byte, (m+14)*bs)

	out := &readerSynthFiles{}
	nRoot, nChunked, nLP := s.nid(0, 0), s.nid(1, 0), s.nid(2, 0)
	nPlain, nLong, nSym, nDev := s.nid(3, 0), s.nid(4, 0), s.nid(4, 64), s.nid(5, 0)
	out.nidLP, out.nidChunked, out.nidPlain, out.nidRoot = nLP, nChunked, nPlain, nRoot
	long := strings.Repeat("N", MaxNameLen)

	dir := readerDirBlock(
		readerDent{".", nRoot, ftDir},
		readerDent{"..", nRoot, ftDir},
		readerDent{long, nLong, ftRegular},
		readerDent{"chunked", nChunked, ftRegular},
		readerDent{"dev", nDev, ftChrdev},
		readerDent{"lp", nLP, ftRegular},
		readerDent{"plain", nPlain, ftRegular},
		readerDent{"sym", nSym, ftSymlink},
	)
	out.rootSize = len(dir)
	s.putInode(nRoot, diskInode{
		Format: formatExtendedBit | layoutFlatInline<<formatLayoutShift,
		Mode:   sIFDIR | 0o755, Nlink: 2, Size: uint64(len(dir)),
		Mtime: 1600000000, MtimeNsec: 5,
	}, nil, dir)

	// chunked: chunk format 8-byte indexes, chunk = 2 blocks.
	out.chunked = make([]byte, 5*bs-7)
	copy(out.chunked, readerPattern(1, 2*bs))
	copy(out.chunked[4*bs:], readerPattern(2, bs-7))
	s.putBlock(d0, out.chunked[:2*bs])
	s.putBlock(d2, out.chunked[4*bs:])
	xa := readerXattrArea(nil, readerXattr{1, "a", ""}) // 20 bytes
	var idx []byte
	idx = append(idx, make([]byte, 4)...) // pad 52 -> 56
	for _, blk := range []uint32{uint32(d0), nullAddr, uint32(d2)} {
		idx = binary.LittleEndian.AppendUint16(idx, 0) // advise
		idx = binary.LittleEndian.AppendUint16(idx, 0) // device_id
		idx = binary.LittleEndian.AppendUint32(idx, blk)
	}
	s.putInode(nChunked, diskInode{
		Format: layoutChunkBased << formatLayoutShift,
		Mode:   sIFREG | 0o644, Nlink: 1, Size: uint64(len(out.chunked)),
		U: chunkIndexes | 1,
	}, xa, idx)

	// lp: xattrs and an inline tail.
	xa = readerXattrArea([]uint32{2},
		readerXattr{xattrLongIndex | 0, "opaque", "y"},
		readerXattr{1, "x", "1"},
	)
	out.lpTailOff = compactInodeSize + len(xa)
	s.putInode(nLP, diskInode{
		Format: layoutFlatInline << formatLayoutShift,
		Mode:   sIFREG | 0o600, Nlink: 1, Size: 5, UID: 1, GID: 2,
	}, xa, []byte("hello"))
	// Shared xattr ids count 4-byte units from xattr_blkaddr: id 0 is an
	// 8-byte entry nobody uses, id 2 follows it.
	copy(s.img[xattrBlk*bs:], readerXattrEntry(readerXattr{1, "u", "z"}))
	copy(s.img[xattrBlk*bs+8:], readerXattrEntry(readerXattr{6, "selinux", "ctx"}))
	// The long prefix table: one "trusted." + "overlay." prefix.
	pfx := binary.LittleEndian.AppendUint16(nil, 9)
	pfx = append(append(pfx, 4), "overlay."...)
	s.putBlock(prefixBlk, pfx)

	// plain: extended inode, flat data.
	out.plain = readerPattern(3, bs+10)
	s.putBlock(p0, out.plain)
	s.putInode(nPlain, diskInode{
		Format: formatExtendedBit | layoutFlatPlain<<formatLayoutShift,
		Mode:   sIFREG | 0o4755, Nlink: 1, Size: uint64(len(out.plain)), U: uint32(p0),
		UID: 70000, GID: 80000, Mtime: 1700000000, MtimeNsec: 999999999, Ino: 77,
	}, nil, nil)

	s.putInode(nLong, diskInode{Mode: sIFREG | 0o644, Nlink: 1}, nil, nil)
	s.putInode(nSym, diskInode{
		Format: layoutFlatInline << formatLayoutShift,
		Mode:   sIFLNK | 0o777, Nlink: 1, Size: 5,
	}, nil, []byte("plain"))
	s.putInode(nDev, diskInode{Mode: sIFCHR | 0o620, Nlink: 1, U: encodeDev(259, 70000)}, nil, nil)

	sb := superBlock{
		RootNid:         uint16(nRoot),
		Inos:            7,
		BuildTime:       1500000000,
		BuildTimeNsec:   42,
		XattrBlkAddr:    uint32(xattrBlk),
		FeatureIncompat: featureIncompatChunkedFile | featureIncompatXattrPrefix,
		XattrPrefixCnt:  1,
		XattrPrefixOff:  uint32(prefixBlk * bs / 4),
	}
	if checksum {
		sb.FeatureCompat = featureCompatSBChecksum
	}
	out.img = s.finish(sb)
	return out
}

func TestReaderSynthetic(t *testing.T) {
	for _, bits := range []uint8{9, 10, 12, 16} {
		for _, csum := range []bool{false, true} {
			t.Run(fmt.Sprintf("bs%d-csum%v", 1<<bits, csum), func(t *testing.T) {
				syn := readerSynthImage(bits, csum)
				fsys := readerOpenBytes(t, syn.img)
				readerCheckGoErofs(t, bytes.NewReader(syn.img), fsys)
				long := strings.Repeat("N", MaxNameLen)

				var names []string
				ents, err := fsys.ReadDir(".")
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range ents {
					names = append(names, e.Name())
				}
				if diff := cmp.Diff([]string{long, "chunked", "dev", "lp", "plain", "sym"}, names); diff != "" {
					t.Errorf("ReadDir (-want +got):\n%s", diff)
				}
				for name, want := range map[string][]byte{
					"chunked": syn.chunked, "plain": syn.plain, "sym": syn.plain,
					"lp": []byte("hello"), long: {},
				} {
					got, err := fsys.ReadFile(name)
					if err != nil {
						t.Errorf("ReadFile(%.10s): %v", name, err)
					} else if !bytes.Equal(got, want) {
						t.Errorf("ReadFile(%.10s): wrong content (%d bytes, want %d)", name, len(got), len(want))
					}
				}
				// Reads spanning a data chunk, the hole and the next chunk.
				f, _ := fsys.Open("chunked")
				p := make([]byte, 3*(1<<bits))
				if n, err := f.(io.ReaderAt).ReadAt(p, 1<<bits+3); n != len(p) || err != nil {
					t.Errorf("ReadAt over a hole: %d, %v", n, err)
				} else if !bytes.Equal(p, syn.chunked[1<<bits+3:][:len(p)]) {
					t.Error("ReadAt over a hole: wrong data")
				}

				stat := func(name string) *Stat {
					fi, err := fsys.Lstat(name)
					if err != nil {
						t.Fatal(err)
					}
					return fi.Sys().(*Stat)
				}
				want := map[string]*Stat{
					"lp": {Nid: syn.nidLP, Mode: sIFREG | 0o600, UID: 1, GID: 2, Nlink: 1, Size: 5,
						Mtime: 1500000000, MtimeNsec: 42, Layout: layoutFlatInline,
						Xattrs: map[string][]byte{
							"trusted.overlay.opaque": []byte("y"),
							"user.x":                 []byte("1"),
							"security.selinux":       []byte("ctx"),
						}},
					"plain": {Nid: syn.nidPlain, Ino: 77, Mode: sIFREG | 0o4755, UID: 70000, GID: 80000, Nlink: 1,
						Size: int64(len(syn.plain)), Mtime: 1700000000, MtimeNsec: 999999999, Extended: true},
					"dev": {Nid: syn.nidLP + 3*(1<<bits)/inodeSlotSize, Mode: sIFCHR | 0o620, Nlink: 1,
						DevMajor: 259, DevMinor: 70000, Mtime: 1500000000, MtimeNsec: 42},
					"chunked": {Nid: syn.nidChunked, Mode: sIFREG | 0o644, Nlink: 1, Size: int64(len(syn.chunked)),
						Mtime: 1500000000, MtimeNsec: 42, Layout: layoutChunkBased,
						Xattrs: map[string][]byte{"user.a": {}}},
				}
				for name, w := range want {
					if diff := cmp.Diff(w, stat(name)); diff != "" {
						t.Errorf("%s: Stat (-want +got):\n%s", name, diff)
					}
				}
				fi, _ := fsys.Stat("plain")
				if got := fi.ModTime(); !got.Equal(time.Unix(1700000000, 999999999)) {
					t.Errorf("ModTime = %v", got)
				}
				if fi.Mode() != 0o755|fs.ModeSetuid {
					t.Errorf("Mode = %v", fi.Mode())
				}
			})
		}
	}
}

// TestReaderSyntheticCorrupt breaks the synthetic image in targeted ways;
// each must give a clear error, never a panic.
func TestReaderSyntheticCorrupt(t *testing.T) {
	const bits = 12
	le := binary.LittleEndian
	tests := []struct {
		name   string
		mutate func(syn *readerSynthFiles, s *readerSynth)
		op     func(fsys *FS) error // the failing operation after Open; nil: Open fails
		want   error
		msg    string
	}{
		{
			name: "inline data crosses block boundary",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint32(s.img[s.inodePos(syn.nidLP)+8:], uint32(s.bs-syn.lpTailOff+1))
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadFile("lp"); return err },
			want: ErrCorrupt, msg: "crosses block boundary",
		},
		{
			name: "unknown chunk format bits",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[s.inodePos(syn.nidChunked)+16:], 0x40)
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadFile("chunked"); return err },
			want: ErrCorrupt, msg: "unknown chunk format",
		},
		{
			name: "chunk array beyond end of image",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint32(s.img[s.inodePos(syn.nidChunked)+8:], 0xFFFFFFF0)
				le.PutUint16(s.img[s.inodePos(syn.nidChunked)+16:], chunkIndexes)
			},
			op:   func(fsys *FS) error { _, err := fsys.Open("chunked"); return err },
			want: ErrCorrupt, msg: "chunk array",
		},
		{
			name: "chunk block beyond end of image",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint32(s.img[s.inodePos(syn.nidChunked)+32+20+4+4:], 0x7FFFFFF)
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadFile("chunked"); return err },
			want: ErrCorrupt, msg: "beyond end of image",
		},
		{
			name: "flat data beyond end of image",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint32(s.img[s.inodePos(syn.nidPlain)+16:], 0xFFFFFF00)
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadFile("plain"); return err },
			want: ErrCorrupt, msg: "beyond end of image",
		},
		{
			name: "long xattr prefix index out of range",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				s.img[s.inodePos(syn.nidLP)+32+16+1] = xattrLongIndex | 5
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("lp"); return err },
			want: ErrCorrupt, msg: "long prefix 5",
		},
		{
			name: "xattr value size overruns the area",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[s.inodePos(syn.nidLP)+32+16+2:], 0xFFFF)
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("lp"); return err },
			want: ErrCorrupt, msg: "overruns",
		},
		{
			name: "shared xattr id beyond end of image",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint32(s.img[s.inodePos(syn.nidLP)+32+12:], 0xFFFFFFFF)
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("lp"); return err },
			want: ErrCorrupt, msg: "shared xattr",
		},
		{
			name: "xattr count beyond end of image",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[s.inodePos(syn.nidPlain)+2:], 0xFFFF)
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("plain"); return err },
			want: ErrCorrupt, msg: "xattr area",
		},
		{
			name: "unknown xattr name index",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				s.img[s.inodePos(syn.nidLP)+32+16+12+1] = 9
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("lp"); return err },
			want: ErrCorrupt, msg: "name index 9",
		},
		{
			name: "bad prefix table",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[(s.metaBlk+7)*s.bs:], 0)
			},
			want: ErrCorrupt, msg: "xattr prefix 0: bad length",
		},
		{
			name: "dirent name offset garbage",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[s.inodePos(syn.nidRoot)+64+8:], 13)
			},
			op:   func(fsys *FS) error { _, err := fsys.Open("lp"); return err },
			want: ErrCorrupt, msg: "bad first name offset 13",
		},
		{
			name: "dirent name offsets out of order",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[s.inodePos(syn.nidRoot)+64+3*dirEntrySize+8:], 1)
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadDir("."); return err },
			want: ErrCorrupt, msg: "bad name offsets",
		},
		{
			name: "dirent name with a slash",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				s.img[s.inodePos(syn.nidRoot)+64+syn.rootSize-1] = '/' // last name: "sym"
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadDir("."); return err },
			want: ErrCorrupt, msg: "contains '/'",
		},
		{
			name: "dirent nid beyond end of image",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint64(s.img[s.inodePos(syn.nidRoot)+64+5*dirEntrySize:], 1<<40) // lp
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("lp"); return err },
			want: ErrCorrupt, msg: "offset beyond end of image",
		},
		{
			name: "directory larger than the image",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint64(s.img[s.inodePos(syn.nidRoot)+8:], 1<<40)
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadDir("."); return err },
			want: ErrCorrupt, msg: "larger than the image",
		},
		{
			name: "unknown layout",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[s.inodePos(syn.nidPlain):], formatExtendedBit|6<<formatLayoutShift)
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("plain"); return err },
			want: ErrCorrupt, msg: "unknown data layout 6",
		},
		{
			name: "bad file type",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[s.inodePos(syn.nidPlain)+4:], 0o170644)
			},
			op:   func(fsys *FS) error { _, err := fsys.Stat("plain"); return err },
			want: ErrCorrupt, msg: "bad file type",
		},
		{
			name: "symlink target too long",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint32(s.img[s.inodePos(syn.nidPlain)+s.bs+64+8:], maxSymlinkLen+1)
			},
			op:   func(fsys *FS) error { _, err := fsys.ReadLink("sym"); return err },
			want: ErrCorrupt, msg: "too long",
		},
		{
			name: "root is not a directory",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint16(s.img[superOffset+14:], uint16(syn.nidPlain))
			},
			want: ErrCorrupt, msg: "not a directory",
		},
		{
			name: "unknown incompatible feature",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				le.PutUint32(s.img[superOffset+80:], featureIncompatChunkedFile|featureIncompatDeviceTable|1<<20)
			},
			want: errors.ErrUnsupported, msg: "0x100008 (device table/compressed head2, bit 20)",
		},
		{
			name: "block size too large",
			mutate: func(syn *readerSynthFiles, s *readerSynth) {
				s.img[superOffset+12] = 20
			},
			want: ErrCorrupt, msg: "block size 2^20",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			syn := readerSynthImage(bits, true)
			s := &readerSynth{bits: bits, bs: 1 << bits, metaBlk: 1, img: syn.img}
			readerOpenBytes(t, syn.img) // intact first
			tc.mutate(syn, s)
			readerFixChecksum(s.img)
			fsys, err := Open(bytes.NewReader(s.img))
			if tc.op != nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				err = tc.op(fsys)
			}
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.msg) {
				t.Fatalf("error %v; want %v containing %q", err, tc.want, tc.msg)
			}
			t.Log(err)
		})
	}
}

package erofs

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Close lays out directories, shared xattrs and inodes, writes the
// superblock and flushes the output. It does not close out.
//
// When the output is a file (an *os.File, or a type embedding one) and
// WriterOptions.MetadataAtEnd is not set, the metadata goes contiguously at the image's start, right after
// the superblock, and the file data written so far moves up to make room
// for it: copied once in 4 MiB pieces, or for 256 MiB and more with one
// fallocate(FALLOC_FL_INSERT_RANGE) call where the file system supports
// it (ext4, XFS), which moves extents instead of bytes. Images
// read lazily over a network then find everything a mount and a walk of
// the tree read in a few contiguous blocks at the start. Other outputs
// get the metadata after the file data, where it was written.
func (w *Writer) Close() error {
	if w.zpipe != nil {
		// Commit the files still being compressed, then end the workers.
		if w.err == nil && !w.closed {
			w.zpipe.drain(w) // sets w.err on failure
		}
		w.zpipe.stop()
	}
	if w.err != nil {
		w.tails.close()
		return w.err
	}
	if w.closed {
		return errors.New("erofs: Close called twice")
	}
	w.closed = true
	err := w.finish()
	if cerr := w.tails.close(); err == nil && cerr != nil {
		err = fmt.Errorf("erofs: %w", cerr)
	}
	if err != nil {
		w.err = err
	}
	return err
}

// dirInfo is a directory during layout.
type dirInfo struct {
	n      *node
	parent *node
	// entries are the sorted names with their nodes, "." and ".." included.
	names []string
	nodes []*node
	// blockEnds[i] is how many entries the first i+1 blocks hold.
	blockEnds []int
	size      uint64
}

// finish lays out and writes everything that follows the file data, in the
// order the steps depend on one another: inode numbers and link counts first
// (every later step needs the full list), then the inode forms, the shared
// xattrs and the directory blocks (all sized before nids exist), then the
// inode metadata, the bytes in allocation order, and last the superblock,
// which names where all of it went.
func (w *Writer) finish() error {
	dirs, inodes, err := w.numberTree()
	if err != nil {
		return err
	}
	buildSec, buildNsec := w.buildTime(inodes)
	chooseInodeForms(inodes, buildSec, buildNsec)
	sharedBytes, err := w.shareXattrs(inodes)
	if err != nil {
		return err
	}
	file, first := w.out.(fileOutput)
	first = first && !w.opts.MetadataAtEnd
	var dataStart, dataBlocks uint64
	if first {
		// Lay the metadata out from the first block after the
		// superblock; the data moves up past it below.
		if err := w.buf.Flush(); err != nil {
			return fmt.Errorf("erofs: writing image: %w", err)
		}
		dataStart = headBlocks(w.bs)
		dataBlocks = w.nextBlk - dataStart
		w.nextBlk = dataStart
	}
	w.placeDirs(dirs)
	links := w.placeLinks(inodes)
	meta, err := w.placeMeta(inodes, sharedBytes, dataBlocks)
	if err != nil {
		return err
	}
	if first {
		shift := w.nextBlk - dataStart // the metadata's blocks
		moveData(inodes, shift)
		if err := shiftFile(file, int64(dataStart)*w.bs, int64(dataBlocks)*w.bs, int64(shift)*w.bs); err != nil {
			return fmt.Errorf("erofs: moving the file data after the metadata: %w", err)
		}
		if _, err := w.out.Seek(int64(dataStart)*w.bs, io.SeekStart); err != nil {
			return fmt.Errorf("erofs: writing metadata: %w", err)
		}
	}
	if err := w.writeDirs(dirs); err != nil {
		return err
	}
	if err := w.writeLinks(links); err != nil {
		return err
	}
	if len(sharedBytes) > 0 {
		if err := w.writeBlocks(sharedBytes); err != nil {
			return err
		}
	}
	if err := w.writeMeta(meta.blocks); err != nil {
		return err
	}
	if err := w.buf.Flush(); err != nil {
		return fmt.Errorf("erofs: writing image: %w", err)
	}
	return w.writeSuperBlock(superBlock{
		Magic:         superMagic,
		FeatureCompat: featureCompatSBChecksum,
		BlkSzBits:     w.blkBits,
		RootNid:       uint16(w.root.ino.nid),
		Inos:          uint64(len(inodes)),
		BuildTime:     buildSec,
		BuildTimeNsec: buildNsec,
		Blocks:        uint32(meta.total),
		MetaBlkAddr:   uint32(meta.metaBlk),
		XattrBlkAddr:  uint32(meta.xattrBlk),
	}, meta.total)
}

// numberTree walks the tree depth-first in name order, so that inode numbers,
// link counts and the list of directories come out the same for the same
// tree: the image must be reproducible. It returns the directories and the
// inodes (each hard-linked inode once) in walk order.
func (w *Writer) numberTree() ([]*dirInfo, []*inode, error) {
	var dirs []*dirInfo
	var inodes []*inode
	seen := map[*inode]bool{}
	var walk func(n, parent *node)
	walk = func(n, parent *node) {
		ino := n.ino
		if !seen[ino] {
			seen[ino] = true
			inodes = append(inodes, ino)
			ino.ino32 = uint32(len(inodes))
			ino.nlink = 0
		}
		ino.nlink++
		if !ino.isDir() {
			return
		}
		d, subdirs := listDir(n, parent)
		dirs = append(dirs, d)
		for _, name := range d.names {
			if name != "." && name != ".." {
				walk(n.children[name], n)
			}
		}
		// A directory's link count is its "." and its name in the parent
		// (the root's ".." stands in for that) plus each subdirectory's "..".
		ino.nlink = uint32(2 + subdirs)
	}
	walk(w.root, w.root)
	if uint64(len(inodes)) > 1<<32-1 {
		return nil, nil, fmt.Errorf("erofs: %d inodes exceed the 32-bit inode number space", len(inodes))
	}
	return dirs, inodes, nil
}

// listDir makes the layout record of directory n: its entries sorted by name
// with "." and ".." among them, as EROFS directory blocks need them, and
// how many subdirectories it has, which its link count needs.
func listDir(n, parent *node) (*dirInfo, int) {
	d := &dirInfo{n: n, parent: parent}
	names := make([]string, 0, len(n.children)+2)
	for name := range n.children {
		names = append(names, name)
	}
	names = append(names, ".", "..")
	slices.Sort(names)
	d.names = names
	d.nodes = make([]*node, len(names))
	subdirs := 0
	for i, name := range names {
		switch name {
		case ".":
			d.nodes[i] = n
		case "..":
			d.nodes[i] = parent
		default:
			c := n.children[name]
			d.nodes[i] = c
			if c.ino.isDir() {
				subdirs++
			}
		}
	}
	return d, subdirs
}

// chooseInodeForms marks the inodes that need the extended on-disk form: the
// compact form has 16-bit owners and link count, a 32-bit size and no mtime of
// its own (it takes the superblock's build time), so anything that does not
// fit, or a different mtime, needs the extended one.
func chooseInodeForms(inodes []*inode, buildSec uint64, buildNsec uint32) {
	for _, ino := range inodes {
		ino.extended = ino.uid > 0xFFFF || ino.gid > 0xFFFF || ino.nlink > 0xFFFF ||
			ino.size > 0xFFFFFFFF || ino.mtime != int64(buildSec) || ino.mtimeNsec != buildNsec ||
			ino.mtime < 0
	}
}

// placeDirs sizes each directory and allocates its data blocks, keeping a
// last partial block inline after the inode when it fits there. Directory
// sizes depend only on names, so their blocks can be placed before nids are
// known.
func (w *Writer) placeDirs(dirs []*dirInfo) {
	for _, d := range dirs {
		w.planDir(d)
		ino := d.n.ino
		ino.size = d.size
		full := d.size / uint64(w.bs)
		tail := int(d.size % uint64(w.bs))
		ino.tailLen = 0
		ino.nblocks = 0
		ino.blkaddr = 0
		if tail > 0 && int64(inodeSize(ino)+ino.xsize+tail) <= w.bs {
			ino.tailLen = tail
			ino.nblocks = full
		} else {
			ino.nblocks = full
			if tail > 0 {
				ino.nblocks++
			}
		}
		if ino.nblocks > 0 {
			ino.blkaddr = w.nextBlk
			w.nextBlk += ino.nblocks
		}
	}
}

// placeLinks gives the symlinks their blocks after the directories': a
// target's whole blocks, and its last partial block unless it fits inline
// after the inode (by the rule writeFlat applies to file tails). It
// returns the symlinks that got blocks, in allocation order.
func (w *Writer) placeLinks(inodes []*inode) []*inode {
	var out []*inode
	for _, ino := range inodes {
		if ino.mode&sIFMT != sIFLNK || ino.link == "" {
			continue
		}
		size := uint64(len(ino.link))
		full := size / uint64(w.bs)
		tail := int(size % uint64(w.bs))
		inline := tail > 0 && int64(extendedInodeSize+inlineXattrSize(ino.xattrs)+tail) <= w.bs
		ino.nblocks, ino.tailLen, ino.target, ino.blkaddr = full, 0, "", 0
		if inline {
			ino.target = ino.link[full*uint64(w.bs):]
			ino.tailLen = tail
		} else if tail > 0 {
			ino.nblocks++
		}
		if ino.nblocks > 0 {
			ino.blkaddr = w.nextBlk
			w.nextBlk += ino.nblocks
			out = append(out, ino)
		}
	}
	return out
}

// writeLinks writes the blocks placeLinks allocated.
func (w *Writer) writeLinks(links []*inode) error {
	for _, ino := range links {
		n := min(uint64(len(ino.link)), ino.nblocks*uint64(w.bs))
		if err := w.writeBlocks([]byte(ino.link[:n])); err != nil {
			return err
		}
	}
	return nil
}

// metaLayout is where the shared xattrs and the inode metadata go, and how
// many blocks the image has in all.
type metaLayout struct {
	xattrBlk uint64 // first block of the shared xattrs, 0 if there are none
	metaBlk  uint64 // first block of the inode metadata
	blocks   []*metaBlock
	total    uint64
}

// placeMeta allocates the shared xattr blocks after the directory blocks and
// packs the inodes after them, which gives every inode its nid; after
// blocks follow (the file data, when the metadata goes first). It refuses
// a layout whose addresses do not fit the superblock's fields.
func (w *Writer) placeMeta(inodes []*inode, sharedBytes []byte, after uint64) (metaLayout, error) {
	var m metaLayout
	if len(sharedBytes) > 0 {
		m.xattrBlk = w.nextBlk
		w.nextBlk += uint64(align(int64(len(sharedBytes)), w.bs) / w.bs)
	}
	m.metaBlk = w.nextBlk
	m.blocks = w.packInodes(inodes)
	w.nextBlk = m.metaBlk + uint64(len(m.blocks))
	m.total = w.nextBlk + after
	if m.total > 1<<32-1 {
		return m, fmt.Errorf("erofs: image of %d blocks exceeds the 32-bit block address space", m.total)
	}
	if m.metaBlk > 1<<32-1 {
		return m, fmt.Errorf("erofs: metadata start block %d exceeds 32 bits", m.metaBlk)
	}
	if w.root.ino.nid > 0xFFFF {
		return m, fmt.Errorf("erofs: root nid %d does not fit the superblock", w.root.ino.nid)
	}
	return m, nil
}

// writeDirs writes the directory blocks in the order placeDirs allocated
// them, and keeps each inline tail for writeMeta to put after its inode.
// Entries name nids, so this can only run after placeMeta.
func (w *Writer) writeDirs(dirs []*dirInfo) error {
	for _, d := range dirs {
		ino := d.n.ino
		data := w.dirData(d)
		if ino.nblocks > 0 {
			body := data[:min(uint64(len(data)), ino.nblocks*uint64(w.bs))]
			if err := w.writeBlocks(body); err != nil {
				return err
			}
		}
		if ino.tailLen > 0 {
			ino.dirTail = data[len(data)-ino.tailLen:]
		}
	}
	return nil
}

// writeBlocks writes b and pads it with zeros to a block boundary, so that
// what follows starts on the block it was allocated.
func (w *Writer) writeBlocks(b []byte) error {
	if err := w.writeOut(b); err != nil {
		return err
	}
	if pad := int64(len(b)) % w.bs; pad != 0 {
		if err := w.writeOut(make([]byte, w.bs-pad)); err != nil {
			return err
		}
	}
	return nil
}

// writeSuperBlock completes sb with the compression features, checksums it
// and writes it into block 0, which the layout left free; then it seeks to
// the image's end, total blocks, so the output's length is the image's.
func (w *Writer) writeSuperBlock(sb superBlock, total uint64) error {
	// Block 0 (or the first 4 KiB for small blocks: the kernel reads the
	// superblock through a page) carries the superblock.
	head := make([]byte, superOffset+w.bs)
	if w.zcfg != nil {
		// Linux 6.1 (fs/erofs/decompressor.c, z_erofs_lz4_decompress_mem)
		// finds where a pcluster's LZ4 data starts by skipping the
		// zeros in front of it only with ZERO_PADDING; without it, it
		// decodes "partially" from the pcluster's first byte.
		sb.FeatureIncompat |= featureIncompatZeroPadding
		sb.U1 = lz4MaxDistance
		if w.zcfg.big(w.bs) {
			// Big pclusters: their size limit comes from the lz4
			// config record (erofs_load_compr_cfgs in super.c reads it
			// right after the superblock, as a __le16 length then the
			// record), and u1 lists the algorithms in use.
			sb.FeatureIncompat |= featureIncompatBigPcluster | featureIncompatComprCfgs
			sb.U1 = 1 << zAlgLZ4
			rec := head[superOffset+superSize:]
			binary.LittleEndian.PutUint16(rec[0:], lz4CfgsSize)
			binary.LittleEndian.PutUint16(rec[2:], lz4MaxDistance)
			binary.LittleEndian.PutUint16(rec[4:], uint16(w.zcfg.pcap/int(w.bs)))
		}
	}
	copy(head[superOffset:], sb.marshal())
	sb.Checksum = superBlockChecksum(head, w.bs)
	copy(head[superOffset:], sb.marshal())
	if _, err := w.out.Seek(superOffset, io.SeekStart); err != nil {
		return fmt.Errorf("erofs: writing superblock: %w", err)
	}
	end := superOffset + superSize
	if w.zcfg != nil {
		end += 2 + lz4CfgsSize // block 0 is 4 KiB here, the record fits
	}
	if _, err := w.out.Write(head[superOffset:end]); err != nil {
		return fmt.Errorf("erofs: writing superblock: %w", err)
	}
	if _, err := w.out.Seek(int64(total)*w.bs, io.SeekStart); err != nil {
		return fmt.Errorf("erofs: seeking to the end: %w", err)
	}
	return nil
}

// itemSize is the size of an inode's metadata item: the inode, its xattrs,
// and its inline tail or, for a compressed file, its map header and
// indexes.
func (w *Writer) itemSize(ino *inode) int {
	body := inodeSize(ino) + ino.xsize
	if ino.z != nil {
		hdr := zIndexStart(body)
		return hdr + zIndexSize(hdr, ino.size, uint64(w.bs), w.zcfg.compact)
	}
	return body + ino.tailLen
}

func inodeSize(ino *inode) int {
	if ino.extended {
		return extendedInodeSize
	}
	return compactInodeSize
}

// buildTime picks the superblock build time: the forced time if any, else
// the most common inode mtime, so that as many inodes as possible can use
// the compact form, which takes its mtime from the superblock.
func (w *Writer) buildTime(inodes []*inode) (uint64, uint32) {
	if w.opts.ModTime != nil {
		return uint64(max(w.opts.ModTime.Unix(), 0)), uint32(w.opts.ModTime.Nanosecond())
	}
	type ts struct {
		sec  int64
		nsec uint32
	}
	counts := map[ts]int{}
	best, bestN := ts{}, 0
	for _, ino := range inodes {
		if ino.mtime < 0 {
			continue
		}
		k := ts{ino.mtime, ino.mtimeNsec}
		counts[k]++
		n := counts[k]
		if n > bestN || (n == bestN && (k.sec < best.sec || (k.sec == best.sec && k.nsec < best.nsec))) {
			best, bestN = k, n
		}
	}
	return uint64(best.sec), best.nsec
}

// shareXattrs moves every attribute (name and value) carried by two or more
// inodes to the shared area, and lays out each inode's inline area.
func (w *Writer) shareXattrs(inodes []*inode) ([]byte, error) {
	counts := map[string]int{}
	for _, ino := range inodes {
		for _, x := range ino.xattrs {
			counts[x.key()]++
		}
	}
	var keys []string
	byKey := map[string]xattr{}
	for _, ino := range inodes {
		for _, x := range ino.xattrs {
			k := x.key()
			if counts[k] >= 2 {
				if _, ok := byKey[k]; !ok {
					byKey[k] = x
					keys = append(keys, k)
				}
			}
		}
	}
	slices.Sort(keys)
	ids := make(map[string]uint32, len(keys))
	var area []byte
	for _, k := range keys {
		ids[k] = uint32(len(area) / 4)
		area = byKey[k].appendEntry(area)
	}
	for _, ino := range inodes {
		ino.shared, ino.inline = nil, nil
		for _, x := range ino.xattrs {
			if id, ok := ids[x.key()]; ok {
				ino.shared = append(ino.shared, id)
			} else {
				ino.inline = append(ino.inline, x)
			}
		}
		if len(ino.xattrs) == 0 {
			ino.xsize = 0
			continue
		}
		if len(ino.shared) > 255 {
			return nil, fmt.Errorf("erofs: inode %d has %d shared xattrs, more than 255", ino.ino32, len(ino.shared))
		}
		size := xattrHeaderSize + 4*len(ino.shared)
		for _, x := range ino.inline {
			size += x.entrySize()
		}
		if (size-xattrHeaderSize)/4+1 > 0xFFFF {
			return nil, fmt.Errorf("erofs: inode %d: extended attributes of %d bytes are too large", ino.ino32, size)
		}
		ino.xsize = size
	}
	return area, nil
}

// planDir splits a directory's sorted entries into blocks.
func (w *Writer) planDir(d *dirInfo) {
	d.blockEnds = d.blockEnds[:0]
	used := 0
	var size uint64
	for i, name := range d.names {
		need := dirEntrySize + len(name)
		if int64(used+need) > w.bs {
			d.blockEnds = append(d.blockEnds, i)
			size += uint64(w.bs)
			used = 0
		}
		used += need
	}
	d.blockEnds = append(d.blockEnds, len(d.names))
	d.size = size + uint64(used)
}

// dirData encodes a directory's blocks; the last one is not padded, earlier
// ones are zero-filled to the block size so the kernel finds each last name's
// end at a NUL.
func (w *Writer) dirData(d *dirInfo) []byte {
	out := make([]byte, 0, d.size)
	start := 0
	for bi, end := range d.blockEnds {
		blk := len(out)
		nameOff := dirEntrySize * (end - start)
		out = append(out, make([]byte, nameOff)...)
		for i := start; i < end; i++ {
			e := out[blk+dirEntrySize*(i-start):]
			binary.LittleEndian.PutUint64(e[0:], d.nodes[i].ino.nid)
			binary.LittleEndian.PutUint16(e[8:], uint16(nameOff))
			e[10] = dirFileType(d.nodes[i].ino.mode)
			out = append(out, d.names[i]...)
			nameOff += len(d.names[i])
		}
		if bi < len(d.blockEnds)-1 {
			out = append(out, make([]byte, int(w.bs)-(len(out)-blk))...)
		}
		start = end
	}
	return out
}

// metaBlock is one block of the inode area with the inodes packed in it.
type metaBlock struct {
	items []*inode
	used  int
}

// packInodes assigns every inode a slot in the metadata area. An inode and
// whatever follows it (xattrs, inline tail) must not cross a block boundary,
// so this is bin packing: best fit, largest first, with the root placed
// first so its nid fits the superblock's 16 bits.
func (w *Writer) packInodes(inodes []*inode) []*metaBlock {
	bs := int(w.bs)
	slot := func(ino *inode) int {
		return int(align(int64(w.itemSize(ino)), inodeSlotSize))
	}
	var blocks []*metaBlock
	// free[k] lists blocks with exactly k free slots.
	free := make([][]int, bs/inodeSlotSize+1)
	place := func(ino *inode, bi int) {
		b := blocks[bi]
		ino.nid = uint64((bi*bs + b.used) / inodeSlotSize)
		b.items = append(b.items, ino)
		b.used += slot(ino)
	}
	openBlocks := func(ino *inode) {
		size := slot(ino)
		n := max(1, (size+bs-1)/bs)
		first := len(blocks)
		for range n {
			blocks = append(blocks, &metaBlock{})
		}
		place(ino, first)
		// An oversized item spans blocks; the remainder of its last block
		// stays usable.
		last := len(blocks) - 1
		blocks[first].used = min(size, bs)
		blocks[last].used = size - (n-1)*bs
		if k := (bs - blocks[last].used) / inodeSlotSize; k > 0 {
			free[k] = append(free[k], last)
		}
	}
	// nid 0 stays unused: the kernel reports a nid as the inode number, and
	// C libraries skip directory entries whose inode number is 0.
	root := w.root.ino
	blocks = append(blocks, &metaBlock{used: inodeSlotSize})
	if slot(root) <= bs-inodeSlotSize {
		place(root, 0)
		if k := (bs - blocks[0].used) / inodeSlotSize; k > 0 {
			free[k] = append(free[k], 0)
		}
	} else {
		openBlocks(root)
	}
	rest := make([]*inode, 0, len(inodes))
	for _, ino := range inodes {
		if ino != root {
			rest = append(rest, ino)
		}
	}
	slices.SortStableFunc(rest, func(a, b *inode) int {
		return cmp.Or(cmp.Compare(slot(b), slot(a)), cmp.Compare(a.order, b.order))
	})
	for _, ino := range rest {
		need := slot(ino) / inodeSlotSize
		placed := false
		if need*inodeSlotSize <= bs {
			for k := need; k < len(free); k++ {
				if len(free[k]) == 0 {
					continue
				}
				bi := free[k][len(free[k])-1]
				free[k] = free[k][:len(free[k])-1]
				place(ino, bi)
				if left := k - need; left > 0 {
					free[left] = append(free[left], bi)
				}
				placed = true
				break
			}
		}
		if !placed {
			openBlocks(ino)
		}
	}
	return blocks
}

// writeMeta encodes the inode area block by block.
func (w *Writer) writeMeta(blocks []*metaBlock) error {
	bs := int(w.bs)
	buf := make([]byte, 0, bs)
	var spill []byte // bytes of an oversized item running into later blocks
	for bi, b := range blocks {
		buf = buf[:0]
		if len(spill) > 0 {
			n := min(len(spill), bs)
			buf = append(buf, spill[:n]...)
			spill = spill[n:]
		}
		for _, ino := range b.items {
			off := int(ino.nid*inodeSlotSize) - bi*bs
			if len(buf) < off {
				buf = append(buf, make([]byte, off-len(buf))...)
			}
			item, err := w.encodeInode(ino)
			if err != nil {
				return err
			}
			if len(item) > bs-off {
				spill = append(spill, item[bs-off:]...)
				item = item[:bs-off]
			}
			buf = append(buf, item...)
		}
		buf = append(buf, make([]byte, bs-len(buf))...)
		if err := w.writeOut(buf); err != nil {
			return err
		}
	}
	return nil
}

// encodeInode returns the on-disk inode followed by its xattrs and inline
// tail.
func (w *Writer) encodeInode(ino *inode) ([]byte, error) {
	layout := layoutFlatPlain
	switch {
	case ino.z != nil && w.zcfg.compact:
		layout = layoutCompressedCompact
	case ino.z != nil:
		layout = layoutCompressedFull
	case ino.tailLen > 0:
		layout = layoutFlatInline
	}
	di := diskInode{
		Format:    uint16(layout) << formatLayoutShift,
		Mode:      ino.mode,
		Nlink:     ino.nlink,
		Size:      ino.size,
		Ino:       ino.ino32,
		UID:       ino.uid,
		GID:       ino.gid,
		Mtime:     uint64(ino.mtime),
		MtimeNsec: ino.mtimeNsec,
	}
	if ino.extended {
		di.Format |= formatExtendedBit
	}
	switch ino.mode & sIFMT {
	case sIFCHR, sIFBLK:
		di.U = ino.rdev
	case sIFREG, sIFDIR, sIFLNK:
		if ino.z != nil {
			di.U = uint32(ino.nblocks) // compressed_blocks
		} else if ino.nblocks > 0 {
			di.U = uint32(ino.blkaddr)
		}
	}
	if ino.xsize > 0 {
		di.XattrCount = uint16((ino.xsize-xattrHeaderSize)/4 + 1)
	}
	out := make([]byte, di.size(), di.size()+ino.xsize+ino.tailLen)
	di.marshal(out)
	if ino.xsize > 0 {
		h := len(out)
		out = append(out, make([]byte, xattrHeaderSize)...)
		out[h+4] = uint8(len(ino.shared))
		for _, id := range ino.shared {
			out = binary.LittleEndian.AppendUint32(out, id)
		}
		for _, x := range ino.inline {
			out = x.appendEntry(out)
		}
	}
	if ino.z != nil {
		var err error
		if out, err = appendZIndexes(out, ino.z, ino.size, w.zcfg, w.bs); err != nil {
			return nil, err
		}
		return out, nil
	}
	if ino.tailLen > 0 {
		switch {
		case ino.isDir():
			out = append(out, ino.dirTail...)
			ino.dirTail = nil
		case ino.target != "":
			out = append(out, ino.target...)
		default:
			start := len(out)
			out = append(out, make([]byte, ino.tailLen)...)
			if err := w.tails.readAt(out[start:], ino.tailOff); err != nil {
				return nil, fmt.Errorf("erofs: %w", err)
			}
		}
	}
	return out, nil
}

// headBlocks is the number of blocks before the first one free for
// metadata or data: those holding the superblock.
func headBlocks(bs int64) uint64 {
	return uint64((superOffset + superSize + bs - 1) / bs)
}

// moveData adds shift to the block addresses of every file's data, which
// was written from the first block after the superblock and now follows
// the metadata. Directories' and symlinks' blocks are metadata, placed
// where they are.
func moveData(inodes []*inode, shift uint64) {
	for _, ino := range inodes {
		if ino.isDir() || ino.mode&sIFMT == sIFLNK {
			continue
		}
		if ino.nblocks > 0 {
			ino.blkaddr += shift
		}
		if ino.z != nil {
			for i := range ino.z.exts {
				ino.z.exts[i].blkaddr += uint32(shift)
			}
		}
	}
}

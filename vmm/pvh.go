package vmm

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"

	"github.com/pe-project/pe/internal/atomicfile"
)

// maxVmlinux bounds the decompressed kernel.
const maxVmlinux = 512 << 20

// ErrNoPVH means a kernel image cannot be booted through its PVH entry
// point: it is not a bzImage, its payload is compressed in a way pe does
// not read, or the kernel has no PVH entry (CONFIG_PVH).
var ErrNoPVH = errors.New("no PVH entry point")

// BootImage returns the kernel image to boot for k: the uncompressed ELF
// kernel inside k.Vmlinuz when it has a PVH entry point, extracted once
// into cacheDir/kernel, else k.Vmlinuz itself (with an error wrapping
// ErrNoPVH saying why).
//
// QEMU (microvm) and cloud-hypervisor both boot a PVH ELF kernel directly.
// Booting it skips the bzImage's decompressor, which under TCG costs
// about half a second of emulated CPU per boot.
func BootImage(k *Kernel, cacheDir string) (string, error) {
	// The cache key is the file's identity, not its contents, so that a
	// cached kernel costs a stat, not a read of the image.
	fi, err := os.Stat(k.Vmlinuz)
	if err != nil {
		return k.Vmlinuz, err
	}
	abs, _ := filepath.Abs(k.Vmlinuz)
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "pe-pvh-1\x00%s\x00%d\x00%d\x00%d", abs, fi.Size(), fi.ModTime().UnixNano(), ino))
	out := filepath.Join(cacheDir, "kernel", "vmlinux-"+hex.EncodeToString(sum[:])[:32])
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	b, err := os.ReadFile(k.Vmlinuz)
	if err != nil {
		return k.Vmlinuz, err
	}
	elfImage, err := ExtractVmlinux(b)
	if err != nil {
		return k.Vmlinuz, fmt.Errorf("%s: %w", k.Vmlinuz, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return k.Vmlinuz, err
	}
	// Readable by all, like the kernel it comes from: a confined QEMU,
	// running as another user, opens it again by its descriptor's /proc
	// link, which checks the mode.
	if err := atomicfile.Write(out, elfImage, atomicfile.Options{Pattern: ".vmlinux-*", Perm: 0o644}); err != nil {
		return k.Vmlinuz, err
	}
	return out, nil
}

// ExtractVmlinux returns the ELF kernel inside the x86 bzImage b (Linux
// boot protocol 2.08 or later: payload_offset and payload_length in the
// setup header), decompressed (gzip, xz, zstd or lz4), after checking it
// has a PVH entry point (the XEN_ELFNOTE_PHYS32_ENTRY note). Errors wrap
// ErrNoPVH.
func ExtractVmlinux(b []byte) ([]byte, error) {
	payload, err := bzImagePayload(b)
	if err != nil {
		return nil, err
	}
	var r io.Reader
	switch {
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		r, err = gzip.NewReader(bytes.NewReader(payload))
	case bytes.HasPrefix(payload, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		r, err = xz.NewReader(bytes.NewReader(payload))
	case bytes.HasPrefix(payload, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(payload))
		if err == nil {
			defer d.Close()
			r = d
		}
	case bytes.HasPrefix(payload, []byte{0x02, 0x21, 0x4c, 0x18}):
		r = lz4.NewReader(bytes.NewReader(payload))
	default:
		return nil, fmt.Errorf("%w: payload compression %x not supported", ErrNoPVH, payload[:min(len(payload), 6)])
	}
	if err != nil {
		return nil, fmt.Errorf("%w: decompressing the payload: %v", ErrNoPVH, err)
	}
	var out bytes.Buffer
	n, err := io.Copy(&out, io.LimitReader(r, maxVmlinux+1))
	// The kernel's lz4 stream is followed by the decompressed size, which
	// a reader may report as trailing garbage once the data is out.
	if err != nil && !(n > 0 && bytes.HasPrefix(out.Bytes(), []byte(elf.ELFMAG))) {
		return nil, fmt.Errorf("%w: decompressing the payload: %v", ErrNoPVH, err)
	}
	if n > maxVmlinux {
		return nil, fmt.Errorf("%w: the kernel decompresses to more than %d bytes", ErrNoPVH, maxVmlinux)
	}
	if !hasPVHNote(out.Bytes()) {
		return nil, fmt.Errorf("%w: the kernel has no XEN_ELFNOTE_PHYS32_ENTRY note (CONFIG_PVH)", ErrNoPVH)
	}
	return out.Bytes(), nil
}

// bzImagePayload returns the compressed kernel of a bzImage.
func bzImagePayload(b []byte) ([]byte, error) {
	if len(b) < 0x250 || string(b[0x202:0x206]) != "HdrS" {
		return nil, fmt.Errorf("%w: not a bzImage (no HdrS setup header)", ErrNoPVH)
	}
	if v := binary.LittleEndian.Uint16(b[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("%w: boot protocol %#x has no payload fields", ErrNoPVH, v)
	}
	setupSects := int(b[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	start := int64(setupSects+1) * 512
	off := start + int64(binary.LittleEndian.Uint32(b[0x248:]))
	end := off + int64(binary.LittleEndian.Uint32(b[0x24c:]))
	if off >= end || end > int64(len(b)) {
		return nil, fmt.Errorf("%w: payload [%d, %d) outside the %d-byte image", ErrNoPVH, off, end, len(b))
	}
	return b[off:end], nil
}

// hasPVHNote reports whether the ELF image has a Xen note of type 18
// (XEN_ELFNOTE_PHYS32_ENTRY), the PVH entry point.
func hasPVHNote(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE || p.Filesz > 1<<20 {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		bo := f.ByteOrder
		for len(data) >= 12 {
			namesz, descsz, typ := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
			nameEnd := 12 + (uint64(namesz)+3)&^3
			descEnd := nameEnd + (uint64(descsz)+3)&^3
			if descEnd > uint64(len(data)) {
				break
			}
			name := string(bytes.TrimRight(data[12:12+namesz], "\x00"))
			if name == "Xen" && typ == 18 {
				return true
			}
			data = data[descEnd:]
		}
	}
	return false
}

package erofs

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// xattr is one extended attribute split into its EROFS prefix index and the
// rest of the name.
type xattr struct {
	index uint8
	name  string // the name without its prefix
	value string
}

func (x xattr) key() string { return string([]byte{x.index}) + x.name + "\x00" + x.value }

// entrySize is the 4-byte aligned size of the on-disk erofs_xattr_entry.
func (x xattr) entrySize() int {
	return int(align(int64(xattrEntryHdrSize+len(x.name)+len(x.value)), 4))
}

// appendEntry encodes x as an erofs_xattr_entry with padding.
func (x xattr) appendEntry(b []byte) []byte {
	start := len(b)
	b = append(b, uint8(len(x.name)), x.index, 0, 0)
	binary.LittleEndian.PutUint16(b[start+2:], uint16(len(x.value)))
	b = append(b, x.name...)
	b = append(b, x.value...)
	for len(b)-start < x.entrySize() {
		b = append(b, 0)
	}
	return b
}

// parseXattrs validates a name → value map and returns the attributes in a
// stable order.
func parseXattrs(m map[string][]byte) ([]xattr, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make([]xattr, 0, len(m))
	for full, value := range m {
		x, err := splitXattrName(full)
		if err != nil {
			return nil, err
		}
		if len(value) > 0xFFFF {
			return nil, fmt.Errorf("%w: %q: value of %d bytes exceeds 65535", ErrUnsupportedXattr, full, len(value))
		}
		x.value = string(value)
		out = append(out, x)
	}
	slices.SortFunc(out, func(a, b xattr) int {
		return cmp.Or(cmp.Compare(a.index, b.index), strings.Compare(a.name, b.name))
	})
	return out, nil
}

func splitXattrName(full string) (xattr, error) {
	for _, p := range xattrPrefixes {
		if !strings.HasPrefix(full, p.prefix) {
			continue
		}
		rest := full[len(p.prefix):]
		exact := !strings.HasSuffix(p.prefix, ".")
		switch {
		case exact && rest != "":
			continue // e.g. "system.posix_acl_accessX"
		case !exact && rest == "":
			return xattr{}, fmt.Errorf("%w: %q has an empty name after its prefix", ErrUnsupportedXattr, full)
		case len(rest) > 255:
			return xattr{}, fmt.Errorf("%w: %q: name longer than 255 bytes", ErrUnsupportedXattr, full)
		}
		return xattr{index: p.index, name: rest}, nil
	}
	return xattr{}, fmt.Errorf("%w: %q has no prefix EROFS can store (user., trusted., security., system.posix_acl_*)", ErrUnsupportedXattr, full)
}

// inlineXattrSize is the inline area an inode needs with every attribute
// inline: an upper bound of its final size, whatever gets shared.
func inlineXattrSize(xs []xattr) int {
	if len(xs) == 0 {
		return 0
	}
	n := xattrHeaderSize
	for _, x := range xs {
		n += x.entrySize()
	}
	return n
}

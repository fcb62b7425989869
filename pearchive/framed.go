package pearchive

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// SplitFramed splits a framed HTTP body, "u32 little-endian JSON length ‖
// JSON ‖ archive", into its JSON part and its archive part (the rest of the
// body, possibly empty). Both alias body. A body shorter than the length
// prefix, or whose JSON length exceeds what follows it, gives a
// [*FormatError].
func SplitFramed(body []byte) (jsonPart, archive []byte, err error) {
	if len(body) < 4 {
		return nil, nil, &FormatError{Offset: 0, Msg: fmt.Sprintf("framed body of %d bytes is shorter than its 4-byte JSON length", len(body))}
	}
	n := uint64(binary.LittleEndian.Uint32(body))
	if rest := uint64(len(body) - 4); n > rest {
		return nil, nil, &FormatError{Offset: 0, Msg: fmt.Sprintf("framed body: JSON length %d exceeds the %d bytes after the length", n, rest)}
	}
	return body[4 : 4+n], body[4+n:], nil
}

// FramedLen is the length of the framed body WriteFramed writes for a JSON
// part of jsonLen bytes and an archive of archiveLen bytes: what a server
// puts in Content-Length before it streams the body.
func FramedLen(jsonLen int, archiveLen int64) int64 { return 4 + int64(jsonLen) + archiveLen }

// WriteFramed writes a framed HTTP body: the length of jsonPart as a u32
// little-endian, jsonPart, then everything read from archive (nothing if
// archive is nil).
func WriteFramed(w io.Writer, jsonPart []byte, archive io.Reader) error {
	if uint64(len(jsonPart)) > math.MaxUint32 {
		return fmt.Errorf("pearchive: framed JSON of %d bytes is too long", len(jsonPart))
	}
	hdr := binary.LittleEndian.AppendUint32(make([]byte, 0, 4+len(jsonPart)), uint32(len(jsonPart)))
	if _, err := w.Write(append(hdr, jsonPart...)); err != nil {
		return fmt.Errorf("pearchive: write framed body: %w", err)
	}
	if archive == nil {
		return nil
	}
	if _, err := io.Copy(w, archive); err != nil {
		return fmt.Errorf("pearchive: write framed body: %w", err)
	}
	return nil
}

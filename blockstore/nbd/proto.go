package nbd

import (
	"encoding/binary"
	"fmt"
)

// Wire constants from the NBD protocol (doc/proto.md of
// github.com/NetworkBlockDevice/nbd). Only the ones this server speaks or
// refuses by name are listed.
const (
	magicInit   = 0x4e42444d41474943 // "NBDMAGIC"
	magicOpt    = 0x49484156454f5054 // "IHAVEOPT"
	magicReply  = 0x0003e889045565a9 // option replies
	magicReq    = 0x25609513         // transmission requests
	magicSimple = 0x67446698         // simple replies

	// Handshake flags (server) and client flags.
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	// Transmission flags.
	flagHasFlags     = 1 << 0
	flagReadOnly     = 1 << 1
	flagSendFlush    = 1 << 2
	flagCanMultiConn = 1 << 8

	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8

	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repErrUnsup   = 1<<31 + 1
	repErrInvalid = 1<<31 + 3
	repErrUnknown = 1<<31 + 6

	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	// Error values of replies.
	errPerm    = 1
	errIO      = 5
	errInvalid = 22

	// maxNameLength is the protocol's limit on strings (export names).
	maxNameLength = 4096
	// maxOptionLength bounds one option's data: the largest valid one is
	// NBD_OPT_GO with a 4096-byte name and a few information requests.
	maxOptionLength = 4 + maxNameLength + 2 + 2*64
	// maxOptions bounds the options of one handshake: real clients send
	// fewer than ten (QEMU and libnbd: structured reply, meta context, go;
	// nbdinfo --list: list, then info per export).
	maxOptions = 1024

	requestSize = 28
)

// request is one transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// ProtocolError is a client's violation of the protocol that ends its
// connection: a bad magic number, an unknown client flag, an option or
// payload larger than the server accepts.
type ProtocolError struct {
	Msg string
}

func (e *ProtocolError) Error() string { return "nbd: protocol violation: " + e.Msg }

func protoErrorf(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// parseRequest decodes a 28-byte request header.
func parseRequest(b []byte) (request, error) {
	if len(b) != requestSize {
		return request{}, protoErrorf("request header of %d bytes, want %d", len(b), requestSize)
	}
	if m := binary.BigEndian.Uint32(b); m != magicReq {
		return request{}, protoErrorf("request magic %#08x, want %#08x", m, magicReq)
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:]),
		typ:    binary.BigEndian.Uint16(b[6:]),
		handle: binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes NBD_OPT_INFO/GO data: a 32-bit name length,
// the name, a 16-bit count and that many 16-bit information types.
func parseInfoRequest(data []byte) (infoRequest, error) {
	if len(data) < 6 {
		return infoRequest{}, fmt.Errorf("option data of %d bytes, shorter than 6", len(data))
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n) > uint64(len(data)-6) {
		return infoRequest{}, fmt.Errorf("name length %d exceeds the option's %d bytes", n, len(data))
	}
	name := data[4 : 4+n]
	rest := data[4+n:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return infoRequest{}, fmt.Errorf("%d information requests announced, %d bytes follow", count, len(rest))
	}
	if err := checkName(string(name)); err != nil {
		return infoRequest{}, err
	}
	req := infoRequest{name: string(name), infos: make([]uint16, count)}
	for i := range count {
		req.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return req, nil
}

// appendSimpleReply appends a simple reply header.
func appendSimpleReply(b []byte, errno uint32, handle uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimple)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, handle)
}

// appendOptReply appends an option reply with its data.
func appendOptReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// cmdName names a command type for logs.
func cmdName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "READ"
	case cmdWrite:
		return "WRITE"
	case cmdDisc:
		return "DISC"
	case cmdFlush:
		return "FLUSH"
	case cmdTrim:
		return "TRIM"
	case cmdCache:
		return "CACHE"
	case cmdWriteZeroes:
		return "WRITE_ZEROES"
	case cmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", typ)
}

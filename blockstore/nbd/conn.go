package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// errAborted ends a handshake the client aborted with NBD_OPT_ABORT.
var errAborted = errors.New("client aborted the handshake")

// errDrained ends a connection the server's Shutdown stopped reading.
var errDrained = errors.New("server shutting down")

// conn is one client connection.
type conn struct {
	s    *Server
	log  *slog.Logger
	nc   net.Conn // nil when fuzzing over in-memory streams
	r    *bufio.Reader
	w    io.Writer
	done chan struct{} // closed when serve returns

	mu       sync.Mutex
	exp      *Export // set once the handshake picked it
	draining bool
	aborted  bool

	wmu  sync.Mutex // serializes replies
	werr error      // first failed reply write

	// readFailed is set at the first read the export failed: that one
	// is logged as a warning, the rest (a guest retries, reads ahead)
	// at debug level; the export's owner reports the cause.
	readFailed atomic.Bool
}

// serve runs the handshake and the transmission phase, then closes the
// connection and logs why it ended.
func (c *conn) serve() {
	defer close(c.done)
	defer c.nc.Close()
	// Under c.mu, so that a Shutdown's drain, which may come first,
	// is not undone.
	c.mu.Lock()
	if !c.draining {
		c.nc.SetDeadline(time.Now().Add(c.s.opts.HandshakeTimeout))
	}
	c.mu.Unlock()
	exp, err := c.s.negotiate(c.r, c.w)
	if err == nil {
		err = c.begin(exp)
	}
	if err == nil {
		err = c.transmit(exp)
	}
	c.logEnd(err)
}

// logEnd logs how a connection ended: clean ends at Debug, a client that
// broke the protocol at Warn.
func (c *conn) logEnd(err error) {
	c.mu.Lock()
	aborted, draining := c.aborted, c.draining
	name := "(none)"
	if c.exp != nil {
		name = c.exp.Name
	}
	c.mu.Unlock()
	var pe *ProtocolError
	switch {
	case err == nil:
		c.log.Debug("nbd: client disconnected", "export", name)
	case errors.Is(err, errAborted), errors.Is(err, io.EOF):
		c.log.Debug("nbd: client closed the connection", "export", name, "reason", err)
	case aborted, draining:
		c.log.Debug("nbd: connection ended by the server", "export", name, "reason", err)
	case errors.As(err, &pe):
		c.s.stats.protocolErrors.Add(1)
		c.log.Warn("nbd: disconnecting a client that broke the protocol", "export", name, "err", err)
	default:
		c.log.Warn("nbd: connection failed", "export", name, "err", err)
	}
}

// begin records the export the handshake chose, unless the server is
// closing or the export was removed meanwhile, and lifts the handshake's
// deadline.
func (c *conn) begin(exp *Export) error {
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted || c.draining || c.s.closed {
		return errDrained
	}
	if c.s.exports[exp.Name] != exp {
		return fmt.Errorf("export %q removed during the handshake", exp.Name)
	}
	c.exp = exp
	if c.nc != nil {
		c.nc.SetDeadline(time.Time{})
	}
	return nil
}

// export returns the connection's export, nil during the handshake.
func (c *conn) export() *Export {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exp
}

// drain stops reading requests: the transmission loop then waits for the
// requests in flight, whose replies still go out, and returns.
func (c *conn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.draining = true
	if c.nc != nil {
		c.nc.SetReadDeadline(time.Now())
	}
}

// abort closes the connection at once.
func (c *conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.aborted = true
	if c.nc != nil {
		c.nc.Close()
	}
}

// negotiate runs the fixed newstyle handshake on r and w and returns the
// export the client chose.
func (s *Server) negotiate(r *bufio.Reader, w io.Writer) (*Export, error) {
	hello := binary.BigEndian.AppendUint64(nil, magicInit)
	hello = binary.BigEndian.AppendUint64(hello, magicOpt)
	hello = binary.BigEndian.AppendUint16(hello, flagFixedNewstyle|flagNoZeroes)
	if _, err := w.Write(hello); err != nil {
		return nil, fmt.Errorf("writing the greeting: %w", err)
	}
	var b [16]byte
	if _, err := io.ReadFull(r, b[:4]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	cflags := binary.BigEndian.Uint32(b[:4])
	if cflags&^(flagFixedNewstyle|flagNoZeroes) != 0 {
		return nil, protoErrorf("unknown client flags %#x", cflags)
	}
	noZeroes := cflags&flagNoZeroes != 0
	data := make([]byte, 0, 256)
	for range maxOptions {
		if _, err := io.ReadFull(r, b[:16]); err != nil {
			return nil, fmt.Errorf("reading an option: %w", err)
		}
		if m := binary.BigEndian.Uint64(b[:8]); m != magicOpt {
			return nil, protoErrorf("option magic %#016x, want %#016x", m, uint64(magicOpt))
		}
		opt := binary.BigEndian.Uint32(b[8:])
		n := binary.BigEndian.Uint32(b[12:])
		if n > maxOptionLength {
			return nil, protoErrorf("option %d with %d bytes of data, more than %d", opt, n, maxOptionLength)
		}
		data = growTo(data, int(n))
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, fmt.Errorf("reading option %d's data: %w", opt, err)
		}
		exp, done, err := s.option(w, opt, data, noZeroes)
		if err != nil || done {
			return exp, err
		}
	}
	return nil, protoErrorf("more than %d options", maxOptions)
}

// growTo returns b resized to n bytes, reusing its array.
func growTo(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// option answers one option. done reports the end of the handshake: with
// an export to serve, or with errAborted.
func (s *Server) option(w io.Writer, opt uint32, data []byte, noZeroes bool) (exp *Export, done bool, err error) {
	var out []byte
	switch opt {
	case optExportName:
		if err := checkName(string(data)); err != nil {
			return nil, true, protoErrorf("NBD_OPT_EXPORT_NAME: %v", err)
		}
		exp = s.lookup(string(data))
		if exp == nil {
			// The option has no error reply: the protocol says to end
			// the session.
			return nil, true, fmt.Errorf("client asked for export %q, which does not exist", data)
		}
		out = binary.BigEndian.AppendUint64(nil, uint64(exp.Size))
		out = binary.BigEndian.AppendUint16(out, transmissionFlags)
		if !noZeroes {
			out = append(out, make([]byte, 124)...)
		}
		if _, err := w.Write(out); err != nil {
			return nil, true, fmt.Errorf("writing the export's details: %w", err)
		}
		return exp, true, nil
	case optAbort:
		out = appendOptReply(out, opt, repAck, nil)
		// The client may already have hung up: a failed write changes
		// nothing.
		w.Write(out)
		return nil, true, errAborted
	case optList:
		if len(data) != 0 {
			out = appendOptReply(out, opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
			break
		}
		for _, e := range s.exportList() {
			// The name, then the description for display (nbdinfo
			// --list shows it).
			entry := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
			entry = append(entry, e.Name...)
			if len(e.Description) <= maxNameLength {
				entry = append(entry, e.Description...)
			}
			out = appendOptReply(out, opt, repServer, entry)
		}
		out = appendOptReply(out, opt, repAck, nil)
	case optInfo, optGo:
		req, err := parseInfoRequest(data)
		if err != nil {
			out = appendOptReply(out, opt, repErrInvalid, []byte(err.Error()))
			break
		}
		exp = s.lookup(req.name)
		if exp == nil {
			out = appendOptReply(out, opt, repErrUnknown, fmt.Appendf(nil, "no export named %q", req.name))
			break
		}
		out = s.appendInfo(out, opt, exp, req.infos)
		out = appendOptReply(out, opt, repAck, nil)
		if opt == optGo {
			done = true
		}
	case optStartTLS:
		out = appendOptReply(out, opt, repErrUnsup, []byte("this server speaks NBD over a local Unix socket, without TLS"))
	case optStructuredReply:
		// Simple replies suffice for a read-only disk; clients fall back
		// to them (QEMU and libnbd do).
		out = appendOptReply(out, opt, repErrUnsup, []byte("structured replies are not supported"))
	default:
		out = appendOptReply(out, opt, repErrUnsup, fmt.Appendf(nil, "option %d is not supported", opt))
	}
	if _, err := w.Write(out); err != nil {
		return nil, true, fmt.Errorf("replying to option %d: %w", opt, err)
	}
	if done {
		return exp, true, nil
	}
	return nil, false, nil
}

// transmissionFlags are the same for every export: read-only, flush
// accepted (there is nothing to flush), and safe to read over several
// connections at once.
const transmissionFlags = flagHasFlags | flagReadOnly | flagSendFlush | flagCanMultiConn

// appendInfo appends the NBD_REP_INFO replies for exp: always the size and
// flags and the block sizes; the name and description when asked.
func (s *Server) appendInfo(out []byte, opt uint32, exp *Export, infos []uint16) []byte {
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(exp.Size))
	info = binary.BigEndian.AppendUint16(info, transmissionFlags)
	out = appendOptReply(out, opt, repInfo, info)
	// Minimum 1 (any offset and length), preferred 4 KiB, maximum the
	// longest read answered: the protocol's defaults, so a client that
	// did not ask is not misled.
	info = binary.BigEndian.AppendUint16(nil, infoBlockSize)
	info = binary.BigEndian.AppendUint32(info, 1)
	info = binary.BigEndian.AppendUint32(info, 4096)
	info = binary.BigEndian.AppendUint32(info, s.opts.MaxReadLength)
	out = appendOptReply(out, opt, repInfo, info)
	for _, t := range infos {
		switch t {
		case infoName:
			info = binary.BigEndian.AppendUint16(nil, infoName)
			out = appendOptReply(out, opt, repInfo, append(info, exp.Name...))
		case infoDescription:
			if exp.Description != "" && len(exp.Description) <= maxNameLength {
				info = binary.BigEndian.AppendUint16(nil, infoDescription)
				out = appendOptReply(out, opt, repInfo, append(info, exp.Description...))
			}
		}
	}
	return out
}

// transmit serves requests until the client disconnects or breaks the
// protocol. Reads run concurrently, bounded in number and bytes; every
// other request is answered in order as it arrives.
func (c *conn) transmit(exp *Export) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	lim := newLimiter(c.s.opts.MaxInflight, c.s.opts.MaxInflightBytes)
	size := uint64(exp.Size)
	hdr := make([]byte, requestSize)
	for {
		if _, err := io.ReadFull(c.r, hdr); err != nil {
			c.mu.Lock()
			draining := c.draining
			c.mu.Unlock()
			if draining && errors.Is(err, os.ErrDeadlineExceeded) {
				return errDrained
			}
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			return fmt.Errorf("reading a request: %w", err)
		}
		req, err := parseRequest(hdr)
		if err != nil {
			return err
		}
		var errno uint32
		switch req.typ {
		case cmdRead:
			errno = c.checkRead(req, size)
			if errno != 0 || req.length == 0 {
				break
			}
			n := int64(req.length)
			lim.acquire(n)
			wg.Go(func() {
				defer lim.release(n)
				c.read(exp, req)
			})
			continue
		case cmdWrite:
			// The payload follows the header: skip it to stay in step,
			// unless it is too long to be a real write.
			if req.length > c.s.opts.MaxReadLength {
				return protoErrorf("NBD_CMD_WRITE of %d bytes, more than the %d-byte maximum payload", req.length, c.s.opts.MaxReadLength)
			}
			if _, err := c.r.Discard(int(req.length)); err != nil {
				return fmt.Errorf("skipping a write's payload: %w", err)
			}
			errno = errPerm
		case cmdTrim, cmdWriteZeroes:
			errno = errPerm
		case cmdFlush:
			if req.flags != 0 || req.offset != 0 || req.length != 0 {
				errno = errInvalid
			}
		case cmdDisc:
			// Outstanding requests are answered before the close.
			return nil
		default:
			errno = errInvalid
		}
		if errno != 0 {
			c.s.stats.refused.Add(1)
			c.log.Debug("nbd: refusing a request", "cmd", cmdName(req.typ), "offset", req.offset, "length", req.length, "flags", req.flags, "errno", errno)
		}
		if err := c.reply(req.handle, errno, nil); err != nil {
			return err
		}
	}
}

// checkRead returns the error a read gets before any I/O: flags (none are
// negotiated), length beyond the maximum payload, range beyond the end.
func (c *conn) checkRead(req request, size uint64) uint32 {
	switch {
	case req.flags != 0:
		return errInvalid
	case req.length > c.s.opts.MaxReadLength:
		c.log.Warn("nbd: refusing a read longer than the maximum payload", "length", req.length, "max", c.s.opts.MaxReadLength)
		return errInvalid
	case req.offset > size || uint64(req.length) > size-req.offset:
		c.log.Debug("nbd: refusing a read past the end", "offset", req.offset, "length", req.length, "size", size)
		return errInvalid
	}
	return 0
}

// read answers one read request: the data, or EIO when the export fails.
func (c *conn) read(exp *Export, req request) {
	buf := getBuffer(int(req.length))
	defer putBuffer(buf)
	b := (*buf)[:req.length]
	n, err := exp.Data.ReadAt(b, int64(req.offset))
	if n < len(b) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		c.s.stats.readErrors.Add(1)
		level := slog.LevelDebug
		if !c.readFailed.Swap(true) {
			level = slog.LevelWarn
		}
		c.log.Log(context.Background(), level, "nbd: reading the export failed; replying EIO", "export", exp.Name, "offset", req.offset, "length", req.length, "err", err)
		c.reply(req.handle, errIO, nil)
		return
	}
	c.s.stats.reads.Add(1)
	c.s.stats.readBytes.Add(uint64(len(b)))
	c.reply(req.handle, 0, b)
}

// reply sends a simple reply. The first failed write closes the
// connection, which ends the transmission loop.
func (c *conn) reply(handle uint64, errno uint32, data []byte) error {
	var hdr [16]byte
	appendSimpleReply(hdr[:0], errno, handle)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	bufs := net.Buffers{hdr[:], data}
	if _, err := bufs.WriteTo(c.w); err != nil {
		c.werr = fmt.Errorf("writing a reply: %w", err)
		if c.nc != nil {
			c.nc.Close()
		}
	}
	return c.werr
}

// limiter bounds a connection's requests in flight and their bytes.
type limiter struct {
	mu             sync.Mutex
	cond           sync.Cond
	n, maxN        int
	bytes, maxByte int64
}

func newLimiter(maxN int, maxBytes int64) *limiter {
	l := &limiter{maxN: maxN, maxByte: maxBytes}
	l.cond.L = &l.mu
	return l
}

// acquire waits until one more request of b bytes fits. A request no
// larger than maxByte always fits once the others are done.
func (l *limiter) acquire(b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.n >= l.maxN || l.bytes+b > l.maxByte {
		l.cond.Wait()
	}
	l.n++
	l.bytes += b
}

func (l *limiter) release(b int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	l.bytes -= b
	l.cond.Broadcast()
}

// Read buffers come from pools by power-of-two size, 4 KiB to 32 MiB, so
// a busy connection does not allocate per request.
const (
	minBufShift = 12
	maxBufShift = 25
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// bufClass returns the pool index for n bytes, or -1 beyond the largest.
func bufClass(n int) int {
	for i := range bufPools {
		if n <= 1<<(minBufShift+i) {
			return i
		}
	}
	return -1
}

func getBuffer(n int) *[]byte {
	i := bufClass(n)
	if i < 0 {
		b := make([]byte, n)
		return &b
	}
	if b, ok := bufPools[i].Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 1<<(minBufShift+i))
	return &b
}

func putBuffer(b *[]byte) {
	if i := bufClass(cap(*b)); i >= 0 && cap(*b) == 1<<(minBufShift+i) {
		bufPools[i].Put(b)
	}
}

package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Export is one named, read-only disk the server offers.
type Export struct {
	// Name is what clients ask for (nbd+unix:///NAME?socket=…); "" is the
	// default export. At most 4096 bytes of UTF-8 without NUL.
	Name string
	// Description is shown by clients that ask for it (nbdinfo).
	Description string
	// Data holds the disk's bytes. ReadAt is called concurrently, from
	// several connections and for several requests of one connection.
	Data io.ReaderAt
	// Size is the disk's size in bytes; no read goes past it. Make it a
	// multiple of 512 (EROFS images are of 4096): QEMU rounds a disk's
	// size up to whole sectors, and qemu-img 7.2's convert hangs at the
	// end of one that is not.
	Size int64
}

// Options bound what one server and each of its connections may use.
// Zero fields take the defaults named on each.
type Options struct {
	// Logger receives protocol violations (Warn), read errors (Error) and
	// connection ends (Debug). Default slog.Default().
	Logger *slog.Logger
	// MaxConnections is how many connections may be open at once; more
	// are closed on accept. Default 64.
	MaxConnections int
	// MaxInflight is how many requests of one connection may be served at
	// once; further requests wait in the socket. Default 32 (QEMU keeps
	// up to 16 in flight).
	MaxInflight int
	// MaxInflightBytes bounds the read buffers of one connection's
	// in-flight requests. Default 64 MiB; raised to MaxReadLength if
	// smaller.
	MaxInflightBytes int64
	// MaxReadLength is the longest read the server answers, announced
	// as the maximum payload; longer ones get EINVAL. Default and the
	// protocol's recommended limit 32 MiB; at least 4096.
	MaxReadLength uint32
	// HandshakeTimeout bounds the handshake of each connection.
	// Default 10 s.
	HandshakeTimeout time.Duration
}

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("nbd: server closed")

// ErrExportExists is returned by AddExport for a name already served.
var ErrExportExists = errors.New("nbd: export already exists")

// Server is a read-only NBD server. Its methods are safe for concurrent use.
type Server struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	exports   map[string]*Export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closed    bool
	nextID    uint64
	wg        sync.WaitGroup // Serve loops and connections

	stats struct {
		conns, reads, readBytes, readErrors, refused, protocolErrors atomic.Uint64
	}
}

// Stats are a server's counters since NewServer.
type Stats struct {
	// Connections is how many are open now; ConnectionsTotal how many
	// were accepted in all.
	Connections, ConnectionsTotal int
	// Reads and ReadBytes count the read requests answered with data.
	Reads, ReadBytes uint64
	// ReadErrors counts reads the export failed (answered EIO).
	ReadErrors uint64
	// Refused counts requests answered with another error: writes,
	// reads past the end or too long, unknown commands.
	Refused uint64
	// ProtocolErrors counts clients disconnected for breaking the
	// protocol.
	ProtocolErrors uint64
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	open := len(s.conns)
	s.mu.Unlock()
	return Stats{
		Connections:      open,
		ConnectionsTotal: int(s.stats.conns.Load()),
		Reads:            s.stats.reads.Load(),
		ReadBytes:        s.stats.readBytes.Load(),
		ReadErrors:       s.stats.readErrors.Load(),
		Refused:          s.stats.refused.Load(),
		ProtocolErrors:   s.stats.protocolErrors.Load(),
	}
}

// NewServer returns a server with no exports.
func NewServer(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = 64
	}
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = 32
	}
	if opts.MaxReadLength == 0 {
		opts.MaxReadLength = 32 << 20
	}
	opts.MaxReadLength = max(opts.MaxReadLength, 4096)
	if opts.MaxInflightBytes <= 0 {
		opts.MaxInflightBytes = 64 << 20
	}
	opts.MaxInflightBytes = max(opts.MaxInflightBytes, int64(opts.MaxReadLength))
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	return &Server{
		opts:      opts,
		log:       opts.Logger,
		exports:   map[string]*Export{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
}

// checkName reports why a string cannot be an export name.
func checkName(name string) error {
	switch {
	case len(name) > maxNameLength:
		return fmt.Errorf("export name of %d bytes, longer than %d", len(name), maxNameLength)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("export name %q contains NUL", name)
	case !utf8.ValidString(name):
		return fmt.Errorf("export name %q is not UTF-8", name)
	}
	return nil
}

// AddExport offers e to new connections.
func (s *Server) AddExport(e Export) error {
	if err := checkName(e.Name); err != nil {
		return fmt.Errorf("nbd: adding export: %w", err)
	}
	if e.Data == nil || e.Size < 0 {
		return fmt.Errorf("nbd: adding export %q: no data or negative size %d", e.Name, e.Size)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.exports[e.Name]; ok {
		return fmt.Errorf("adding export %q: %w", e.Name, ErrExportExists)
	}
	s.exports[e.Name] = &e
	return nil
}

// RemoveExport stops offering the named export, ends the connections
// that use it and waits until their reads have returned, so that the
// caller may then close the export's data. It reports whether the export
// existed.
func (s *Server) RemoveExport(name string) bool {
	s.mu.Lock()
	e, ok := s.exports[name]
	if !ok {
		// Nothing to end: a connection still in its handshake has no
		// export yet, and must not be taken for one of this one's.
		s.mu.Unlock()
		return false
	}
	delete(s.exports, name)
	var ending []*conn
	for c := range s.conns {
		if c.export() == e {
			ending = append(ending, c)
		}
	}
	s.mu.Unlock()
	for _, c := range ending {
		c.abort()
	}
	for _, c := range ending {
		<-c.done
	}
	return ok
}

// lookup returns the named export or nil.
func (s *Server) lookup(name string) *Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exports[name]
}

// exportList lists the exports, sorted by name.
func (s *Server) exportList() []*Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]*Export, 0, len(s.exports))
	for _, e := range s.exports {
		list = append(list, e)
	}
	slices.SortFunc(list, func(a, b *Export) int { return strings.Compare(a.Name, b.Name) })
	return list
}

// ListenUnix listens on a Unix socket at path that only its owner may
// connect to (the exports are disk images). The socket file is removed
// when the listener closes.
func ListenUnix(path string) (net.Listener, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nbd: listening: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("nbd: listening: %w", err)
	}
	return ln, nil
}

// Serve accepts connections on ln and serves each in its own goroutines
// until Shutdown or Close, then returns ErrServerClosed. It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("nbd: accepting: %w", err)
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, rather than spin or give up.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("nbd: accept failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.startConn(nc)
	}
}

// ErrTooManyConnections is returned by ServeConn when the server already
// has Options.MaxConnections open.
var ErrTooManyConnections = errors.New("nbd: too many connections")

// ServeConn serves one client already connected through nc, such as one
// end of a socket pair whose other end a confined VM inherits (it can
// reach no socket file), in its own goroutines as Serve serves each
// accepted connection, and returns at once. The connection ends, and nc
// is closed, when the client disconnects or at Shutdown, Close or
// RemoveExport. After Shutdown or Close it closes nc and returns
// ErrServerClosed; when the server is full, ErrTooManyConnections.
func (s *Server) ServeConn(nc net.Conn) error {
	return s.startConn(nc)
}

// startConn registers nc and serves it, or closes it when the server is
// closing or full.
func (s *Server) startConn(nc net.Conn) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return ErrServerClosed
	}
	if len(s.conns) >= s.opts.MaxConnections {
		s.mu.Unlock()
		s.log.Warn("nbd: too many connections; closing a new one", "limit", s.opts.MaxConnections)
		nc.Close()
		return ErrTooManyConnections
	}
	s.nextID++
	s.stats.conns.Add(1)
	c := newConn(s, s.nextID, nc)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
		c.serve()
	}()
	return nil
}

// Shutdown stops accepting connections, ends handshakes in progress, lets
// each connection finish the requests it has started and closes it. If
// ctx ends first, it closes everything as Close does and returns
// ctx.Err() once the connections' goroutines have ended.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.stop()
	for _, c := range conns {
		c.drain()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.abort()
		}
		<-done
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once, then waits
// for the connections' goroutines, including reads in progress in an
// export's ReadAt, to end.
func (s *Server) Close() error {
	for _, c := range s.stop() {
		c.abort()
	}
	s.wg.Wait()
	return nil
}

// stop marks the server closed, closes its listeners and returns its
// connections.
func (s *Server) stop() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// newConn wraps a network connection.
func newConn(s *Server, id uint64, nc net.Conn) *conn {
	return &conn{
		s:    s,
		log:  s.log.With("conn", id),
		nc:   nc,
		r:    bufio.NewReaderSize(nc, 64<<10),
		w:    nc,
		done: make(chan struct{}),
	}
}

package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// rawClient speaks the protocol byte by byte, to send what real clients
// never do.
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// greet connects and reads the server's greeting, then sends cflags.
func greet(t *testing.T, ts *testServer, cflags uint32) *rawClient {
	t.Helper()
	c := dial(t, ts)
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	var hello [18]byte
	if _, err := io.ReadFull(rc.r, hello[:]); err != nil {
		t.Fatalf("reading the greeting: %v", err)
	}
	if binary.BigEndian.Uint64(hello[:]) != magicInit || binary.BigEndian.Uint64(hello[8:]) != magicOpt ||
		binary.BigEndian.Uint16(hello[16:]) != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("greeting % x", hello)
	}
	rc.write(binary.BigEndian.AppendUint32(nil, cflags))
	return rc
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("writing to the server: %v", err)
	}
}

func (rc *rawClient) option(opt uint32, data []byte) {
	rc.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	rc.write(append(b, data...))
}

type optReply struct {
	Opt, Type uint32
	Data      string
}

func (rc *rawClient) optReply() optReply {
	rc.t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(rc.r, h[:]); err != nil {
		rc.t.Fatalf("reading an option reply: %v", err)
	}
	if m := binary.BigEndian.Uint64(h[:]); m != magicReply {
		rc.t.Fatalf("option reply magic %#x", m)
	}
	data := make([]byte, binary.BigEndian.Uint32(h[16:]))
	if _, err := io.ReadFull(rc.r, data); err != nil {
		rc.t.Fatalf("reading option reply data: %v", err)
	}
	return optReply{binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:]), string(data)}
}

// goData is the data of NBD_OPT_GO/INFO.
func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// open completes a handshake with NBD_OPT_GO for name.
func open(t *testing.T, ts *testServer, name string) *rawClient {
	t.Helper()
	rc := greet(t, ts, flagFixedNewstyle|flagNoZeroes)
	rc.goTo(name)
	return rc
}

// goTo ends the handshake with NBD_OPT_GO for the named export.
func (rc *rawClient) goTo(name string) {
	rc.t.Helper()
	rc.option(optGo, goData(name))
	for {
		r := rc.optReply()
		if r.Type == repAck {
			return
		}
		if r.Type != repInfo {
			rc.t.Fatalf("NBD_OPT_GO %q: reply %+v", name, r)
		}
	}
}

func (rc *rawClient) request(typ, flags uint16, handle, offset uint64, length uint32) {
	rc.t.Helper()
	b := binary.BigEndian.AppendUint32(nil, magicReq)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, offset)
	b = binary.BigEndian.AppendUint32(b, length)
	rc.write(b)
}

// reply reads a simple reply header.
func (rc *rawClient) reply() (errno uint32, handle uint64) {
	rc.t.Helper()
	var h [16]byte
	if _, err := io.ReadFull(rc.r, h[:]); err != nil {
		rc.t.Fatalf("reading a reply: %v", err)
	}
	if m := binary.BigEndian.Uint32(h[:]); m != magicSimple {
		rc.t.Fatalf("reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

func (rc *rawClient) data(n int) []byte {
	rc.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(rc.r, b); err != nil {
		rc.t.Fatalf("reading %d bytes of data: %v", n, err)
	}
	return b
}

// closed checks that the server hung up.
func (rc *rawClient) closed() {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := io.Copy(io.Discard, rc.r); err != nil || n != 0 {
		rc.t.Errorf("after the end: %d more bytes, %v; want the server to hang up", n, err)
	}
}

func TestOptions(t *testing.T) {
	data := randomBytes(8192, 4)
	ts := startServer(t, Options{}, Export{Name: "img", Description: "d", Data: bytes.NewReader(data), Size: 8192})
	rc := greet(t, ts, flagFixedNewstyle|flagNoZeroes)
	for _, tc := range []struct {
		opt  uint32
		data []byte
		want []optReply
	}{
		{optList, nil, []optReply{{optList, repServer, "\x00\x00\x00\x03imgd"}, {optList, repAck, ""}}},
		{optList, []byte("x"), []optReply{{optList, repErrInvalid, "NBD_OPT_LIST takes no data"}}},
		{optStructuredReply, nil, []optReply{{optStructuredReply, repErrUnsup, "structured replies are not supported"}}},
		{optStartTLS, nil, []optReply{{optStartTLS, repErrUnsup, "this server speaks NBD over a local Unix socket, without TLS"}}},
		{10, goData("x"), []optReply{{10, repErrUnsup, "option 10 is not supported"}}},
		{optInfo, goData("nope"), []optReply{{optInfo, repErrUnknown, `no export named "nope"`}}},
		{optInfo, []byte{0, 0, 0, 9, 'a'}, []optReply{{optInfo, repErrInvalid, "option data of 5 bytes, shorter than 6"}}},
		{optInfo, []byte{0, 0, 0, 1, 'a', 0, 2, 0, 1}, []optReply{{optInfo, repErrInvalid, "2 information requests announced, 2 bytes follow"}}},
		{optInfo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, []optReply{{optInfo, repErrInvalid, "name length 4294967295 exceeds the option's 6 bytes"}}},
		{optInfo, goData("img", infoName, infoDescription, 99), []optReply{
			{optInfo, repInfo, "\x00\x00" + "\x00\x00\x00\x00\x00\x00\x20\x00" + "\x01\x07"},
			{optInfo, repInfo, "\x00\x03" + "\x00\x00\x00\x01" + "\x00\x00\x10\x00" + "\x02\x00\x00\x00"},
			{optInfo, repInfo, "\x00\x01img"},
			{optInfo, repInfo, "\x00\x02d"},
			{optInfo, repAck, ""},
		}},
	} {
		rc.option(tc.opt, tc.data)
		var got []optReply
		for range tc.want {
			got = append(got, rc.optReply())
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("option %d % x (-want +got):\n%s", tc.opt, tc.data, diff)
		}
	}
	// After all that, the connection still works.
	rc.option(optGo, goData("img"))
	for rc.optReply().Type != repAck {
	}
	rc.request(cmdRead, 0, 1, 100, 50)
	if errno, h := rc.reply(); errno != 0 || h != 1 {
		t.Fatalf("read: errno %d handle %d", errno, h)
	}
	if got := rc.data(50); !bytes.Equal(got, data[100:150]) {
		t.Errorf("read returned wrong bytes")
	}
}

func TestExportName(t *testing.T) {
	data := randomBytes(4096, 5)
	ts := startServer(t, Options{}, Export{Name: "img", Data: bytes.NewReader(data), Size: 4096})
	for _, zeroes := range []bool{true, false} {
		cflags := uint32(flagFixedNewstyle)
		if !zeroes {
			cflags |= flagNoZeroes
		}
		rc := greet(t, ts, cflags)
		rc.option(optExportName, []byte("img"))
		want := binary.BigEndian.AppendUint64(nil, 4096)
		want = binary.BigEndian.AppendUint16(want, transmissionFlags)
		if zeroes {
			want = append(want, make([]byte, 124)...)
		}
		if got := rc.data(len(want)); !bytes.Equal(got, want) {
			t.Errorf("NBD_OPT_EXPORT_NAME reply % x, want % x", got, want)
		}
		rc.request(cmdRead, 0, 7, 0, 4096)
		if errno, _ := rc.reply(); errno != 0 || !bytes.Equal(rc.data(4096), data) {
			t.Errorf("read after NBD_OPT_EXPORT_NAME: errno %d or wrong data", errno)
		}
		rc.request(cmdDisc, 0, 8, 0, 0)
		rc.closed()
	}
	// An unknown name cannot be refused with a reply: the server hangs up.
	rc := greet(t, ts, flagFixedNewstyle)
	rc.option(optExportName, []byte("nope"))
	rc.closed()
	// NBD_OPT_ABORT is acknowledged, then the server hangs up.
	rc = greet(t, ts, flagFixedNewstyle)
	rc.option(optAbort, nil)
	if r := rc.optReply(); r.Type != repAck {
		t.Errorf("NBD_OPT_ABORT: reply %+v", r)
	}
	rc.closed()
}

func TestRequests(t *testing.T) {
	data := randomBytes(1<<20, 6)
	ts := startServer(t, Options{MaxReadLength: 64 << 10}, Export{Name: "img", Data: bytes.NewReader(data), Size: 1 << 20})
	rc := open(t, ts, "img")
	for i, tc := range []struct {
		name           string
		typ, flags     uint16
		offset         uint64
		length         uint32
		payload        []byte
		errno          uint32
		dataFromOffset bool
	}{
		{name: "read", typ: cmdRead, offset: 4096, length: 64 << 10, dataFromOffset: true},
		{name: "unaligned read", typ: cmdRead, offset: 1, length: 3, dataFromOffset: true},
		{name: "read to the end", typ: cmdRead, offset: 1<<20 - 10, length: 10, dataFromOffset: true},
		{name: "empty read", typ: cmdRead, offset: 1 << 20, length: 0, dataFromOffset: true},
		{name: "read past the end", typ: cmdRead, offset: 1<<20 - 10, length: 11, errno: errInvalid},
		{name: "read far past the end", typ: cmdRead, offset: 1 << 63, length: 1, errno: errInvalid},
		{name: "offset+length overflows", typ: cmdRead, offset: 1<<64 - 1, length: 2, errno: errInvalid},
		{name: "read longer than the maximum payload", typ: cmdRead, offset: 0, length: 64<<10 + 1, errno: errInvalid},
		{name: "read with a flag", typ: cmdRead, flags: 1, offset: 0, length: 1, errno: errInvalid},
		{name: "write", typ: cmdWrite, offset: 0, length: 5, payload: []byte("hello"), errno: errPerm},
		{name: "trim", typ: cmdTrim, offset: 0, length: 4096, errno: errPerm},
		{name: "write zeroes", typ: cmdWriteZeroes, offset: 0, length: 4096, errno: errPerm},
		{name: "flush", typ: cmdFlush},
		{name: "flush with a length", typ: cmdFlush, length: 1, errno: errInvalid},
		{name: "cache", typ: cmdCache, length: 4096, errno: errInvalid},
		{name: "block status", typ: cmdBlockStatus, length: 4096, errno: errInvalid},
		{name: "unknown command", typ: 99, errno: errInvalid},
	} {
		handle := uint64(1000 + i)
		rc.request(tc.typ, tc.flags, handle, tc.offset, tc.length)
		rc.write(tc.payload)
		errno, h := rc.reply()
		if errno != tc.errno || h != handle {
			t.Errorf("%s: errno %d handle %d, want errno %d handle %d", tc.name, errno, h, tc.errno, handle)
		}
		if tc.dataFromOffset && errno == 0 {
			if got := rc.data(int(tc.length)); !bytes.Equal(got, data[tc.offset:tc.offset+uint64(tc.length)]) {
				t.Errorf("%s: wrong data", tc.name)
			}
		}
	}
	rc.request(cmdDisc, 0, 0, 0, 0)
	rc.closed()
	// The client sees the connection closed a moment before the server
	// counts it gone.
	for deadline := time.Now().Add(5 * time.Second); ts.Stats().Connections != 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	want := Stats{ConnectionsTotal: 1, Reads: 3, ReadBytes: 64<<10 + 3 + 10, Refused: 12}
	if diff := cmp.Diff(want, ts.Stats()); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
}

// TestBadClients: a client that breaks the protocol is disconnected, the
// log says why, and the server keeps serving others.
func TestBadClients(t *testing.T) {
	ts := startServer(t, Options{MaxReadLength: 64 << 10, HandshakeTimeout: 300 * time.Millisecond},
		Export{Name: "img", Data: bytes.NewReader(make([]byte, 4096)), Size: 4096})
	for _, tc := range []struct {
		name string
		send func(*testing.T) *rawClient
		log  string
	}{
		{"unknown client flags", func(t *testing.T) *rawClient { return greet(t, ts, 0x80) }, "unknown client flags 0x80"},
		{"bad option magic", func(t *testing.T) *rawClient {
			rc := greet(t, ts, flagFixedNewstyle)
			rc.write([]byte("GARBAGE!GARBAGE!"))
			return rc
		}, "option magic 0x4741524241474521"},
		{"huge option", func(t *testing.T) *rawClient {
			rc := greet(t, ts, flagFixedNewstyle)
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, optGo)
			rc.write(binary.BigEndian.AppendUint32(b, 1<<31))
			return rc
		}, "option 7 with 2147483648 bytes of data"},
		{"silent client", func(t *testing.T) *rawClient {
			rc := greet(t, ts, flagFixedNewstyle)
			time.Sleep(500 * time.Millisecond)
			return rc
		}, "i/o timeout"},
		{"unknown export", func(t *testing.T) *rawClient {
			rc := greet(t, ts, flagFixedNewstyle)
			rc.option(optExportName, []byte("nope"))
			return rc
		}, `client asked for export \"nope\", which does not exist`},
		{"bad request magic", func(t *testing.T) *rawClient {
			rc := open(t, ts, "img")
			rc.write(bytes.Repeat([]byte{0x55}, 28))
			return rc
		}, "request magic 0x55555555"},
		{"huge write", func(t *testing.T) *rawClient {
			rc := open(t, ts, "img")
			rc.request(cmdWrite, 0, 1, 0, 1<<30)
			return rc
		}, "NBD_CMD_WRITE of 1073741824 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := tc.send(t)
			rc.closed()
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(ts.logs.String(), tc.log) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !strings.Contains(ts.logs.String(), tc.log) {
				t.Errorf("the log does not say %q:\n%s", tc.log, ts.logs)
			}
		})
	}
	if strings.Contains(ts.logs.String(), "level=ERROR") {
		t.Errorf("bad clients logged errors:\n%s", ts.logs)
	}
	if got := ts.Stats().ProtocolErrors; got != 5 {
		t.Errorf("Stats().ProtocolErrors = %d, want 5", got)
	}
	rc := open(t, ts, "img")
	rc.request(cmdRead, 0, 1, 0, 4096)
	if errno, _ := rc.reply(); errno != 0 {
		t.Errorf("a good client after the bad ones: errno %d", errno)
	}
}

// TestConcurrentReads: the reads of one connection run concurrently, up
// to MaxInflight, and each reply carries its request's handle and data.
func TestConcurrentReads(t *testing.T) {
	data := randomBytes(1<<20, 7)
	slow := &slowReader{r: bytes.NewReader(data), delay: 200 * time.Millisecond}
	ts := startServer(t, Options{MaxInflight: 8}, Export{Name: "img", Data: slow, Size: 1 << 20})
	rc := open(t, ts, "img")
	start := time.Now()
	const n = 24
	for i := range n {
		rc.request(cmdRead, 0, uint64(i), uint64(i)*4096, 4096)
	}
	seen := map[uint64]bool{}
	for range n {
		errno, h := rc.reply()
		if errno != 0 || h >= n || seen[h] {
			t.Fatalf("reply errno %d handle %d", errno, h)
		}
		seen[h] = true
		if got := rc.data(4096); !bytes.Equal(got, data[h*4096:(h+1)*4096]) {
			t.Errorf("handle %d: wrong data", h)
		}
	}
	elapsed := time.Since(start)
	// One after another they would take 24 × 200 ms = 4.8 s; 8 at a time
	// take 3 × 200 ms.
	if elapsed > 2*time.Second {
		t.Errorf("24 reads of 200 ms took %v: not concurrent", elapsed)
	}
	slow.mu.Lock()
	peak := slow.peak
	slow.mu.Unlock()
	if peak > 8 || peak < 2 {
		t.Errorf("%d reads ran at once, want 2..8 (MaxInflight)", peak)
	}
}

// TestDiscAnswersInflight: NBD_CMD_DISC after pipelined reads still gets
// every read answered before the server hangs up.
func TestDiscAnswersInflight(t *testing.T) {
	slow := &slowReader{r: bytes.NewReader(make([]byte, 1<<20)), delay: 100 * time.Millisecond}
	ts := startServer(t, Options{}, Export{Name: "img", Data: slow, Size: 1 << 20})
	rc := open(t, ts, "img")
	for i := range 4 {
		rc.request(cmdRead, 0, uint64(i), 0, 512)
	}
	rc.request(cmdDisc, 0, 9, 0, 0)
	for range 4 {
		if errno, _ := rc.reply(); errno != 0 {
			t.Fatalf("errno %d", errno)
		}
		rc.data(512)
	}
	rc.closed()
}

func TestShutdown(t *testing.T) {
	slow := &slowReader{r: bytes.NewReader(make([]byte, 1<<20)), delay: 300 * time.Millisecond}
	ts := startServer(t, Options{}, Export{Name: "img", Data: slow, Size: 1 << 20})
	rc := open(t, ts, "img")
	rc.request(cmdRead, 0, 1, 0, 4096)
	for {
		slow.mu.Lock()
		started := slow.started
		slow.mu.Unlock()
		if started > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	idle := open(t, ts, "img")
	if err := ts.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// The read started before Shutdown is answered, then the server hangs up.
	if errno, _ := rc.reply(); errno != 0 {
		t.Errorf("in-flight read during Shutdown: errno %d", errno)
	}
	rc.data(4096)
	rc.closed()
	idle.closed()
	if _, err := net.Dial("unix", ts.sock); err == nil {
		t.Errorf("the socket still accepts connections after Shutdown")
	}
}

func TestShutdownTimeout(t *testing.T) {
	slow := &slowReader{r: bytes.NewReader(make([]byte, 1<<20)), delay: time.Second}
	ts := startServer(t, Options{}, Export{Name: "img", Data: slow, Size: 1 << 20})
	rc := open(t, ts, "img")
	rc.request(cmdRead, 0, 1, 0, 4096)
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a read outlasting ctx: %v, want DeadlineExceeded", err)
	}
	rc.closed()
}

func TestRemoveExport(t *testing.T) {
	ts := startServer(t, Options{},
		Export{Name: "a", Data: bytes.NewReader(make([]byte, 4096)), Size: 4096},
		Export{Name: "b", Data: bytes.NewReader(make([]byte, 4096)), Size: 4096})
	ra, rb := open(t, ts, "a"), open(t, ts, "b")
	if !ts.RemoveExport("a") || ts.RemoveExport("a") {
		t.Errorf("RemoveExport reports wrongly whether the export existed")
	}
	ra.closed()
	rb.request(cmdRead, 0, 1, 0, 4096)
	if errno, _ := rb.reply(); errno != 0 {
		t.Errorf("the other export's connection: errno %d", errno)
	}
	rc := greet(t, ts, flagFixedNewstyle)
	rc.option(optGo, goData("a"))
	if r := rc.optReply(); r.Type != repErrUnknown {
		t.Errorf("NBD_OPT_GO for a removed export: %+v", r)
	}
	if err := ts.AddExport(Export{Name: "b", Data: bytes.NewReader(nil)}); !errors.Is(err, ErrExportExists) {
		t.Errorf("AddExport of a duplicate: %v, want ErrExportExists", err)
	}
	for _, bad := range []Export{{Name: "x\x00y", Data: bytes.NewReader(nil)}, {Name: strings.Repeat("x", 4097), Data: bytes.NewReader(nil)}, {Name: "x"}, {Name: "y", Data: bytes.NewReader(nil), Size: -1}} {
		if err := ts.AddExport(bad); err == nil {
			t.Errorf("AddExport(%.20q, size %d) accepted", bad.Name, bad.Size)
		}
	}
}

// TestRemoveMissingExport: removing an export that does not exist ends
// no connection, not even one still in its handshake (which has no
// export yet). It ended them all, which a lazy disk's second stop did to
// the other runs' VMs connecting at that moment.
func TestRemoveMissingExport(t *testing.T) {
	ts := startServer(t, Options{}, Export{Name: "b", Data: bytes.NewReader(make([]byte, 4096)), Size: 4096})
	rc := greet(t, ts, flagFixedNewstyle) // the server has the connection
	if ts.RemoveExport("a") {
		t.Error("RemoveExport of a missing export reports it existed")
	}
	rc.goTo("b")
	rc.request(cmdRead, 0, 1, 0, 4096)
	if errno, _ := rc.reply(); errno != 0 {
		t.Errorf("read: errno %d", errno)
	}
}

func TestMaxConnections(t *testing.T) {
	ts := startServer(t, Options{MaxConnections: 2}, Export{Name: "img", Data: bytes.NewReader(make([]byte, 4096)), Size: 4096})
	open(t, ts, "img")
	open(t, ts, "img")
	c := dial(t, ts)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, _ := io.Copy(io.Discard, c); n != 0 {
		t.Errorf("a connection beyond MaxConnections got %d bytes, want a hang-up", n)
	}
	if !strings.Contains(ts.logs.String(), "too many connections") {
		t.Errorf("the refusal is not logged:\n%s", ts.logs)
	}
}

// TestServeConn serves clients already connected through socket pairs,
// as a confined VM's are: a read works, a connection beyond
// MaxConnections and one after Close are refused and closed.
func TestServeConn(t *testing.T) {
	data := randomBytes(8192, 9)
	s := NewServer(Options{MaxConnections: 1, Logger: slog.New(slog.DiscardHandler)})
	defer s.Close()
	if err := s.AddExport(Export{Name: "img", Data: bytes.NewReader(data), Size: int64(len(data))}); err != nil {
		t.Fatal(err)
	}
	pair := func() (mine, theirs net.Conn) {
		fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		var cs [2]net.Conn
		for i, fd := range fds {
			f := os.NewFile(uintptr(fd), "pair")
			if cs[i], err = net.FileConn(f); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		t.Cleanup(func() { cs[0].Close(); cs[1].Close() })
		cs[0].SetDeadline(time.Now().Add(30 * time.Second))
		return cs[0], cs[1]
	}
	c, sc := pair()
	if err := s.ServeConn(sc); err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	rc.data(18) // the greeting
	rc.write(binary.BigEndian.AppendUint32(nil, flagFixedNewstyle|flagNoZeroes))
	rc.option(optGo, goData("img"))
	for r := rc.optReply(); r.Type != repAck; r = rc.optReply() {
		if r.Type != repInfo {
			t.Fatalf("NBD_OPT_GO: reply %+v", r)
		}
	}
	rc.request(cmdRead, 0, 7, 4096, 4096)
	if errno, handle := rc.reply(); errno != 0 || handle != 7 {
		t.Fatalf("read: errno %d, handle %d", errno, handle)
	}
	if !bytes.Equal(rc.data(4096), data[4096:]) {
		t.Error("the read returned other bytes")
	}

	c2, sc2 := pair()
	if err := s.ServeConn(sc2); !errors.Is(err, ErrTooManyConnections) {
		t.Errorf("ServeConn beyond MaxConnections: %v, want ErrTooManyConnections", err)
	}
	(&rawClient{t: t, c: c2, r: bufio.NewReader(c2)}).closed()

	s.Close()
	rc.closed()
	c3, sc3 := pair()
	if err := s.ServeConn(sc3); !errors.Is(err, ErrServerClosed) {
		t.Errorf("ServeConn after Close: %v, want ErrServerClosed", err)
	}
	(&rawClient{t: t, c: c3, r: bufio.NewReader(c3)}).closed()
}

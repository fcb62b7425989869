package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The fuzz targets feed a client's side of a connection to the server as
// bytes: FuzzHandshake a whole session from the greeting on, FuzzRequests
// the transmission phase alone. Their seed corpora under testdata/fuzz
// include what qemu-img, qemu-io, nbdinfo and nbdcopy sent
// (TestWriteFuzzSeeds records them).

const fuzzMaxRead = 64 << 10

var fuzzData = randomBytes(256<<10, 9)

func fuzzServer() *Server {
	s := NewServer(Options{Logger: slog.New(slog.DiscardHandler), MaxReadLength: fuzzMaxRead, MaxInflight: 4})
	s.AddExport(Export{Name: "img", Description: "fuzz", Data: bytes.NewReader(fuzzData), Size: int64(len(fuzzData))})
	s.AddExport(Export{Name: "", Data: bytes.NewReader(fuzzData[:4096]), Size: 4096})
	return s
}

// syncBuffer is a bytes.Buffer for replies written from several goroutines
// (the server serializes them; the lock keeps the race detector informed).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func FuzzHandshake(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3})
	f.Fuzz(func(t *testing.T, in []byte) {
		s := fuzzServer()
		r := bufio.NewReader(bytes.NewReader(in))
		var out syncBuffer
		exp, err := s.negotiate(r, &out)
		if !bytes.HasPrefix(out.b.Bytes(), []byte("NBDMAGICIHAVEOPT")) {
			t.Fatalf("no greeting: % x", out.b.Bytes())
		}
		if err != nil {
			return
		}
		if exp == nil {
			t.Fatal("negotiate returned neither an export nor an error")
		}
		c := &conn{s: s, log: s.log, r: r, w: &out, done: make(chan struct{})}
		c.transmit(exp)
	})
}

func FuzzRequests(f *testing.F) {
	f.Add(binary.BigEndian.AppendUint32(nil, magicReq))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := fuzzServer()
		exp := s.lookup("img")
		var out syncBuffer
		c := &conn{s: s, log: s.log, r: bufio.NewReader(bytes.NewReader(in)), w: &out, done: make(chan struct{})}
		c.transmit(exp)
		// Every request the server took gets exactly one reply, with data
		// for a good read: the output's length says so, whatever the
		// order the concurrent reads finished in.
		if got, want := out.b.Len(), expectedReplyBytes(in, uint64(len(fuzzData))); got != want {
			t.Fatalf("%d bytes of replies, want %d", got, want)
		}
	})
}

// expectedReplyBytes models the transmission phase: the bytes of replies
// the server owes for the requests in, up to the first that ends the
// connection.
func expectedReplyBytes(in []byte, size uint64) int {
	total := 0
	for len(in) >= requestSize {
		req, err := parseRequest(in[:requestSize])
		if err != nil {
			break
		}
		in = in[requestSize:]
		if req.typ == cmdDisc {
			break
		}
		if req.typ == cmdWrite {
			if req.length > fuzzMaxRead || uint64(len(in)) < uint64(req.length) {
				break
			}
			in = in[req.length:]
		}
		total += 16
		if req.typ == cmdRead && req.flags == 0 && req.length <= fuzzMaxRead && req.offset <= size && uint64(req.length) <= size-req.offset {
			total += int(req.length)
		}
	}
	return total
}

// recordingProxy forwards connections to the server and records what each
// client sent.
type recordingProxy struct {
	sock string
	mu   sync.Mutex
	sent [][]byte
}

func startProxy(t *testing.T, ts *testServer) *recordingProxy {
	t.Helper()
	p := &recordingProxy{sock: filepath.Join(filepath.Dir(ts.sock), "proxy.sock")}
	ln, err := net.Listen("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("unix", ts.sock)
				if err != nil {
					return
				}
				defer up.Close()
				var rec bytes.Buffer
				done := make(chan struct{})
				go func() { io.Copy(c, up); c.Close(); close(done) }()
				io.Copy(io.MultiWriter(up, &rec), c)
				up.(*net.UnixConn).CloseWrite()
				<-done
				p.mu.Lock()
				p.sent = append(p.sent, rec.Bytes())
				p.mu.Unlock()
			}()
		}
	}()
	return p
}

// TestWriteFuzzSeeds records real clients' sessions into the seed corpora.
// Run with PE_NBD_WRITE_SEEDS=1 after changing what the server answers.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("PE_NBD_WRITE_SEEDS") != "1" {
		t.Skip("writes testdata/fuzz; set PE_NBD_WRITE_SEEDS=1")
	}
	needTool(t, "qemu-io", "qemu-utils")
	needTool(t, "nbdinfo", "libnbd-bin")
	ts := startServer(t, Options{}, Export{Name: "img", Data: bytes.NewReader(fuzzData), Size: int64(len(fuzzData))})
	p := startProxy(t, ts)
	url := "nbd+unix:///img?socket=" + p.sock
	seeds := map[string][]byte{}
	// capture runs a client and waits for the proxy to record its session.
	capture := func(name string, args ...string) {
		p.mu.Lock()
		n := len(p.sent)
		p.mu.Unlock()
		run(t, args[0], args[1:]...)
		for range 500 {
			p.mu.Lock()
			done := len(p.sent) > n
			p.mu.Unlock()
			if done {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.sent) != n+1 {
			t.Fatalf("%s: %d sessions recorded, want 1", name, len(p.sent)-n)
		}
		seeds["FuzzHandshake/"+name] = p.sent[n]
	}
	capture("qemu-img-info", "qemu-img", "info", url)
	capture("qemu-io-reads", "qemu-io", "-r", "-f", "raw", "-c", "read 0 64k", "-c", "aio_read 4096 512", "-c", "aio_read 8192 4096", "-c", "aio_flush", "-c", "flush", url)
	capture("nbdinfo-list", "nbdinfo", "--list", "nbd+unix:///?socket="+p.sock)
	capture("nbdcopy", "nbdcopy", "--connections=1", url, filepath.Join(t.TempDir(), "copy"))
	// Handmade: NBD_OPT_EXPORT_NAME with zeroes, then every command.
	var reqs []byte
	for i, r := range []request{{typ: cmdRead, length: 512}, {typ: cmdWrite, length: 3}, {typ: cmdTrim, length: 9}, {typ: cmdFlush},
		{typ: cmdRead, offset: 1 << 62, length: 1}, {typ: cmdRead, length: fuzzMaxRead + 1}, {typ: cmdBlockStatus}, {typ: cmdRead, flags: 4, length: 1}, {typ: cmdDisc}} {
		reqs = binary.BigEndian.AppendUint32(reqs, magicReq)
		reqs = binary.BigEndian.AppendUint16(reqs, r.flags)
		reqs = binary.BigEndian.AppendUint16(reqs, r.typ)
		reqs = binary.BigEndian.AppendUint64(reqs, uint64(i))
		reqs = binary.BigEndian.AppendUint64(reqs, r.offset)
		reqs = binary.BigEndian.AppendUint32(reqs, r.length)
		if r.typ == cmdWrite {
			reqs = append(reqs, "abc"...)
		}
	}
	seeds["FuzzRequests/all-commands"] = reqs
	hs := binary.BigEndian.AppendUint32(nil, flagFixedNewstyle)
	hs = binary.BigEndian.AppendUint64(hs, magicOpt)
	hs = binary.BigEndian.AppendUint32(hs, optExportName)
	hs = binary.BigEndian.AppendUint32(hs, 3)
	seeds["FuzzHandshake/export-name"] = append(append(hs, "img"...), reqs...)
	for name, b := range seeds {
		path := filepath.Join("testdata", "fuzz", name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %d seeds", len(seeds))
}

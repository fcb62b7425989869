package nbd

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// logBuffer collects a server's log lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// testServer is a server listening on a Unix socket in a short temporary
// directory (socket paths are limited to 108 bytes).
type testServer struct {
	*Server
	sock string
	logs *logBuffer
}

// startServer serves exps on a new socket until the test ends.
func startServer(t *testing.T, opts Options, exps ...Export) *testServer {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logs := &logBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s := NewServer(opts)
	for _, e := range exps {
		if err := s.AddExport(e); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "nbd.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs)
		}
	})
	return &testServer{Server: s, sock: sock, logs: logs}
}

// url is the NBD URI of an export, as QEMU and libnbd take it.
func (ts *testServer) url(name string) string {
	return "nbd+unix:///" + name + "?socket=" + ts.sock
}

// randomBytes returns n reproducible pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// needTool skips the test when a client program is missing.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s (Debian package %s; make deps installs it)", name, pkg)
	}
	return p
}

// failingReader fails reads that touch [from, to) and serves the rest
// from data.
type failingReader struct {
	data     []byte
	from, to int64
}

var errInjected = errors.New("injected backend failure")

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off < f.to && off+int64(len(p)) > f.from {
		return 0, errInjected
	}
	return bytes.NewReader(f.data).ReadAt(p, off)
}

// slowReader delays every read, and counts the reads running at once.
type slowReader struct {
	r     io.ReaderAt
	delay time.Duration

	mu             sync.Mutex
	running, peak  int
	started, ended int
}

func (s *slowReader) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	s.running++
	s.started++
	s.peak = max(s.peak, s.running)
	s.mu.Unlock()
	time.Sleep(s.delay)
	defer func() {
		s.mu.Lock()
		s.running--
		s.ended++
		s.mu.Unlock()
	}()
	return s.r.ReadAt(p, off)
}

// dial opens a raw connection to the server.
func dial(t *testing.T, ts *testServer) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", ts.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

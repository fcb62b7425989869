package image

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// xzDecoderEnv names the environment variable that chooses the xz decoder:
// "go" forces the pure-Go decoder (an escape hatch, and how tests reach
// it); anything else uses the system's xz when it is on PATH.
const xzDecoderEnv = "PE_XZ"

// newXZReader returns a reader of the xz stream r decompressed, and a
// function releasing the decoder (for the system's xz: kill it if it is
// still running, and reap it).
//
// The system's xz is preferred because it decodes about twice as fast as
// the pure-Go decoder on one thread, and with -T0 (xz ≥ 5.4) decodes the
// blocks of a multi-block file, as `xz -T` and Compiler Explorer's
// tarballs have, on all cores (docs/benchmarks.md: an import 3× faster);
// an older xz accepts -T0 and decodes on one thread. Both
// stream, so memory stays bounded whatever the size of the tarball.
func newXZReader(ctx context.Context, r io.Reader) (io.Reader, func(), error) {
	if os.Getenv(xzDecoderEnv) != "go" {
		if path, err := exec.LookPath("xz"); err == nil {
			// xz failing to start (no fds, no memory, not executable)
			// leaves the input untouched: the Go decoder takes it.
			if p, err := startXZ(ctx, path, r); err == nil {
				return p, p.close, nil
			}
		}
	}
	xr, err := xz.NewReader(r)
	if err != nil {
		return nil, nil, fmt.Errorf("reading xz header: %w", err)
	}
	return xr, func() {}, nil
}

// xzProcess is a running `xz -dc` fed from a reader by a goroutine, read
// through its stdout.
type xzProcess struct {
	ctx    context.Context
	cmd    *exec.Cmd
	out    *os.File      // read end of xz's stdout
	buf    *bufio.Reader // over out: tar reads headers 512 bytes at a time
	stderr *capBuffer

	fed     chan struct{} // closed when the feeding goroutine has ended
	feedErr error         // the error reading the input, set before fed closes

	err       error // sticky: the end of the stream, or why it failed
	waited    bool
	closeOnce sync.Once
}

func startXZ(ctx context.Context, path string, r io.Reader) (*xzProcess, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("xz: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("xz: %w", err)
	}
	// A larger pipe lets xz's threads run ahead of the tar reader;
	// best effort, the default 64 KiB works too.
	if rc, err := outR.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
	p := &xzProcess{
		ctx:    ctx,
		cmd:    exec.Command(path, "-dc", "-T0"),
		out:    outR,
		buf:    bufio.NewReaderSize(outR, 256<<10),
		stderr: &capBuffer{max: 4 << 10},
		fed:    make(chan struct{}),
	}
	p.cmd.Args[0] = "xz" // xz names itself by argv[0] in its messages
	p.cmd.Stdin = inR
	p.cmd.Stdout = outW
	p.cmd.Stderr = p.stderr
	err = p.cmd.Start()
	// The child holds its own copies; the parent's must go so that EOF
	// and EPIPE reach the right side.
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, fmt.Errorf("starting xz: %w", err)
	}
	go func() {
		defer close(p.fed)
		_, err := io.Copy(inW, r)
		// EPIPE: xz stopped reading, it has failed or was killed; its own
		// error, or Close, says why.
		if err != nil && !errors.Is(err, syscall.EPIPE) {
			p.feedErr = err
		}
		inW.Close()
	}()
	return p, nil
}

func (p *xzProcess) Read(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	if err := p.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := p.buf.Read(b)
	if err == io.EOF {
		err = p.finish()
	} else if err != nil {
		err = fmt.Errorf("xz: reading its output: %w", err)
	}
	if err != nil {
		p.err = err
	}
	return n, err
}

// finish reaps xz once its output has ended, and returns io.EOF when it
// decoded the whole stream, else the reason it did not.
func (p *xzProcess) finish() error {
	werr := p.cmd.Wait()
	p.waited = true
	<-p.fed // xz read its input to the end, or died: the copy stops now
	if p.feedErr != nil {
		// xz saw its input end early; the reason is the input's error.
		if ctxErr := p.ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("xz: reading input: %w", p.feedErr)
	}
	if werr != nil {
		return xzError(p.stderr.String(), werr)
	}
	return io.EOF
}

// xzError turns what xz printed when it failed into an error worded as the
// pure-Go decoder's are: "xz: " and the reason, with the end of input cut
// short as io.ErrUnexpectedEOF.
func xzError(stderr string, werr error) error {
	msg, _, _ := strings.Cut(strings.TrimSpace(stderr), "\n")
	msg = strings.TrimPrefix(msg, "xz: ")
	msg = strings.TrimPrefix(msg, "(stdin): ")
	switch {
	case msg == "":
		return fmt.Errorf("xz: %w", werr)
	case msg == "Unexpected end of input":
		return fmt.Errorf("xz: %w", io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("xz: %s", strings.ToLower(msg[:1])+msg[1:])
}

// close stops xz if it is still running, reaps it and waits for the
// feeding goroutine, so no process or goroutine outlives the tar walk.
// The goroutine may be in the middle of a Read of the input, which close
// waits for: the caller may close or reuse the input once walkTar returns.
func (p *xzProcess) close() {
	p.closeOnce.Do(func() {
		if !p.waited {
			p.cmd.Process.Kill()
			p.out.Close() // unblocks nothing we hold, frees the fd
			p.cmd.Wait()
			p.waited = true
		} else {
			p.out.Close()
		}
		<-p.fed
	})
}

// capBuffer keeps the first max bytes written to it: enough of xz's
// stderr for a message, whatever it prints.
type capBuffer struct {
	mu  sync.Mutex
	b   bytes.Buffer
	max int
}

func (c *capBuffer) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := c.max - c.b.Len(); room > 0 {
		c.b.Write(b[:min(len(b), room)])
	}
	return len(b), nil
}

func (c *capBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b.String()
}

package engine

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// arrival is one write to a Live writer: which stream, what, when.
type arrival struct {
	stream string
	data   string
	at     time.Time
}

// arrivals records the writes to a Live's Stdout and Stderr.
type arrivals struct {
	mu  sync.Mutex
	all []arrival
	// onWrite, when set, sees each write (with the lock held).
	onWrite func(a arrival)
}

func (r *arrivals) writer(stream string) *arrivalWriter { return &arrivalWriter{r, stream} }

type arrivalWriter struct {
	r      *arrivals
	stream string
}

func (w *arrivalWriter) Write(p []byte) (int, error) {
	w.r.mu.Lock()
	defer w.r.mu.Unlock()
	a := arrival{w.stream, string(p), time.Now()}
	w.r.all = append(w.r.all, a)
	if w.r.onWrite != nil {
		w.r.onWrite(a)
	}
	return len(p), nil
}

// text is everything stream received.
func (r *arrivals) text(stream string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, a := range r.all {
		if a.stream == stream {
			b.WriteString(a.data)
		}
	}
	return b.String()
}

// when is the arrival of the first write of stream holding s.
func (r *arrivals) when(stream, s string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, a := range r.all {
		if a.stream == stream {
			b.WriteString(a.data)
			if strings.Contains(b.String(), s) {
				return a.at
			}
		}
	}
	return time.Time{}
}

func (r *arrivals) live() *Live {
	return &Live{Stdout: r.writer("out"), Stderr: r.writer("err")}
}

// TestVMLiveOutput runs a program that writes to both streams, sleeps,
// and writes again, booted, restored from the boot snapshot and from an
// image's snapshot: the first lines reach the caller's writers while the
// program sleeps, each stream in order and apart, and the writers get
// exactly the result's output.
func TestVMLiveOutput(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	for _, tc := range launchCases(t, f) {
		t.Run(tc.name, func(t *testing.T) {
			var rec arrivals
			live := rec.live()
			var started time.Time
			live.OnStart = func() { started = time.Now() }
			res := run(t, tc.e, &RunRequest{
				Overrides: Overrides{Cmd: sh("echo out1; echo err1 >&2; sleep 3; echo out2; echo err2 >&2; echo err3 >&2")},
				Live:      live, Snapshot: tc.snap,
			})
			if started.IsZero() || started.After(rec.when("out", "out1")) {
				t.Errorf("OnStart called at %v, the first line came at %v", started, rec.when("out", "out1"))
			}
			if res.Launch != tc.launch {
				t.Errorf("launch %s, want %s", res.Launch, tc.launch)
			}
			if got := [2]string{rec.text("out"), rec.text("err")}; got != [2]string{"out1\nout2\n", "err1\nerr2\nerr3\n"} {
				t.Errorf("streamed stdout, stderr = %q", got)
			}
			if got := [2]string{rec.text("out"), rec.text("err")}; got != [2]string{string(res.Stdout), string(res.Stderr)} {
				t.Errorf("streamed %q, the result has %q, %q", got, res.Stdout, res.Stderr)
			}
			for _, first := range []time.Time{rec.when("out", "out1"), rec.when("err", "err1")} {
				for _, second := range []time.Time{rec.when("out", "out2"), rec.when("err", "err2")} {
					if first.IsZero() || second.Sub(first) < 2*time.Second {
						t.Errorf("a line written before the sleep arrived %v before one written after it, want ~3s (arrivals %v)", second.Sub(first), rec.all)
					}
				}
			}
		})
	}
}

// yes is an endless reader of "y\n", counting what was read of it.
type yes struct{ n atomic.Int64 }

func (y *yes) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "y\n"[i%2]
	}
	n := len(p) &^ 1
	y.n.Add(int64(n))
	return n, nil
}

// TestVMLiveStdinAndSignals streams an endless stdin to head -n 3 (the
// run ends, having read little of it), and forwards SIGTERM to a program
// that handles it.
func TestVMLiveStdinAndSignals(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)

	t.Run("stdin", func(t *testing.T) {
		var in yes
		var rec arrivals
		live := rec.live()
		live.Stdin = &in
		res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: []string{"head", "-n", "3"}}, Live: live})
		if res.ExitStatus() != 0 || rec.text("out") != "y\ny\ny\n" || string(res.Stdout) != "y\ny\ny\n" {
			t.Errorf("exit %d, streamed %q, result %q", res.ExitStatus(), rec.text("out"), res.Stdout)
		}
		if n := in.n.Load(); n > 1<<20 {
			t.Errorf("%d bytes of stdin read for a program that took 6", n)
		}
	})

	t.Run("signal", func(t *testing.T) {
		sigs := make(chan syscall.Signal, 1)
		var rec arrivals
		rec.onWrite = func(a arrival) {
			if strings.Contains(a.data, "ready") {
				sigs <- syscall.SIGTERM
			}
		}
		live := rec.live()
		live.Signals = sigs
		start := time.Now()
		res := run(t, e, &RunRequest{
			Overrides: Overrides{Cmd: sh("trap 'echo got TERM; exit 3' TERM; echo ready; sleep 60 & wait")},
			Live:      live, Timeout: 90 * time.Second,
		})
		if res.ExitStatus() != 3 || string(res.Stdout) != "ready\ngot TERM\n" {
			t.Errorf("exit %d, stdout %q; want 3 after the forwarded SIGTERM", res.ExitStatus(), res.Stdout)
		}
		if d := time.Since(start); d > 50*time.Second {
			t.Errorf("the run took %v: the signal did not end the sleep", d)
		}
	})
}

// TestVMLiveBackPressure has a program write 1 MiB to stdout faster than
// the caller's writer takes it: the program is held back (it ends only
// once the writer has had nearly all of it), the engine hands on at most
// one frame at a time, and the output arrives whole.
func TestVMLiveBackPressure(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	const size = 1 << 20
	var rec arrivals
	var outBytes int
	var atDone int
	var maxWrite int
	rec.onWrite = func(a arrival) {
		if a.stream == "out" {
			outBytes += len(a.data)
			maxWrite = max(maxWrite, len(a.data))
			time.Sleep(20 * time.Millisecond) // about 1.6 MB/s
		}
		if a.stream == "err" && strings.Contains(a.data, "done") {
			atDone = outBytes
		}
	}
	res := run(t, e, &RunRequest{
		Overrides: Overrides{Cmd: sh("head -c 1048576 /dev/zero; echo done >&2")},
		Live:      rec.live(), MaxOutput: size, Timeout: time.Minute,
	})
	if res.ExitStatus() != 0 || len(res.Stdout) != size {
		t.Fatalf("exit %d, %d bytes of stdout", res.ExitStatus(), len(res.Stdout))
	}
	if got := rec.text("out"); len(got) != size || !bytes.Equal([]byte(got), res.Stdout) {
		t.Errorf("streamed %d bytes, want the result's %d", len(got), size)
	}
	// In flight when the program ended: the credit window, the pipe and
	// what the drain holds.
	if slack := size - atDone; slack > streamWindow+256<<10 {
		t.Errorf("the program ended with %d bytes not yet taken by the writer: it was not held back", slack)
	}
	if maxWrite > guest.StreamMaxPayload {
		t.Errorf("a write of %d bytes: the engine holds more than a frame", maxWrite)
	}
}

// TestVMLiveChannelOutOfReach checks that the program cannot reach the
// data channel (the init's alone, like the I/O disk): forged frames go
// nowhere and the run's result is its own.
func TestVMLiveChannelOutOfReach(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	var rec arrivals
	res := run(t, e, &RunRequest{
		Overrides: Overrides{Cmd: sh(`for d in /dev/vport* /dev/hvc* /dev/virtio-ports/*; do [ -c "$d" ] && printf '\004\000\000\000\000' 2>/dev/null > "$d" && echo "wrote $d"; done; echo done; exit 7`)},
		Live:      rec.live(),
	})
	if diff := cmp.Diff("done\n", string(res.Stdout)); diff != "" || res.ExitStatus() != 7 {
		t.Errorf("exit %d, stdout (-want +got):\n%s", res.ExitStatus(), diff)
	}
	if rec.text("out") != string(res.Stdout) {
		t.Errorf("streamed %q", rec.text("out"))
	}
}

// channelForger is QEMU with a hostile guest's bytes on the data channel
// before the real guest's: what a guest whose init were taken over could
// send.
type channelForger struct {
	vmm.Backend
	forged []byte
}

func (b *channelForger) Start(ctx context.Context, cfg *vmm.Config) (vmm.Machine, error) {
	if cfg.Stream != nil {
		// The VMM's end: what is written here, the engine reads as the
		// guest's.
		cfg.Stream.Write(b.forged)
	}
	return b.Backend.Start(ctx, cfg)
}

// TestVMLiveForgedChannel runs programs while a hostile guest writes
// garbage and forged frames (an "end", output) on the channel: the run
// and its result are the program's, the garbage ends the stream only,
// and the caller then gets the result's output.
func TestVMLiveForgedChannel(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	frame := func(typ guest.FrameType, p string) []byte {
		b, err := guest.AppendFrame(nil, guest.Frame{Type: typ, Payload: []byte(p)})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name     string
		forged   []byte
		streamed string // what the caller's Stdout gets
	}{
		{"garbage", append([]byte("\x04\x06\x00\x00\x00exit 0"), bytes.Repeat([]byte{0xff}, 1<<16)...), "real\n"},
		{"huge length", []byte("\x01\xff\xff\xff\x7f"), "real\n"},
		{"forged frames", slices.Concat(frame(guest.FrameStarted, ""), frame(guest.FrameStdout, "forged\n"), frame(guest.FrameEnd, "")), "forged\nreal\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New(Options{
				Images:     StaticSource{"busybox": {Reference: "busybox", Digest: "sha256:test", EROFSPath: f.erofs, Config: busyboxConfig()}},
				Backend:    &channelForger{Backend: qemu.New(""), forged: tc.forged},
				Accel:      vmm.AccelTCG,
				KernelInfo: f.kernel, InitBinary: f.init,
				CacheDir: filepath.Join(f.dir, "cache"), TempDir: t.TempDir(),
				Log: testLogger(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			var rec arrivals
			res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("echo real; echo err >&2; exit 5")}, Live: rec.live()})
			if res.ExitStatus() != 5 || string(res.Stdout) != "real\n" || string(res.Stderr) != "err\n" || res.TimedOut {
				t.Errorf("result: exit %d, stdout %q, stderr %q, timed out %v; want the program's", res.ExitStatus(), res.Stdout, res.Stderr, res.TimedOut)
			}
			if got := rec.text("out"); got != tc.streamed {
				t.Errorf("streamed stdout %q, want %q", got, tc.streamed)
			}
		})
	}
}

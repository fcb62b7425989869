package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/image"
)

// fakeRunner stands in for the engine where the tests need edge cases a
// VM cannot produce on demand (a run that blocks until released, a signal,
// a guest failure). Its "programs" are argv[0]:
//
//	echo ARGS...       stdout = ARGS joined by spaces and a newline
//	cat                stdout = stdin
//	ls                 stdout = the input files, one per line
//	write NAME TEXT    writes TEXT to the output directory as NAME
//	env                stdout = the environment the request asked for
//	block              waits until the test sends on release
//	kill N             killed by signal N
//	overtime           timed out
//	panic MSG          guest failure MSG
//	big N              N bytes of stdout
//	sleep MS           takes MS milliseconds
//	vmfail             fails as a VM that wrote no result (host paths and
//	                   console text in the error)
//	imagefail          fails as an image the cache cannot find (a host
//	                   path in the error)
//	badoutput          runs, but its output files are refused
//
// With RunRequest.Live it streams as the engine does: OnStart once the
// "program" starts (not for vmfail and imagefail, which fail before),
// and, once the run has its result, whatever of the result's stdout and
// stderr the program did not write live. These programs write live:
//
//	live MS ARG...     each ARG and a newline, MS milliseconds apart; an
//	                   ARG starting "err:" goes to stderr (without it)
//	liveblock TEXT     writes TEXT and a newline, then waits for release
//	flood N            writes N bytes of 'x' in 32 KiB writes
//	startfail          writes "starting", then fails as a VM error
//
// The request goes through the engine's own merge of the overrides
// first, so that what the engine refuses the fake refuses too.
// Every request it gets is recorded in order.
type fakeRunner struct {
	release chan struct{}
	started chan string // the first argument of each run, as it starts

	mu       sync.Mutex
	requests []engine.RunRequest
	running  int
	peak     int
}

func newFakeRunner() *fakeRunner {
	return &fakeRunner{release: make(chan struct{}), started: make(chan string, 100)}
}

func (f *fakeRunner) Run(ctx context.Context, r *engine.RunRequest) (*engine.RunResult, error) {
	var lw *fakeLive
	if r.Live != nil {
		lw = &fakeLive{Live: r.Live}
	}
	res, err := f.run(ctx, r, lw)
	if res != nil && lw != nil {
		// As the engine: the writers end up with exactly the result's
		// output.
		lw.write(true, res.Stdout[min(lw.stdout, len(res.Stdout)):])
		lw.write(false, res.Stderr[min(lw.stderr, len(res.Stderr)):])
	}
	return res, err
}

// fakeLive writes a fake run's live output and counts it.
type fakeLive struct {
	*engine.Live
	stdout, stderr int
}

func (l *fakeLive) start() {
	if l != nil && l.OnStart != nil {
		l.OnStart()
	}
}

func (l *fakeLive) write(stdout bool, b []byte) {
	if l == nil || len(b) == 0 {
		return
	}
	w, n := l.Stderr, &l.stderr
	if stdout {
		w, n = l.Stdout, &l.stdout
	}
	*n += len(b)
	if w != nil {
		w.Write(b)
	}
}

func (f *fakeRunner) run(ctx context.Context, r *engine.RunRequest, lw *fakeLive) (*engine.RunResult, error) {
	f.mu.Lock()
	f.requests = append(f.requests, *r)
	f.running++
	f.peak = max(f.peak, f.running)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.running--
		f.mu.Unlock()
	}()
	argv := append(append([]string{}, r.Entrypoint...), r.Cmd...)
	if len(argv) == 0 {
		return nil, fmt.Errorf("image %s: %w", r.Image, engine.ErrNoCommand)
	}
	if _, err := engine.MergeConfig(nil, r.Overrides, nil); err != nil {
		return nil, fmt.Errorf("image %s: %w", r.Image, err)
	}
	res := &engine.RunResult{
		Image:     engine.ImageInfo{Reference: r.Image, Digest: "sha256:" + fmt.Sprintf("%064x", 1)},
		Durations: map[string]time.Duration{"total": 1500 * time.Microsecond},
	}
	res.Rusage.UserMs = 1234
	// arg is argv[i], or "" for a missing one: the fuzzer sends any argv.
	arg := func(i int) string {
		if i < len(argv) {
			return argv[i]
		}
		return ""
	}
	select {
	case f.started <- argv[len(argv)-1]:
	default:
	}
	if argv[0] != "vmfail" && argv[0] != "imagefail" {
		lw.start()
	}
	switch argv[0] {
	case "live":
		ms, _ := strconv.Atoi(arg(1))
		for i, a := range argv[min(2, len(argv)):] {
			if i > 0 {
				select {
				case <-time.After(time.Duration(min(max(ms, 0), 10000)) * time.Millisecond):
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			}
			if t, ok := strings.CutPrefix(a, "err:"); ok {
				res.Stderr = append(res.Stderr, t+"\n"...)
				lw.write(false, []byte(t+"\n"))
			} else {
				res.Stdout = append(res.Stdout, a+"\n"...)
				lw.write(true, []byte(a+"\n"))
			}
		}
	case "liveblock":
		res.Stdout = []byte(arg(1) + "\n")
		lw.write(true, res.Stdout)
		select {
		case <-f.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	case "flood":
		n, _ := strconv.Atoi(arg(1))
		res.Stdout = bytes.Repeat([]byte("x"), min(max(n, 0), 64<<20))
		for b := res.Stdout; len(b) > 0 && ctx.Err() == nil; {
			k := min(len(b), 32<<10)
			lw.write(true, b[:k])
			b = b[k:]
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	case "startfail":
		lw.write(true, []byte("starting\n"))
		return nil, &engine.VMError{VMM: "qemu", Accel: "tcg", Err: errors.New("the VM died")}
	case "echo":
		res.Stdout = []byte(strings.Join(argv[1:], " ") + "\n")
	case "cat":
		if r.Stdin != nil {
			b, err := io.ReadAll(r.Stdin)
			if err != nil {
				return nil, err
			}
			res.Stdout = b
		}
	case "ls":
		filepath.WalkDir(r.InputDir, func(p string, d os.DirEntry, err error) error {
			if err == nil && p != r.InputDir {
				rel, _ := filepath.Rel(r.InputDir, p)
				res.Stdout = append(res.Stdout, rel+"\n"...)
			}
			return nil
		})
	case "write":
		// Through os.Root: the fuzzer names files such as ../../x.
		root, err := os.OpenRoot(r.OutputDir)
		if err != nil {
			return nil, err
		}
		defer root.Close()
		if err := root.MkdirAll(filepath.Dir(arg(1)), 0o755); err != nil {
			res.ExitCode, res.Error = 1, err.Error()
			break
		}
		if err := root.WriteFile(arg(1), []byte(arg(2)), 0o644); err != nil {
			res.ExitCode, res.Error = 1, err.Error()
		}
	case "env":
		res.Stdout = []byte(fmt.Sprintf("%q replace=%v workdir=%s", r.Env, r.ReplaceEnv, r.Workdir))
	case "block":
		select {
		case <-f.release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	case "kill":
		n, _ := strconv.Atoi(arg(1))
		res.Signal, res.ExitCode = "SIGKILL", 128+n
	case "overtime":
		res.TimedOut, res.Signal, res.ExitCode = true, "SIGKILL", 137
		res.Stdout = []byte("partial\n")
	case "panic":
		res.ExitCode, res.Error = guestSetupFailed, arg(1)
	case "sleep":
		ms, _ := strconv.Atoi(arg(1))
		select {
		case <-time.After(time.Duration(min(max(ms, 0), 60000)) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		res.Stdout = []byte("slept\n")
	case "vmfail":
		return nil, &engine.VMError{VMM: "qemu", Accel: "tcg", Err: errors.New("read /var/lib/pe-secret/run/io: the guest wrote no result"),
			Console: []byte("[    1.0] secret-console-line\n")}
	case "imagefail":
		return nil, fmt.Errorf("image %s: open /home/operator/.cache/pe/images/x/rootfs.erofs: %w", r.Image, image.ErrNotFound)
	case "badoutput":
		return res, fmt.Errorf("output directory %s: 20021 entries, over the limit", r.OutputDir)
	case "big":
		n, _ := strconv.Atoi(arg(1))
		res.Stdout = make([]byte, min(max(n, 0), 64<<20))
	default:
		res.ExitCode, res.Error = 127, argv[0]+": command not found"
	}
	return res, nil
}

// guestSetupFailed is the exit code the guest gives when pe's own part
// failed.
const guestSetupFailed = 125

func (f *fakeRunner) recorded() []engine.RunRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]engine.RunRequest{}, f.requests...)
}

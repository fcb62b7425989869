package engine

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/vmm"
)

// forgingBackend plays a guest whose program forges what the host reads:
// the result-ready line without the run's nonce, or a result without it.
type forgingBackend struct {
	// forgeResult writes a result without the nonce (and the real line);
	// otherwise the forged line comes first, then the real result and line.
	forgeResult bool
}

func (b *forgingBackend) Name() string { return "fake" }

func (b *forgingBackend) Start(ctx context.Context, cfg *vmm.Config) (vmm.Machine, error) {
	m := &fakeVM{done: make(chan struct{}), kill: make(chan struct{})}
	go func() {
		defer close(m.done)
		ioPath := cfg.Disks[1].Path
		// What a program that reaches the console (but not the disk)
		// would write: the line as it was before nonces.
		fmt.Fprintf(cfg.Console, "\n%s\n", guest.ResultReady)
		select {
		case <-time.After(100 * time.Millisecond):
		case <-m.kill:
			return
		}
		f, err := guest.OpenIOFile(ioPath)
		if err != nil {
			m.err = err
			return
		}
		req, err := f.Request()
		if err != nil {
			m.err = err
			f.Close()
			return
		}
		res := &guest.Result{ExitCode: 7, Nonce: req.Nonce}
		if b.forgeResult {
			res = &guest.Result{ExitCode: 0}
		}
		fmt.Fprintln(f.Stdout(), "real")
		m.err = f.WriteResult(res, "")
		f.Close()
		fmt.Fprintf(cfg.Console, "\n%s\r\n", guest.ResultReadyLine(req.Nonce))
		<-m.kill // the host stops the VM on the line
	}()
	return m, nil
}

// TestForgedResultReady checks the host trusts neither a result-ready
// line without the run's nonce (it does not end the wait) nor a result
// without it (an error, not a result).
func TestForgedResultReady(t *testing.T) {
	env := newFakeEnv(t)

	e, tmp := env.engine(t, &forgingBackend{}, Options{})
	res, err := e.Run(t.Context(), &RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"x"}}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("a forged line ended the run: %v", err)
	}
	if res.ExitStatus() != 7 || string(res.Stdout) != "real\n" {
		t.Errorf("exit %d, stdout %q; want the real 7, %q", res.ExitStatus(), res.Stdout, "real\n")
	}
	if left := walkFiles(tmp); len(left) > 0 {
		t.Errorf("files left behind: %q", left)
	}

	e, tmp = env.engine(t, &forgingBackend{forgeResult: true}, Options{})
	res, err = e.Run(t.Context(), &RunRequest{Image: "img", Overrides: Overrides{Cmd: []string{"x"}}, Timeout: 10 * time.Second})
	var vmErr *VMError
	if !errors.As(err, &vmErr) || !errors.Is(err, guest.ErrBadResponse) {
		t.Fatalf("a result without the nonce: %+v, %v; want a VMError wrapping ErrBadResponse", res, err)
	}
	t.Logf("error: %v", err)
	if left := walkFiles(tmp); len(left) > 0 {
		t.Errorf("files left behind: %q", left)
	}
}

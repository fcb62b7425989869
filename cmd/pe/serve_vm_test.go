package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pe-project/pe/engine/enginetest"
)

// worker is a pe serve process.
type worker struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

// startWorker runs pe serve (this test binary as pe) with args, its
// temporary files in tmp, and returns once it listens.
func startWorker(t *testing.T, f *enginetest.Fixture, cache, tmp string, args ...string) *worker {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"serve", "--listen", "127.0.0.1:0", "--accel", "tcg", "--slots", "1",
		"--run-timeout", "2m", "--preset", "demo=" + f.EROFS}, args...)...)
	cmd.Env = append(os.Environ(), "PE_TEST_RUN_MAIN=1", "PE_INIT="+f.Init, "PE_CACHE_DIR="+cache, "TMPDIR="+tmp)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &worker{cmd: cmd, done: make(chan error, 1)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-w.done
	})
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`pe serve: (http://[^/]+)/`)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
			if testing.Verbose() {
				fmt.Fprintln(os.Stderr, "pe serve:", sc.Text())
			}
		}
		w.done <- cmd.Wait()
	}()
	select {
	case w.url = <-addr:
	case <-time.After(time.Minute):
		t.Fatal("pe serve printed no address in a minute")
	}
	return w
}

func (w *worker) health(t *testing.T) (int, string) {
	t.Helper()
	resp, err := http.Get(w.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (w *worker) waitHealth(t *testing.T, status int, body string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, b := w.health(t)
		if st == status && b == body {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz %d %q after %v, want %d %q", st, b, within, status, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// running returns the runs holding a VM slot.
func (w *worker) running(t *testing.T) int {
	resp, err := http.Get(w.url + "/api/v2/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Running int }
	json.NewDecoder(resp.Body).Decode(&st)
	return st.Running
}

// runResult is the answer to one run.
type runResult struct {
	status int
	stdout string
	err    error
}

// run posts a run of script in the demo preset.
func (w *worker) run(script string) chan runResult {
	ch := make(chan runResult, 1)
	go func() {
		body, _ := json.Marshal(map[string]any{"cmd": []string{"sh", "-c", script}})
		client := &http.Client{Timeout: 3 * time.Minute}
		resp, err := client.Post(w.url+"/api/v2/runi/amd64/linux/demo", "application/json", strings.NewReader(string(body)))
		if err != nil {
			ch <- runResult{err: err}
			return
		}
		defer resp.Body.Close()
		var r struct{ Stdout *string }
		b, _ := io.ReadAll(resp.Body)
		json.Unmarshal(b, &r)
		res := runResult{status: resp.StatusCode}
		if r.Stdout != nil {
			res.stdout = *r.Stdout
		}
		if resp.StatusCode != 200 {
			res.stdout = string(b)
		}
		ch <- res
	}()
	return ch
}

func (w *worker) waitRunning(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for w.running(t) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the run took no slot in 2 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// descendants returns the processes below pid, found by their parent.
func descendants(pid int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces.
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		f := strings.Fields(rest)
		if len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	var out []int
	var walk func(int)
	walk = func(p int) {
		for c, pp := range parent {
			if pp == p {
				out = append(out, c)
				walk(c)
			}
		}
	}
	walk(pid)
	return out
}

// alive returns those of pids that still exist (zombies excluded).
func alive(pids []int) []string {
	var out []string
	for _, p := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		if f := strings.Fields(rest); len(f) > 0 && f[0] == "Z" {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		out = append(out, fmt.Sprintf("%d %s", p, strings.TrimSpace(string(comm))))
	}
	return out
}

// leftovers returns the work directories in tmp.
func leftovers(tmp string) []string {
	var out []string
	for _, pat := range []string{"pe-run-*", "pe-serve-*"} {
		m, _ := filepath.Glob(filepath.Join(tmp, pat))
		out = append(out, m...)
	}
	return out
}

// TestServeWorkerVM runs pe serve processes as a balancer sees them, over
// real VMs: not ready until the boot snapshot is made, then ready; on
// SIGTERM a run in progress finishes while /healthz answers "draining" and
// new runs get 503, and pe serve exits 0; killed with SIGKILL during a
// run, it leaves no QEMU behind and the next pe serve sweeps its
// directories; a second SIGTERM during a drain stops it at once.
func TestServeWorkerVM(t *testing.T) {
	f := enginetest.Setup(t)
	cache, tmp := t.TempDir(), t.TempDir()

	// A fresh cache: the boot snapshot is made at start.
	const grace = 3 * time.Second
	w := startWorker(t, f, cache, tmp, "--drain-grace", grace.String())
	if st, b := w.health(t); st != 503 || !strings.HasPrefix(b, "not ready: boot snapshot not made yet\n") {
		t.Errorf("healthz at start: %d %q, want 503 not ready: boot snapshot not made yet", st, b)
	}
	w.waitHealth(t, 200, "ready\n", 5*time.Minute)

	// Drain: the run in progress finishes.
	res := w.run("sleep 3; echo finished")
	w.waitRunning(t)
	start := time.Now()
	w.cmd.Process.Signal(syscall.SIGTERM)
	w.waitHealth(t, 503, "draining\n", 10*time.Second)
	// Within the grace the balancer may still send runs: taken.
	inGrace := w.run("echo in-grace")
	time.Sleep(time.Until(start.Add(grace + 500*time.Millisecond)))
	if r := <-w.run("echo new"); r.status != 503 || !strings.Contains(r.stdout, "Draining") {
		t.Errorf("a new run after the drain's grace: %d %q, want 503 Draining", r.status, r.stdout)
	}
	if r := <-res; r.err != nil || r.status != 200 || r.stdout != "finished\n" {
		t.Errorf("the run in progress at SIGTERM: %+v, want 200 finished", r)
	}
	if r := <-inGrace; r.err != nil || r.status != 200 || r.stdout != "in-grace\n" {
		t.Errorf("a run sent during the drain's grace: %+v, want 200 in-grace", r)
	}
	if err := <-w.done; err != nil {
		t.Errorf("pe serve after the drain: %v, want exit status 0", err)
	}
	w.done <- nil
	if d := time.Since(start); d < grace {
		t.Errorf("pe serve exited %v after SIGTERM, within its --drain-grace %v", d, grace)
	}

	// SIGKILL during a run: its QEMU dies with it.
	w = startWorker(t, f, cache, tmp)
	w.waitHealth(t, 200, "ready\n", 2*time.Minute)
	res = w.run("sleep 60")
	w.waitRunning(t)
	// The run holds its slot a moment before its VMM starts.
	var kids []int
	for deadline := time.Now().Add(time.Minute); len(kids) == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		kids = descendants(w.cmd.Process.Pid)
	}
	if len(kids) == 0 {
		t.Fatal("no VMM process under pe serve during a run")
	}
	w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.done
	w.done <- nil
	select {
	case r := <-res:
		if r.err == nil {
			t.Errorf("the run of a killed worker: %+v, want a failed request", r)
		}
	case <-time.After(10 * time.Second):
		t.Error("the request of a killed worker hangs")
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(alive(kids)) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if left := alive(kids); len(left) > 0 {
		t.Errorf("processes of a pe serve killed with SIGKILL still run: %q", left)
	}
	left := leftovers(tmp)
	if len(left) == 0 {
		t.Error("a pe serve killed during a run left no work directory: nothing for the sweep to do")
	}

	// The next worker sweeps them; a second SIGTERM stops it at once.
	w = startWorker(t, f, cache, tmp)
	w.waitHealth(t, 200, "ready\n", 2*time.Minute)
	for _, d := range left {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: left by the killed worker, not swept by the next one (%v)", d, err)
		}
	}
	res = w.run("sleep 60")
	w.waitRunning(t)
	kids = descendants(w.cmd.Process.Pid)
	w.cmd.Process.Signal(syscall.SIGTERM)
	w.waitHealth(t, 503, "draining\n", 10*time.Second)
	start = time.Now()
	w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-w.done:
		w.done <- err
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 125 {
			t.Errorf("pe serve after a second SIGTERM: %v, want exit status 125", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("pe serve still runs 20 s after a second SIGTERM")
	}
	t.Logf("stopped %v after the second SIGTERM", time.Since(start))
	if r := <-res; r.status == 200 {
		t.Errorf("the run cut off by the second SIGTERM: %+v, want no result", r)
	}
	if left := alive(kids); len(left) > 0 {
		t.Errorf("processes left after a second SIGTERM: %q", left)
	}
	if left := leftovers(tmp); len(left) > 0 {
		t.Errorf("left after a second SIGTERM: %q", left)
	}
}

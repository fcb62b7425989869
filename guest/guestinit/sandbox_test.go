package guestinit

import (
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/guest/guesttest"
	"golang.org/x/sys/unix"
)

// The sandbox tests run the real stage-2 isolation on the host, as root,
// over a busybox tree. The init's role runs in a child process of the test
// binary with its own mount namespace, so every mount it makes vanishes
// with it; the stage-2 child is the test binary again (see TestMain).

const childEnv = "PE_SANDBOX_TEST_CHILD"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == Stage2Arg {
		Stage2()
	}
	if os.Getenv(devProbeEnv) != "" {
		devProbe()
		os.Exit(0)
	}
	if os.Getenv(childEnv) != "" {
		sandboxChild()
		os.Exit(0)
	}
	code := m.Run()
	if fixture.dir != "" {
		os.RemoveAll(fixture.dir)
	}
	os.Exit(code)
}

// childParams is what a test asks the init-role child to do.
type childParams struct {
	Dir       string         `json:"dir"` // world-traversable scratch dir holding lower/ and self
	Request   *guest.Request `json:"request"`
	Stdin     []byte         `json:"stdin"`
	NoIDMap   bool           `json:"no_idmap"`
	MaxOutput int64          `json:"max_output"` // cap of the test's stdout and stderr writers
	// PreStart starts the sandbox before the request is known, as the
	// init does for a snapshot, and checks that a second Start fails.
	PreStart bool `json:"pre_start"`
	// PreSpawn spawns the stage-2 child before anything else, as the init
	// does for a boot snapshot, and checks that a second Spawn fails; Run
	// then starts it.
	PreSpawn bool `json:"pre_spawn"`
	// KillChild, with PreStart, kills the waiting stage-2 child before Run.
	KillChild bool `json:"kill_child"`
	// NoDevDir gives the sandbox a DevDir that does not exist, which the
	// stage-2 child cannot bind devices from: only Start runs.
	NoDevDir bool `json:"no_dev_dir"`
}

// childResult is what the child reports.
type childResult struct {
	Result      *guest.Result     `json:"result"`
	Stdout      string            `json:"stdout"`
	Stderr      string            `json:"stderr"`
	Outputs     map[string]string `json:"outputs"`
	IDMapped    bool              `json:"idmapped"`
	StdoutTotal int64             `json:"stdout_total"`
	// HeldNS: after Run, the program's mount namespace was still held,
	// and Close let it go.
	HeldNS bool `json:"held_ns"`
	// SpawnedRan: with PreSpawn, the program ran in the child Spawn made.
	SpawnedRan bool   `json:"spawned_ran"`
	StartErr   string `json:"start_err"`
	Err        string `json:"err"`
}

// sandboxChild plays the init: builds the container root over dir/lower
// and runs the request in a Sandbox.
func sandboxChild() {
	var p childParams
	var out childResult
	defer func() { json.NewEncoder(os.Stdout).Encode(&out) }()
	if err := json.NewDecoder(os.Stdin).Decode(&p); err != nil {
		out.Err = err.Error()
		return
	}
	l := rootLayout{
		lower:   filepath.Join(p.Dir, "lower"),
		idLower: filepath.Join(p.Dir, "idlower"),
		rw:      filepath.Join(p.Dir, "rw"),
		root:    filepath.Join(p.Dir, "root"),
		output:  filepath.Join(p.Dir, "output"),
	}
	uid, gid := outerID(p.Request.UID), outerID(p.Request.GID)
	stdout, stderr := &capWriter{limit: p.MaxOutput}, &capWriter{limit: p.MaxOutput}
	sb := &Sandbox{
		Root:   l.root,
		DevDir: "/dev",
		Self:   filepath.Join(p.Dir, "self"),
		Log:    newLogger(os.Stderr, true),
		Prepare: func(usernsFD int) error {
			var err error
			out.IDMapped, err = mountRoot(l, rootOptions{tmpfsSize: 64 << 20, uid: uid, gid: gid, noIDMap: p.NoIDMap}, usernsFD, newLogger(os.Stderr, true))
			return err
		},
	}
	var ran []int // the stage-2 children's PIDs, after Run
	var stdin io.Reader
	if p.Stdin != nil {
		stdin = bytes.NewReader(p.Stdin)
	}
	if p.NoDevDir {
		sb.DevDir = filepath.Join(p.Dir, "nodev")
		if err := sb.Start(); err != nil {
			out.StartErr = err.Error()
		}
		return
	}
	if p.PreSpawn {
		if err := sb.Spawn(); err != nil {
			out.Err = err.Error()
			return
		}
		if err := sb.Spawn(); err == nil {
			out.Err = "a second Spawn succeeded"
			return
		}
		spawned := sb.spawned.cmd.Process.Pid
		defer func() { out.SpawnedRan = out.Result != nil && len(ran) == 1 && ran[0] == spawned }()
	}
	if p.PreStart {
		if err := sb.Start(); err != nil {
			out.Err = err.Error()
			return
		}
		if err := sb.Start(); err == nil {
			out.Err = "a second Start succeeded"
			return
		}
		if p.KillChild {
			sb.child.cmd.Process.Kill()
			err := <-sb.child.exited
			sb.child.exited <- err // Run waits for it too
		}
	}
	out.Result = sb.Run(p.Request, stdin, stdout, stderr)
	for _, c := range sb.retired {
		ran = append(ran, c.cmd.Process.Pid)
	}
	out.HeldNS = len(sb.retired) == 1 && sb.retired[0].mountNS != nil
	held := sb.retired
	sb.Close()
	out.HeldNS = out.HeldNS && sb.retired == nil && held[0].mountNS == nil
	out.Stdout, out.Stderr = stdout.String(), stderr.String()
	out.StdoutTotal = stdout.total
	out.Outputs = map[string]string{}
	filepath.WalkDir(l.output, func(path string, d fs.DirEntry, err error) error {
		if err == nil && path != l.output {
			rel, _ := filepath.Rel(l.output, path)
			b, _ := os.ReadFile(path)
			out.Outputs[rel] = string(b)
		}
		return nil
	})
}

// sandboxDir prepares a scratch dir with a busybox tree in lower/ and a
// copy of the test binary as self, all traversable by the container's
// unprivileged IDs.
func sandboxDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static)")
	}
	if out, _ := exec.Command("file", "-L", bb).Output(); len(out) > 0 && !bytes.Contains(out, []byte("statically linked")) {
		t.Skipf("%s is not static (apt-get install busybox-static)", bb)
	}
	dir, err := os.MkdirTemp("", "pe-sandbox-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(dir, 0o755))
	lower := filepath.Join(dir, "lower")
	for _, d := range []string{"bin", "etc", "home/alice", "root", "var/tmp"} {
		must(os.MkdirAll(filepath.Join(lower, d), 0o755))
	}
	must(os.Chmod(filepath.Join(lower, "root"), 0o700))
	must(guesttest.InstallBusybox(filepath.Join(lower, "bin"), bb))
	must(os.WriteFile(filepath.Join(lower, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"), 0o644))
	must(os.WriteFile(filepath.Join(lower, "etc/group"), []byte("root:x:0:\nalice:x:1000:\n"), 0o644))
	must(os.WriteFile(filepath.Join(lower, "etc/motd"), []byte("hello\n"), 0o644))
	must(os.Chown(filepath.Join(lower, "home/alice"), 1000, 1000))
	// An image symlink pointing out of the root must stay inside it.
	must(os.Symlink("../../../../var/tmp", filepath.Join(lower, "tmp")))
	self, err := os.Executable()
	must(err)
	must(copyFile(self, filepath.Join(dir, "self"), 0o755))
	return dir
}

func copyFile(src, dst string, mode fs.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// runSandbox runs req in the init-role child.
func runSandbox(t *testing.T, dir string, p childParams) *childResult {
	t.Helper()
	p.Dir = dir
	if p.Request.Timeout == 0 {
		p.Request.Timeout = 10 * time.Second
	}
	if p.Request.MaxOutput == 0 {
		p.Request.MaxOutput = guest.DefaultMaxOutput
	}
	in, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), filepath.Join(dir, "self"))
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS}
	// Each child gets its own scratch mounts.
	for _, d := range []string{"idlower", "rw", "root", "output"} {
		os.RemoveAll(filepath.Join(dir, d))
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	var res childResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("child output %q: %v\n%s", stdout.String(), err, stderr.String())
	}
	if res.Err != "" {
		t.Fatalf("child: %s\n%s", res.Err, stderr.String())
	}
	t.Logf("child log:\n%s", stderr.String())
	return &res
}

func shRequest(script string) *guest.Request {
	return &guest.Request{Argv: []string{"sh", "-c", script}, Env: []string{"PATH=/bin"}}
}

// capWriter keeps up to limit bytes (0 = all) and counts the rest, like the
// I/O file's stream writers.
// (No embedded bytes.Buffer: io.Copy would use its ReadFrom instead.)
type capWriter struct {
	buf          bytes.Buffer
	limit, total int64
}

func (w *capWriter) String() string { return w.buf.String() }

func (w *capWriter) Write(p []byte) (int, error) {
	w.total += int64(len(p))
	if w.limit > 0 {
		if room := w.limit - int64(w.buf.Len()); room < int64(len(p)) {
			w.buf.Write(p[:max(room, 0)])
			return len(p), nil
		}
	}
	return w.buf.Write(p)
}

func TestSandbox(t *testing.T) {
	dir := sandboxDir(t)
	user := func(r *guest.Request) *guest.Request { r.UID, r.GID = 1000, 1000; return r }
	for _, tc := range []struct {
		name      string
		p         childParams
		exit      int
		signal    string
		timedOut  bool
		stdout    string // exact, unless stdoutHas is set
		stdoutHas []string
		stderrHas string
		errHas    string
		outputs   map[string]string
		idmapped  bool
	}{
		{
			name:   "exit code and streams",
			p:      childParams{Request: shRequest(`echo hello; echo oops >&2; exit 3`)},
			exit:   3,
			stdout: "hello\n", stderrHas: "oops",
			idmapped: true,
		},
		{
			name:     "container root owns the image's root files",
			p:        childParams{Request: shRequest(`id; stat -c '%u:%g %a' / /etc/motd /root; echo more >> /etc/motd && cat /etc/motd`)},
			stdout:   "uid=0(root) gid=0(root)\n0:0 755\n0:0 644\n0:0 700\nhello\nmore\n",
			idmapped: true,
		},
		{
			name:     "an unprivileged user",
			p:        childParams{Request: user(shRequest(`id; echo $HOME; touch /etc/motd 2>&1; touch ~/f && echo home-ok`))},
			stdout:   "uid=1000(alice) gid=1000(alice)\n/home/alice\ntouch: /etc/motd: Permission denied\nhome-ok\n",
			idmapped: true,
		},
		{
			name:   "without idmapping the image's files belong to nobody",
			p:      childParams{Request: shRequest(`stat -c '%u:%g' /etc/motd; echo x >> /etc/motd 2>&1 || echo denied`), NoIDMap: true},
			stdout: "65534:65534\ndenied\n",
		},
		{
			name: "env, working directory (created) and stdin",
			p: childParams{
				Request: &guest.Request{Argv: []string{"sh", "-c", `echo "$A|$PATH"; pwd; cat`}, Env: []string{"PATH=/bin", "A=x y"}, Cwd: "/work/dir"},
				Stdin:   []byte("from stdin\n"),
			},
			stdout: "x y|/bin\n/work/dir\nfrom stdin\n", idmapped: true,
		},
		{
			name:   "no stdin reads as empty",
			p:      childParams{Request: shRequest(`readlink /proc/self/fd/0; cat; echo done`)},
			stdout: "/dev/null\ndone\n", idmapped: true,
		},
		{
			name:     "the waiting child killed before the program",
			p:        childParams{Request: shRequest(`echo never`), PreStart: true, KillChild: true},
			exit:     ExitSetupFailed,
			errHas:   "the stage-2 child ended before it got the program",
			idmapped: true,
		},
		{
			name: "started before the request",
			p: childParams{
				Request:  user(&guest.Request{Argv: []string{"sh", "-c", `hostname; id -u; pwd; cat`}, Env: []string{"PATH=/bin"}, Cwd: "/srv/w", Hostname: "later"}),
				Stdin:    []byte("in\n"),
				PreStart: true,
			},
			stdout: "later\n1000\n/srv/w\nin\n", idmapped: true,
		},
		{
			name: "spawned before the root exists",
			p: childParams{
				Request:  user(&guest.Request{Argv: []string{"sh", "-c", `hostname; id -u; pwd; cat; echo $$`}, Env: []string{"PATH=/bin"}, Cwd: "/srv/w", Hostname: "later"}),
				Stdin:    []byte("in\n"),
				PreSpawn: true,
			},
			stdout: "later\n1000\n/srv/w\nin\n1\n", idmapped: true,
		},
		{
			name: "spawned, then started before the request",
			p: childParams{
				Request:  shRequest(`cat /etc/motd >/dev/null && echo ok`),
				PreSpawn: true, PreStart: true,
			},
			stdout: "ok\n", idmapped: true,
		},
		{
			name: "hostname and a PID namespace of its own",
			p:    childParams{Request: &guest.Request{Argv: []string{"sh", "-c", `hostname; echo $$; set -- /proc/[0-9]*; echo $#`}, Env: []string{"PATH=/bin"}, Hostname: "box"}},
			// The shell expands the glob itself, so it alone is there to
			// see (a pipeline here raced its own processes' start).
			stdout: "box\n1\n1\n", idmapped: true,
		},
		{
			name:   "only harmless devices",
			p:      childParams{Request: shRequest(`ls /dev | tr '\n' ' '; echo; echo x > /dev/null && head -c 3 /dev/zero | od -An -c`)},
			stdout: "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \n  \\0  \\0  \\0\n", idmapped: true,
		},
		{
			name: "no way to the init's devices or kernel settings",
			p: childParams{Request: shRequest(`
				mknod /tmp/vdb b 254 16 2>/dev/null && echo mknod-ok
				mount -t devtmpfs d /mnt 2>/dev/null && echo devtmpfs-ok
				mount -t sysfs s /mnt 2>/dev/null && echo sysfs-ok
				echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo sysctl-ok
				echo h > /proc/sysrq-trigger 2>/dev/null && echo sysrq-ok
				mount -o remount,rw /proc/sys 2>/dev/null && echo remount-ok
				umount /dev/null 2>/dev/null; ls /dev/vd* /dev/sd* 2>/dev/null
				echo done`)},
			stdout: "done\n", idmapped: true,
		},
		{
			name:     "a symlinked /tmp stays inside the root",
			p:        childParams{Request: shRequest(`readlink /tmp; touch /tmp/x && ls /var/tmp`)},
			stdout:   "../../../../var/tmp\nx\n",
			idmapped: true,
		},
		{
			name:     "output directory",
			p:        childParams{Request: user(shRequest(`echo result > /run/pe/output/r.txt && mkdir /run/pe/output/d && ls -ld /run/pe/output | cut -c1-10`))},
			stdout:   "drwxr-xr-x\n",
			outputs:  map[string]string{"r.txt": "result\n", "d": ""},
			idmapped: true,
		},
		{
			name:      "command not found",
			p:         childParams{Request: &guest.Request{Argv: []string{"nosuchcmd", "x"}, Env: []string{"PATH=/bin:/usr/bin"}}},
			exit:      127,
			stderrHas: `exec: "nosuchcmd": executable file not found in $PATH`,
			errHas:    `exec: "nosuchcmd": executable file not found in $PATH`,
			idmapped:  true,
		},
		{
			name:     "path not found",
			p:        childParams{Request: &guest.Request{Argv: []string{"/bin/nope"}}},
			exit:     127,
			errHas:   `exec: "/bin/nope": no such file or directory`,
			idmapped: true,
		},
		{
			name:     "not executable",
			p:        childParams{Request: &guest.Request{Argv: []string{"/etc/motd"}}},
			exit:     126,
			errHas:   `exec: "/etc/motd": permission denied`,
			idmapped: true,
		},
		{
			name:     "PATH default when the environment has none",
			p:        childParams{Request: &guest.Request{Argv: []string{"echo", "hi"}}},
			stdout:   "hi\n",
			idmapped: true,
		},
		{
			name: "time limit: killed, output so far kept",
			p: childParams{Request: func() *guest.Request {
				r := shRequest(`echo before; sleep 30 & sleep 30; echo after`)
				r.Timeout = 500 * time.Millisecond
				return r
			}()},
			exit:     137,
			signal:   "SIGKILL",
			timedOut: true,
			stdout:   "before\n",
			idmapped: true,
		},
		{
			name:      "output past the cap is dropped while the program runs on",
			p:         childParams{Request: shRequest(`head -c 1000000 /dev/zero; echo end >&2`), MaxOutput: 1000},
			stdoutHas: []string{strings.Repeat("\x00", 1000)},
			stderrHas: "end",
			idmapped:  true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := runSandbox(t, dir, tc.p)
			r := res.Result
			if tc.p.PreSpawn && !res.SpawnedRan {
				t.Errorf("the program did not run in the child Spawn made")
			}
			if r.ExitCode != tc.exit || r.Signal != tc.signal || r.TimedOut != tc.timedOut {
				t.Errorf("exit %d signal %q timed out %v, want %d %q %v (error %q)", r.ExitCode, r.Signal, r.TimedOut, tc.exit, tc.signal, tc.timedOut, r.Error)
			}
			if tc.stdoutHas == nil && res.Stdout != tc.stdout {
				t.Errorf("stdout:\n%s", cmp.Diff(tc.stdout, res.Stdout))
			}
			for _, s := range tc.stdoutHas {
				if res.Stdout != s {
					t.Errorf("stdout is %d bytes %.40q, want %.40q", len(res.Stdout), res.Stdout, s)
				}
			}
			if !strings.Contains(res.Stderr, tc.stderrHas) {
				t.Errorf("stderr %q, want it to contain %q", res.Stderr, tc.stderrHas)
			}
			if tc.errHas == "" && r.Error != "" || !strings.Contains(r.Error, tc.errHas) {
				t.Errorf("error %q, want %q", r.Error, tc.errHas)
			}
			if tc.outputs != nil {
				if diff := cmp.Diff(tc.outputs, res.Outputs); diff != "" {
					t.Errorf("outputs (-want +got):\n%s", diff)
				}
			}
			if res.IDMapped != tc.idmapped {
				t.Errorf("idmapped = %v, want %v", res.IDMapped, tc.idmapped)
			}
			if !res.HeldNS {
				t.Error("the program's mount namespace was not held from its exit until Close")
			}
			if tc.p.MaxOutput > 0 && res.StdoutTotal != 1000000 {
				t.Errorf("the program wrote %d bytes, want all 1000000", res.StdoutTotal)
			}
		})
	}
}

// A stage-2 child that cannot build the program's mount namespace fails
// Start, with its reason, rather than every later Run: a snapshot is
// never taken of a sandbox that cannot run anything.
func TestSandboxStartReportsSetupFailure(t *testing.T) {
	dir := sandboxDir(t)
	res := runSandbox(t, dir, childParams{Request: shRequest(`true`), NoDevDir: true})
	if want := "sandbox: bind /dev/null"; !strings.Contains(res.StartErr, want) {
		t.Errorf("Start error %q, want it to contain %q", res.StartErr, want)
	}
}

// A run with a terminal: the program's three streams are the secondary
// end of a pseudo-terminal of its own devpts, its controlling terminal,
// of the requested size and owned by its user; what the terminal echoes
// and the program writes all come on stdout, with the terminal's "\r\n".
func TestSandboxTTY(t *testing.T) {
	dir := sandboxDir(t)
	script := `tty; stty size; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-tty
stat -c 'owner %u:%g %a' "$(tty)"
read line; echo "got $line"; echo to-stderr >&2
# the controlling terminal: /dev/tty opens it
echo via-dev-tty > /dev/tty; exit 4`
	for _, tc := range []struct {
		name  string
		p     childParams
		owner string
	}{
		{"root, spawned first as for a boot snapshot", childParams{PreSpawn: true}, "owner 0:5 620"},
		{"an unprivileged user", childParams{PreStart: true}, "owner 1000:5 620"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.p.Request = shRequest(script)
			if tc.owner != "owner 0:5 620" {
				tc.p.Request.UID, tc.p.Request.GID = 1000, 1000
			}
			tc.p.Request.Stream = &guest.StreamRequest{TTY: &guest.WindowSize{Rows: 33, Cols: 101}}
			tc.p.Stdin = []byte("hello\n")
			res := runSandbox(t, dir, tc.p)
			if r := res.Result; r.ExitCode != 4 || r.Error != "" {
				t.Errorf("exit %d error %q, want 4 and none", r.ExitCode, r.Error)
			}
			for _, want := range []string{"/dev/pts/0\r\n", "33 101\r\n", "all-tty\r\n", tc.owner + "\r\n", "got hello\r\n", "to-stderr\r\n", "via-dev-tty\r\n"} {
				if !strings.Contains(res.Stdout, want) {
					t.Errorf("stdout %q lacks %q", res.Stdout, want)
				}
			}
			if res.Stderr != "" {
				t.Errorf("stderr %q, want nothing: the terminal is all the program's streams", res.Stderr)
			}
		})
	}
}

// The terminal's output goes to the same capped writer as a pipe's: past
// the cap it is counted, not kept, and the program runs on to its end.
func TestSandboxTTYOutputCap(t *testing.T) {
	dir := sandboxDir(t)
	r := shRequest(`head -c 100000 /dev/zero; exit 5`)
	r.Stream = &guest.StreamRequest{TTY: &guest.WindowSize{Rows: 24, Cols: 80}}
	res := runSandbox(t, dir, childParams{Request: r, MaxOutput: 1000})
	if res.Result.ExitCode != 5 {
		t.Errorf("exit %d (error %q), want 5", res.Result.ExitCode, res.Result.Error)
	}
	if res.Stdout != strings.Repeat("\x00", 1000) || res.StdoutTotal != 100000 {
		t.Errorf("stdout %d bytes %.20q of %d written, want 1000 NULs of 100000", len(res.Stdout), res.Stdout, res.StdoutTotal)
	}
}

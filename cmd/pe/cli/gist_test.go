package cli

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/gist/gisttest"
)

// gistFixtures is the fake GitHub API's recorded answers.
const gistFixtures = "../../../gist/testdata"

const (
	helloGist = "aa5a315d61ae9438b18d"
	helloRev  = "57a7f021a713b1c5a6a199b54cc514735d2d462f"
	helloOld  = "3a1e4c8f9b0d2e6f7a8b9c0d1e2f3a4b5c6d7e8f"
)

// gistEnv points pe at a fake GitHub API, with no token and a fresh
// cache, and returns the server.
func gistEnv(t *testing.T) *gisttest.Server {
	t.Helper()
	s := gisttest.New(t, gistFixtures)
	t.Setenv("PE_GITHUB_API", s.URL)
	t.Setenv("PE_CACHE_DIR", t.TempDir())
	t.Setenv("GITHUB_TOKEN", "")
	t.Setenv("GH_TOKEN", "")
	t.Setenv("GH_CONFIG_DIR", t.TempDir())
	return s
}

// readTree maps the names of the files in dir to their contents.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got[e.Name()] = string(b)
	}
	return got
}

func TestGistFetchCmd(t *testing.T) {
	s := gistEnv(t)
	work := t.TempDir()
	t.Chdir(work)

	// The default directory is named after the ID; the URL form works.
	stdout, stderr, err := run(t, "", "gist", "fetch", "https://gist.github.com/octocat/"+helloGist)
	if err != nil {
		t.Fatalf("gist fetch: %v\n%s", err, stderr)
	}
	if stdout != helloRev+"\n" {
		t.Errorf("stdout %q, want the revision", stdout)
	}
	want := map[string]string{
		"input.txt": "line from stdin\n",
		"main.sh":   "echo \"$GREETING from $(pwd)\"\ncat\n",
		"pe.toml":   "image = \"busybox\"\ncmd = \"sh main.sh\"\nstdin = \"input.txt\"\nenv = \"\"\"\n# a comment\nGREETING=hello\n\"\"\"\n",
	}
	if diff := cmp.Diff(want, readTree(t, filepath.Join(work, helloGist))); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}

	// A revision, into -o DIR; --github-api wins over PE_GITHUB_API.
	t.Setenv("PE_GITHUB_API", "http://127.0.0.1:1")
	stdout, _, err = run(t, "", "gist", "fetch", "--github-api", s.URL, helloGist+"/"+helloOld, "-o", "old")
	if err != nil || stdout != helloOld+"\n" {
		t.Fatalf("gist fetch at a revision: %q, %v", stdout, err)
	}
	if got := readTree(t, filepath.Join(work, "old"))["main.sh"]; got != "echo old\n" {
		t.Errorf("old main.sh: %q", got)
	}
	t.Setenv("PE_GITHUB_API", s.URL)

	// A pe.toml with a mistake: the files are written, the error names
	// the key and line.
	s.AddGist(t, "bad0bad0bad0bad0bad0", strings.Repeat("1", 40), map[string]string{
		"pe.toml": "image = \"busybox\"\ncmd = \"echo 'oops\"\n", "main.sh": "true\n",
	})
	_, _, err = run(t, "", "gist", "fetch", "bad0bad0bad0bad0bad0")
	if err == nil || !strings.Contains(err.Error(), "pe.toml line 2: cmd: the command has an unbalanced single quote") {
		t.Errorf("gist with a bad pe.toml: %v", err)
	}
	if _, err := os.Stat(filepath.Join(work, "bad0bad0bad0bad0bad0", "main.sh")); err != nil {
		t.Errorf("the files of a gist with a bad pe.toml were not written: %v", err)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"gist", "fetch", "0123456789abcdef0123"}, "gist not found"},
		{[]string{"gist", "fetch", "not/a/gist"}, "is not a gist"},
		{[]string{"gist", "fetch", helloGist, "-o", helloGist}, "not empty"},
		{[]string{"gist", "fetch", "e71b8c2d4f6a8b0c1d2e"}, `"../evil"`},
	} {
		if _, _, err := run(t, "", c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pe %q: %v, want an error with %q", c.args, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(work), "evil")); err == nil {
		t.Errorf("a malicious gist wrote outside its directory")
	}

	// Rate limited: the message says when to retry and that a token helps.
	s.SetRateLimited(time.Now().Add(time.Hour))
	_, _, err = run(t, "", "gist", "fetch", helloGist, "-o", "limited")
	if err == nil || !strings.Contains(err.Error(), "retry after") || !strings.Contains(err.Error(), "GITHUB_TOKEN") {
		t.Errorf("rate limited: %v", err)
	}
}

func TestGistCreateCmd(t *testing.T) {
	s := gistEnv(t)
	dir := t.TempDir()
	hello := filepath.Join(dir, "hello.sh")
	toml := filepath.Join(dir, "pe.toml")
	os.WriteFile(hello, []byte("echo hello\n"), 0o644)
	os.WriteFile(toml, []byte("image = \"busybox\"\ncmd = \"sh hello.sh\"\n"), 0o644)

	// No token: refused before asking GitHub.com; a server that wants one
	// says so.
	t.Setenv("PE_GITHUB_API", "")
	if _, _, err := run(t, "", "gist", "create", hello); err == nil || !strings.Contains(err.Error(), "needs a token") {
		t.Errorf("create without a token: %v", err)
	}
	t.Setenv("PE_GITHUB_API", s.URL)
	if _, _, err := run(t, "", "gist", "create", hello); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("create without a token: %v", err)
	}

	s.Token = "ghp_test"
	t.Setenv("GITHUB_TOKEN", "ghp_test")
	stdout, _, err := run(t, "", "gist", "create", "-d", "created by pe", hello, toml)
	if err != nil {
		t.Fatal(err)
	}
	want := "url: https://gist.github.com/8f1a2b3c4d5e6f708192a3b4c5d6e7f8\n" +
		"revision: d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0\n" +
		"link: #gist=8f1a2b3c4d5e6f708192a3b4c5d6e7f8/d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0\n"
	if stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", stdout, want)
	}
	body := string(s.Created())
	for _, w := range []string{`"description":"created by pe"`, `"public":false`, `"hello.sh":{"content":"echo hello\n"}`} {
		if !strings.Contains(body, w) {
			t.Errorf("POST body %s lacks %s", body, w)
		}
	}

	os.WriteFile(toml, []byte("image = \"busybox\"\ncmnd = \"sh hello.sh\"\n"), 0o644)
	if _, _, err := run(t, "", "gist", "create", "--public", hello, toml); err == nil || !strings.Contains(err.Error(), "pe.toml line 2: cmnd: unknown key") {
		t.Errorf("create with a bad pe.toml: %v", err)
	}
	if _, _, err := run(t, "", "gist", "create", dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("create with a directory: %v", err)
	}
}

// captured is what a fake engine saw of a run.
type captured struct {
	req   engine.RunRequest
	opts  engine.Options
	stdin string
	// streamedStdin: stdin came as Live.Stdin (-i), not whole.
	streamedStdin bool
	input         map[string]string
	platform      string
}

// runCaptured runs pe in-process with an engine that records the request
// instead of booting a VM.
func runCaptured(t *testing.T, args ...string) (*captured, string, error) {
	t.Helper()
	var got *captured
	a := &app{lookupEnv: func(k string) (string, bool) { return "", false }}
	a.runEngine = func(ctx context.Context, opts engine.Options, req *engine.RunRequest) (*engine.RunResult, error) {
		got = &captured{req: *req, opts: opts}
		stdin := req.Stdin
		if req.Live != nil && req.Live.Stdin != nil {
			stdin = req.Live.Stdin
			got.streamedStdin = true
		}
		if stdin != nil {
			b, _ := io.ReadAll(stdin)
			got.stdin = string(b)
		}
		got.req.Stdin, got.req.Live = nil, nil
		if req.InputDir != "" {
			got.input = readTree(t, req.InputDir)
		}
		if fs, ok := opts.Images.(*engine.FileSource); ok {
			if cs, ok := fs.Next.(*engine.CacheSource); ok {
				got.platform = cs.Options.Platform
			}
		}
		res := &engine.RunResult{Stdout: []byte("ran\n")}
		if req.Live != nil && req.Live.Stdout != nil {
			// The engine writes the output to Live's writers.
			req.Live.Stdout.Write(res.Stdout)
		}
		return res, nil
	}
	cmd := newRoot(a)
	var out, errOut strings.Builder
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader("from pe's stdin"))
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err := cmd.ExecuteContext(t.Context())
	return got, out.String(), err
}

func TestRunGist(t *testing.T) {
	gistEnv(t)
	helloFiles := map[string]string{
		"input.txt": "line from stdin\n",
		"main.sh":   "echo \"$GREETING from $(pwd)\"\ncat\n",
		"pe.toml":   "image = \"busybox\"\ncmd = \"sh main.sh\"\nstdin = \"input.txt\"\nenv = \"\"\"\n# a comment\nGREETING=hello\n\"\"\"\n",
	}
	for _, tt := range []struct {
		name     string
		args     []string
		req      engine.RunRequest
		stdin    string
		platform string
	}{
		{"as pe.toml says", []string{"run", "--gist", helloGist}, engine.RunRequest{
			Image:     "busybox",
			Overrides: engine.Overrides{Cmd: []string{"sh", "main.sh"}, Env: []string{"GREETING=hello"}, Workdir: "/run/pe/input"},
			Timeout:   engine.DefaultTimeout, MemoryMiB: 512, CPUs: 1, MaxOutput: 1 << 20,
		}, "line from stdin\n", ""},
		{"flags override", []string{"run", "--gist", "https://gist.github.com/octocat/" + helloGist, "--image", "alpine", "-e", "GREETING=bye", "-e", "X=1",
			"-w", "/tmp", "-i", "--timeout", "3s", "--memory", "1G", "--entrypoint", "", "--platform", "linux/arm64", "sh", "-x", "main.sh"}, engine.RunRequest{
			Image: "alpine",
			Overrides: engine.Overrides{Entrypoint: []string{}, Cmd: []string{"sh", "-x", "main.sh"},
				Env: []string{"GREETING=hello", "GREETING=bye", "X=1"}, Workdir: "/tmp"},
			Timeout: 3 * time.Second, MemoryMiB: 1024, CPUs: 1, MaxOutput: 1 << 20,
		}, "from pe's stdin", "linux/arm64"},
		{"old revision", []string{"run", "--gist", helloGist + "/" + helloOld}, engine.RunRequest{
			Image:     "busybox",
			Overrides: engine.Overrides{Cmd: []string{"sh", "main.sh"}, Workdir: "/run/pe/input"},
			Timeout:   engine.DefaultTimeout, MemoryMiB: 512, CPUs: 1, MaxOutput: 1 << 20,
		}, "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, stdout, err := runCaptured(t, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			if stdout != "ran\n" {
				t.Errorf("stdout %q", stdout)
			}
			in := got.req.InputDir
			got.req.InputDir = ""
			if diff := cmp.Diff(tt.req, got.req); diff != "" {
				t.Errorf("request (-want +got):\n%s", diff)
			}
			if got.stdin != tt.stdin || got.platform != tt.platform {
				t.Errorf("stdin %q, platform %q; want %q, %q", got.stdin, got.platform, tt.stdin, tt.platform)
			}
			if tt.name != "old revision" {
				if diff := cmp.Diff(helloFiles, got.input); diff != "" {
					t.Errorf("input directory (-want +got):\n%s", diff)
				}
			}
			if _, err := os.Stat(in); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the gist's temporary directory %s is left: %v", in, err)
			}
		})
	}
}

func TestRunFiles(t *testing.T) {
	t.Setenv("PE_CACHE_DIR", t.TempDir())
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "pe.toml"), []byte(`image = "gcc:14"
cmd = ["gcc", "-o", "/run/pe/output/hello", "hello.c"]
entrypoint = []
stdin = "in.txt"
timeout = "1m"
memory = "1GiB"
platform = "linux/arm64"
[env]
CFLAGS = "-O2"
`), 0o644)
	os.WriteFile(filepath.Join(dir, "hello.c"), []byte("int main(){}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "in.txt"), []byte("input"), 0o644)
	got, _, err := runCaptured(t, "run", "--files", dir, "--timeout", "5s")
	if err != nil {
		t.Fatal(err)
	}
	want := engine.RunRequest{
		Image: "gcc:14", InputDir: dir,
		Overrides: engine.Overrides{Entrypoint: []string{}, Cmd: []string{"gcc", "-o", "/run/pe/output/hello", "hello.c"},
			Env: []string{"CFLAGS=-O2"}, Workdir: "/run/pe/input"},
		Timeout: 5 * time.Second, MemoryMiB: 1024, CPUs: 1, MaxOutput: 1 << 20,
	}
	if diff := cmp.Diff(want, got.req); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	if got.stdin != "input" || got.platform != "linux/arm64" {
		t.Errorf("stdin %q, platform %q", got.stdin, got.platform)
	}
	if _, err := os.Stat(filepath.Join(dir, "hello.c")); err != nil {
		t.Errorf("--files DIR was changed: %v", err)
	}

	// A stdin that is a symbolic link out of the directory is refused.
	os.Remove(filepath.Join(dir, "in.txt"))
	os.Symlink("/etc/passwd", filepath.Join(dir, "in.txt"))
	if _, _, err := runCaptured(t, "run", "--files", dir); err == nil || !strings.Contains(err.Error(), "stdin") {
		t.Errorf("stdin linking out of the directory: %v", err)
	}
}

func TestRunExampleErrors(t *testing.T) {
	gistEnv(t)
	empty := t.TempDir()
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "pe.toml"), []byte("image = \"x\"\n\ntimeout = \"soon\"\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"run", "--gist", helloGist, "--files", empty}, "choose one"},
		{[]string{"run", "--gist", helloGist, "--input", empty}, "drop --input"},
		{[]string{"run", "--image", "busybox", "busybox"}, "--image goes with --gist or --files"},
		{[]string{"run", "--gist", "nope"}, "--gist"},
		{[]string{"run", "--gist", "0123456789abcdef0123"}, "gist not found"},
		{[]string{"run", "--files", empty}, "has no pe.toml: add one"},
		{[]string{"run", "--files", bad}, "pe.toml line 3: timeout"},
		{[]string{"run", "--files", filepath.Join(empty, "missing")}, "--files"},
	} {
		if _, _, err := runCaptured(t, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pe %q: %v, want an error with %q", c.args, err, c.want)
		}
	}
	// A gist may not name a local image.
	s := gisttest.New(t, gistFixtures)
	t.Setenv("PE_GITHUB_API", s.URL)
	s.AddGist(t, "10ca110ca110ca110ca1", strings.Repeat("2", 40), map[string]string{"pe.toml": "image = \"/var/lib/x.erofs\"\n"})
	if _, _, err := runCaptured(t, "run", "--gist", "10ca110ca110ca110ca1"); err == nil || !strings.Contains(err.Error(), "is a local file") {
		t.Errorf("gist naming a local image: %v", err)
	}
	if _, _, err := runCaptured(t, "run", "--gist", "10ca110ca110ca110ca1", "--image", "busybox"); err != nil {
		t.Errorf("gist naming a local image, with --image: %v", err)
	}

	// A gist may ask for at most gistMaxTimeout and gistMaxMemoryMiB unless
	// the user gives the flag; --files, the user's own, may ask for more.
	s.AddGist(t, "9ee0d9ee0d9ee0d9ee0d", strings.Repeat("3", 40), map[string]string{"pe.toml": "image = \"busybox\"\ntimeout = \"1h\"\n"})
	s.AddGist(t, "3e3e3e3e3e3e3e3e3e3e", strings.Repeat("4", 40), map[string]string{"pe.toml": "image = \"busybox\"\nmemory = \"20GiB\"\n"})
	for _, c := range []struct {
		args []string
		want string // "" for success
	}{
		{[]string{"run", "--gist", "9ee0d9ee0d9ee0d9ee0d"}, "asks for timeout 1h0m0s, more than a gist may without --timeout"},
		{[]string{"run", "--gist", "3e3e3e3e3e3e3e3e3e3e"}, "asks for memory 20GiB, more than a gist may without --memory"},
		{[]string{"run", "--gist", "9ee0d9ee0d9ee0d9ee0d", "--timeout", "1h"}, ""},
		{[]string{"run", "--gist", "3e3e3e3e3e3e3e3e3e3e", "--memory", "1G"}, ""},
	} {
		_, _, err := runCaptured(t, c.args...)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("pe %q: %v, want %q", c.args, err, c.want)
		}
	}
	greedy := t.TempDir()
	os.WriteFile(filepath.Join(greedy, "pe.toml"), []byte("image = \"busybox\"\ntimeout = \"1h\"\nmemory = \"20GiB\"\n"), 0o644)
	if got, _, err := runCaptured(t, "run", "--files", greedy); err != nil || got.req.Timeout != time.Hour || got.req.MemoryMiB != 20<<10 {
		t.Errorf("--files asking for 1h and 20GiB: %+v, %v", got, err)
	}

	// Without a pe.toml, --image is enough.
	got, _, err := runCaptured(t, "run", "--files", empty, "--image", "busybox", "ls")
	if err != nil || got.req.Image != "busybox" || !cmp.Equal(got.req.Cmd, []string{"ls"}) || got.req.Workdir != "/run/pe/input" {
		t.Errorf("--files without pe.toml, with --image: %+v, %v", got, err)
	}
}

// TestRunGistVM runs a gist served by the fake GitHub API in a VM: the
// files at /run/pe/input and as the working directory, the command, the
// environment and the standard input from pe.toml.
func TestRunGistVM(t *testing.T) {
	s := gistEnv(t)
	dir := vmSetup(t)
	img := filepath.Join(dir, "busybox.erofs")
	const id, rev = "fee1deadfee1deadfee1", "0123456789abcdef0123456789abcdef01234567"
	s.AddGist(t, id, rev, map[string]string{
		"pe.toml":   "image = \"busybox\"\ncmd = \"sh main.sh 'two words'\"\nstdin = \"input.txt\"\nenv = \"GREETING=hello\"\ntimeout = \"20s\"\n",
		"main.sh":   "echo \"$GREETING from $(pwd): $1\"\ncat\ncat data.txt\n",
		"input.txt": "line from stdin\n",
		"data.txt":  "a gist file\n",
	})
	// The test image is a local file, which only --image may name.
	stdout, stderr, err := run(t, "", "run", "--accel", "tcg", "--gist", "https://gist.github.com/octocat/"+id, "--image", img)
	if err != nil {
		t.Fatalf("pe run --gist: %v\nstderr: %s", err, stderr)
	}
	want := "hello from /run/pe/input: two words\nline from stdin\na gist file\n"
	if stdout != want {
		t.Errorf("stdout %q, want %q (stderr %q)", stdout, want, stderr)
	}
}

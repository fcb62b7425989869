package gist_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/gist/gisttest"
)

func TestWriteDir(t *testing.T) {
	g := &gist.Gist{ID: "abc", Files: []gist.File{
		{Name: "a.txt", Content: []byte("text\n")},
		{Name: "run.sh", Content: []byte("#!/bin/sh\necho hi\n")},
		{Name: "pe.toml", Content: []byte("image = \"busybox\"\n")},
	}}
	for _, tt := range []struct {
		name  string
		setup func(dir string)
	}{
		{"new directory", func(string) {}},
		{"empty directory", func(dir string) { os.Mkdir(dir, 0o700) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			tt.setup(dir)
			if err := g.WriteDir(dir); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				fi, _ := e.Info()
				b, _ := os.ReadFile(filepath.Join(dir, e.Name()))
				got[e.Name()] = fi.Mode().String() + " " + string(b)
			}
			want := map[string]string{
				"a.txt":   "-rw-r--r-- text\n",
				"run.sh":  "-rwxr-xr-x #!/bin/sh\necho hi\n",
				"pe.toml": "-rw-r--r-- image = \"busybox\"\n",
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("files (-want +got):\n%s", diff)
			}
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
				t.Errorf("directory mode: %v %v", fi.Mode(), err)
			}
			assertNoTemp(t, filepath.Dir(dir))
		})
	}
}

func TestWriteDirRefuses(t *testing.T) {
	for _, name := range []string{"../evil", "/etc/passwd", "a/b", ".", "..", "", "a\x00b", `..\evil`, strings.Repeat("x", 256)} {
		parent := t.TempDir()
		dir := filepath.Join(parent, "out")
		g := &gist.Gist{ID: "abc", Files: []gist.File{{Name: "ok.txt", Content: []byte("x")}, {Name: name, Content: []byte("pwned")}}}
		if err := g.WriteDir(dir); err == nil {
			t.Errorf("WriteDir with a file named %q succeeded", name)
		}
		ents, _ := os.ReadDir(parent)
		if len(ents) != 0 {
			t.Errorf("WriteDir with a file named %q left %v", name, ents)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(parent), "evil")); err == nil {
			t.Errorf("a file was written outside the directory")
		}
	}
	// A directory that is not empty is left alone.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "mine"), []byte("keep"), 0o644)
	g := &gist.Gist{ID: "abc", Files: []gist.File{{Name: "mine", Content: []byte("theirs")}}}
	if err := g.WriteDir(dir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("WriteDir into a full directory: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "mine")); string(b) != "keep" {
		t.Errorf("WriteDir overwrote a file")
	}
	// Duplicate names.
	g = &gist.Gist{ID: "abc", Files: []gist.File{{Name: "a", Content: []byte("1")}, {Name: "a", Content: []byte("2")}}}
	if err := g.WriteDir(filepath.Join(t.TempDir(), "out")); err == nil {
		t.Errorf("WriteDir with two files named a succeeded")
	}
}

// TestMaliciousGist checks a gist answer with a file named ../evil is
// refused before anything is written.
func TestMaliciousGist(t *testing.T) {
	s := gisttest.New(t, "testdata")
	_, err := newClient(s).Fetch(t.Context(), evilID, "")
	if err == nil || !strings.Contains(err.Error(), `"../evil"`) {
		t.Errorf("Fetch of a gist with a file ../evil: %v", err)
	}
}

func TestGistConfig(t *testing.T) {
	s := gisttest.New(t, "testdata")
	g, err := newClient(s).Fetch(t.Context(), helloID, "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := g.Config()
	if err != nil {
		t.Fatal(err)
	}
	want := &gist.Config{Image: "busybox", Cmd: []string{"sh", "main.sh"}, Stdin: "input.txt", Env: []string{"GREETING=hello"}}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("Config (-want +got):\n%s", diff)
	}

	g = &gist.Gist{ID: "x", Files: []gist.File{{Name: "pe.toml", Content: []byte("image = \"a\"\n\nstdin = \"missing.txt\"\n")}}}
	_, err = g.Config()
	var ce *gist.ConfigError
	if !errors.As(err, &ce) || ce.Key != "stdin" || ce.Line != 3 || !strings.Contains(ce.Msg, "not a file of the gist") {
		t.Errorf("stdin naming no file: %v", err)
	}
	g = &gist.Gist{ID: "x", Files: []gist.File{{Name: "main.c"}}}
	if _, err := g.Config(); !errors.Is(err, gist.ErrNoConfig) {
		t.Errorf("no pe.toml: %v, want ErrNoConfig", err)
	}
}

func TestTokenFromEnv(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("GITHUB_TOKEN", "")
	t.Setenv("GH_TOKEN", "")
	t.Setenv("GH_CONFIG_DIR", dir)
	if tok := gist.TokenFromEnv(); tok != "" {
		t.Errorf("no token anywhere: %q", tok)
	}
	hosts := `ghe.example.com:
    oauth_token: ghe_wrong
github.com:
    users:
        someone:
            oauth_token: nested_is_ignored
    git_protocol: https
    oauth_token: "gho_fromgh"  # a comment
    user: someone
`
	os.WriteFile(filepath.Join(dir, "hosts.yml"), []byte(hosts), 0o600)
	if tok := gist.TokenFromEnv(); tok != "gho_fromgh" {
		t.Errorf("from gh's hosts.yml: %q", tok)
	}
	os.WriteFile(filepath.Join(dir, "hosts.yml"), []byte("github.com:\n    user: someone\n    git_protocol: https\n"), 0o600)
	if tok := gist.TokenFromEnv(); tok != "" {
		t.Errorf("hosts.yml without a token (keyring): %q", tok)
	}
	t.Setenv("GH_TOKEN", "gh_env")
	if tok := gist.TokenFromEnv(); tok != "gh_env" {
		t.Errorf("GH_TOKEN: %q", tok)
	}
	t.Setenv("GITHUB_TOKEN", "github_env")
	if tok := gist.TokenFromEnv(); tok != "github_env" {
		t.Errorf("GITHUB_TOKEN: %q", tok)
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

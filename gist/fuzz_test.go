package gist_test

import (
	"errors"
	"io/fs"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/internal/units"
)

// FuzzParseConfig checks pe.toml parsing never panics, fails only with a
// ConfigError, and returns only valid configs. The committed corpus in
// testdata/fuzz/FuzzParseConfig holds one file per error kind.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		"image = \"busybox\"\ncmd = \"sh main.sh\"\nstdin = \"in.txt\"\nenv = \"\"\"\nA=1\n# c\n\"\"\"\n",
		"image = \"gcc:14\"\ncmd = [\"gcc\", \"a.c\"]\nentrypoint = []\ntimeout = \"1m\"\nmemory = \"1G\"\nplatform = \"linux/amd64\"\n[env]\nA = 1\n",
		"image = 1", "cmd = \"x\"", "image = \"x\"\nfoo = 1", "image = \"x\"\ncmd = \"'\"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := gist.ParseConfig(data)
		if err != nil {
			var ce *gist.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a ConfigError", err, err)
			}
			if ce.Line < 0 || ce.Line > strings.Count(string(data), "\n")+1 {
				t.Fatalf("error %v: line %d out of the file", err, ce.Line)
			}
			return
		}
		if c.Image == "" || strings.ContainsAny(c.Image, " \t\n\x00") {
			t.Fatalf("image %q accepted", c.Image)
		}
		for _, e := range c.Env {
			if name, _, ok := strings.Cut(e, "="); !ok || name == "" || strings.ContainsAny(name, " \t\r\n\x00") {
				t.Fatalf("env entry %q accepted", e)
			}
		}
		if c.Stdin != "" && !fs.ValidPath(c.Stdin) {
			t.Fatalf("stdin %q accepted", c.Stdin)
		}
		if c.Timeout < 0 {
			t.Fatalf("timeout %v accepted", c.Timeout)
		}
		if c.Memory != "" {
			if n, err := units.ParseSize(c.Memory); err != nil || n <= 0 {
				t.Fatalf("memory %q accepted", c.Memory)
			}
		}
	})
}

// FuzzParseID checks ParseID returns only valid IDs and revisions, which
// read back the same.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"aa5a315d61ae9438b18d", "aa5a315d61ae9438b18d/57a7f021a713b1c5a6a199b54cc514735d2d462f",
		"https://gist.github.com/octocat/aa5a315d61ae9438b18d", "https://api.github.com/gists/aa5a315d61ae9438b18d",
		"https://programexplorer.org/#gist=aa5a315d61ae9438b18d", "#gist=../x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, rev, err := gist.ParseID(s)
		if err != nil {
			return
		}
		if id == "" || len(id) > 64 || strings.Trim(id, "0123456789abcdef") != "" {
			t.Fatalf("ParseID(%q): id %q", s, id)
		}
		if rev != "" && (len(rev) != 40 || strings.Trim(rev, "0123456789abcdef") != "") {
			t.Fatalf("ParseID(%q): revision %q", s, rev)
		}
		again := id
		if rev != "" {
			again += "/" + rev
		}
		id2, rev2, err := gist.ParseID(again)
		if err != nil || id2 != id || rev2 != rev {
			t.Fatalf("ParseID(%q) = %q, %q, %v; want %q, %q", again, id2, rev2, err, id, rev)
		}
	})
}

// FuzzSplitCommand checks that words split from a command, quoted again,
// split back to the same words.
func FuzzSplitCommand(f *testing.F) {
	for _, s := range []string{`sh -c 'echo $HOME'`, `a\ b "c \" d" ''`, "a \\\nb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words, err := gist.SplitCommand(s)
		if err != nil {
			return
		}
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, "'"+strings.ReplaceAll(w, "'", `'\''`)+"'")
		}
		again, err := gist.SplitCommand(strings.Join(quoted, " "))
		if err != nil {
			t.Fatalf("re-splitting %q: %v", quoted, err)
		}
		if diff := cmp.Diff(words, again); diff != "" {
			t.Fatalf("SplitCommand(%q) round trip (-first +again):\n%s", s, diff)
		}
	})
}

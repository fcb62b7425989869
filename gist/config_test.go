package gist_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/gist"
)

func TestParseConfig(t *testing.T) {
	for _, tt := range []struct {
		name, toml string
		want       *gist.Config
	}{
		{"minimal", `image = "busybox"`, &gist.Config{Image: "busybox"}},
		{"original's fields", `
image = "index.docker.io/library/busybox:1.36"
cmd = "sh -c 'echo \"hi there\"' /run/pe/input/a\\ b"
env = """
# comment
A=1

  B=two words
C=x=y
"""
stdin = "in.txt"
`, &gist.Config{
			Image: "index.docker.io/library/busybox:1.36",
			Cmd:   []string{"sh", "-c", `echo "hi there"`, "/run/pe/input/a b"},
			Env:   []string{"A=1", "B=two words", "C=x=y"},
			Stdin: "in.txt",
		}},
		{"arrays, tables and new keys", `
image = "gcc:14"
cmd = ["gcc", "-o", "/run/pe/output/a", "a.c"]
entrypoint = ["/bin/sh", "-c"]
timeout = "1m30s"
memory = "1GiB"
platform = "linux/arm64/v8"

[env]
CC = "gcc"
LEVEL = 2
DEBUG = true
`, &gist.Config{
			Image: "gcc:14", Cmd: []string{"gcc", "-o", "/run/pe/output/a", "a.c"},
			Entrypoint: []string{"/bin/sh", "-c"}, Timeout: 90 * time.Second, Memory: "1GiB",
			Platform: "linux/arm64/v8", Env: []string{"CC=gcc", "LEVEL=2", "DEBUG=true"},
		}},
		{"empty cmd is no cmd, empty entrypoint clears it", "image = \"x\"\ncmd = \"\"\nentrypoint = \"\"\ntimeout = 5\nenv = {Z = \"1\", A = \"2\"}",
			&gist.Config{Image: "x", Entrypoint: []string{}, Timeout: 5 * time.Second, Env: []string{"Z=1", "A=2"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := gist.ParseConfig([]byte(tt.toml))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParseConfig (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	for _, tt := range []struct {
		name, toml string
		want       gist.ConfigError
	}{
		{"missing image", `cmd = "true"`, gist.ConfigError{Key: "image", Msg: "missing: pe.toml must name the image, such as image = \"busybox\""}},
		{"empty image", "\nimage = \" \"", gist.ConfigError{Key: "image", Line: 2, Msg: "empty: want an image reference such as busybox"}},
		{"unknown key", "image = \"x\"\n\ncommand = \"ls\"\n", gist.ConfigError{Key: "command", Line: 3, Msg: "unknown key (pe.toml keys: image, cmd, entrypoint, env, stdin, timeout, memory, platform)"}},
		{"unknown table", "image = \"x\"\n[limits]\ncpus = 2\n", gist.ConfigError{Key: "limits", Line: 2, Msg: "unknown key (pe.toml keys: image, cmd, entrypoint, env, stdin, timeout, memory, platform)"}},
		{"image not a string", "image = 3", gist.ConfigError{Key: "image", Line: 1, Msg: "want a string, not an integer"}},
		{"cmd wrong type", "image = \"x\"\ncmd = 1.5", gist.ConfigError{Key: "cmd", Line: 2, Msg: "want a command string or an array of strings, not a float"}},
		{"cmd array of numbers", "image = \"x\"\ncmd = [\"a\", 1]", gist.ConfigError{Key: "cmd", Line: 2, Msg: "element 1: want a string, not int64"}},
		{"cmd unbalanced", "image = \"x\"\ncmd = \"echo 'hi\"", gist.ConfigError{Key: "cmd", Line: 2, Msg: "the command has an unbalanced single quote"}},
		{"entrypoint table", "image = \"x\"\n[entrypoint]\na = 1", gist.ConfigError{Key: "entrypoint", Line: 2, Msg: "want a command string or an array of strings, not a hash"}},
		{"env line without =", "image = \"x\"\nenv = \"\"\"\nA=1\nBROKEN\n\"\"\"", gist.ConfigError{Key: "env", Line: 2, Msg: `line 2 of the value, "BROKEN", is not NAME=VALUE`}},
		{"env bad name", "image = \"x\"\nenv = \"A B=1\"", gist.ConfigError{Key: "env", Line: 2, Msg: `line 1 of the value: "A B" is not a variable name`}},
		{"env table value", "image = \"x\"\n\n[env]\nA = [1]\n", gist.ConfigError{Key: "env.A", Line: 4, Msg: "want a string, number or boolean, not an array"}},
		{"env wrong type", "image = \"x\"\nenv = 3", gist.ConfigError{Key: "env", Line: 2, Msg: "want a string of NAME=VALUE lines or a table, not an integer"}},
		{"stdin escapes", "image = \"x\"\nstdin = \"../etc/passwd\"", gist.ConfigError{Key: "stdin", Line: 2, Msg: `"../etc/passwd" is not a file name beside pe.toml (no absolute names, no ..)`}},
		{"stdin absolute", "image = \"x\"\nstdin = \"/etc/passwd\"", gist.ConfigError{Key: "stdin", Line: 2, Msg: `"/etc/passwd" is not a file name beside pe.toml (no absolute names, no ..)`}},
		{"timeout bad", "image = \"x\"\ntimeout = \"soon\"", gist.ConfigError{Key: "timeout", Line: 2, Msg: `"soon": want a positive duration such as "10s" or "2m"`}},
		{"timeout negative", "image = \"x\"\ntimeout = -1", gist.ConfigError{Key: "timeout", Line: 2, Msg: "-1: want a positive number of seconds"}},
		{"timeout bool", "image = \"x\"\ntimeout = true", gist.ConfigError{Key: "timeout", Line: 2, Msg: `want a duration string such as "10s", or seconds, not a bool`}},
		{"memory bad", "image = \"x\"\nmemory = \"lots\"", gist.ConfigError{Key: "memory", Line: 2, Msg: `"lots": want a size such as "512M" or "1GiB"`}},
		{"memory number", "image = \"x\"\nmemory = 512", gist.ConfigError{Key: "memory", Line: 2, Msg: `want a size string such as "512M" or "1GiB", not an integer`}},
		{"platform bad", "image = \"x\"\nplatform = \"amd64\"", gist.ConfigError{Key: "platform", Line: 2, Msg: `"amd64": want os/arch[/variant] such as "linux/amd64" or "linux/arm64/v8"`}},
		{"syntax", "image = \"x\"\ncmd = [\"a\"", gist.ConfigError{Key: "cmd", Line: 2, Msg: "expected a comma (',') or array terminator (']'), but got end of file"}},
		{"duplicate key", "image = \"x\"\nimage = \"y\"", gist.ConfigError{Key: "image", Line: 2, Msg: "Key 'image' has already been defined."}},
		{"not UTF-8", "image = \"\xff\"", gist.ConfigError{Msg: "not UTF-8 text"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := gist.ParseConfig([]byte(tt.toml))
			var ce *gist.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("ParseConfig: %v, want a ConfigError", err)
			}
			if diff := cmp.Diff(tt.want, *ce); diff != "" {
				t.Errorf("ParseConfig error (-want +got):\n%s", diff)
			}
		})
	}
	err := &gist.ConfigError{Key: "cmd", Line: 3, Msg: "wrong"}
	if err.Error() != "pe.toml line 3: cmd: wrong" {
		t.Errorf("Error() = %q", err.Error())
	}
}

func TestSplitCommand(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want []string
		err  string
	}{
		{"", []string{}, ""},
		{"  \t\n", []string{}, ""},
		{"sh /run/pe/input/test.sh", []string{"sh", "/run/pe/input/test.sh"}, ""},
		{`sh -c 'echo $HOME; ls *'`, []string{"sh", "-c", "echo $HOME; ls *"}, ""},
		{`echo "a \"b\" \$c \\ \n" d`, []string{"echo", `a "b" $c \ \n`, "d"}, ""},
		{`a\ b c\\d 'e'"f"g`, []string{"a b", `c\d`, "efg"}, ""},
		{"a \\\nb", []string{"a", "b"}, ""},
		{`'' ""`, []string{"", ""}, ""},
		{"echo # not a comment", []string{"echo", "#", "not", "a", "comment"}, ""},
		{`echo 'open`, nil, "unbalanced single quote"},
		{`echo "open`, nil, "unbalanced double quote"},
		{`echo \`, nil, "ends with a backslash"},
		{"a\x00b", nil, "NUL"},
	} {
		got, err := gist.SplitCommand(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("SplitCommand(%q): %v, want an error with %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("SplitCommand(%q): %v", tt.in, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("SplitCommand(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}

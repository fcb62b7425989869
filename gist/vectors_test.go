package gist_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/gist"
)

// TestConfigVectors parses the pe.toml test vectors the web page's parser
// reads too (testdata/petoml/README.md) and compares what ParseConfig
// makes of each, in the vectors' shape, with the expected JSON.
func TestConfigVectors(t *testing.T) {
	files, err := filepath.Glob("testdata/petoml/*.toml")
	if err != nil || len(files) < 10 {
		t.Fatalf("pe.toml vectors: %v, %d found", err, len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".toml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			wb, err := os.ReadFile(strings.TrimSuffix(f, ".toml") + ".json")
			if err != nil {
				t.Fatal(err)
			}
			var want map[string]any
			if err := json.Unmarshal(wb, &want); err != nil {
				t.Fatalf("%s.json: %v", name, err)
			}
			c, err := gist.ParseConfig(data)
			if key, ok := want["error"]; ok {
				var ce *gist.ConfigError
				if !errors.As(err, &ce) {
					t.Fatalf("ParseConfig: %v (%+v), want a ConfigError about %q", err, c, key)
				}
				if key != "" && ce.Key != key {
					t.Errorf("ParseConfig: %v: key %q, want %q", err, ce.Key, key)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if diff := cmp.Diff(want, vectorOf(t, c, want["timeout"])); diff != "" {
				t.Errorf("ParseConfig (-want +got):\n%s", diff)
			}
		})
	}
}

// vectorOf writes c in the vectors' shape, as encoding/json decodes it.
// The timeout is written as the vector writes it (wantTimeout) when it
// means c's.
func vectorOf(t *testing.T, c *gist.Config, wantTimeout any) map[string]any {
	t.Helper()
	strs := func(ss []string) []any {
		out := []any{}
		for _, s := range ss {
			out = append(out, s)
		}
		return out
	}
	m := map[string]any{"image": c.Image}
	if c.Cmd != nil {
		m["cmd"] = strs(c.Cmd)
	}
	if c.Entrypoint != nil {
		m["entrypoint"] = strs(c.Entrypoint)
	}
	if len(c.Env) > 0 {
		m["env"] = strs(c.Env)
	}
	for k, v := range map[string]string{"stdin": c.Stdin, "memory": c.Memory, "platform": c.Platform} {
		if v != "" {
			m[k] = v
		}
	}
	if c.Timeout != 0 {
		m["timeout"] = c.Timeout.String()
		switch w := wantTimeout.(type) {
		case float64:
			if time.Duration(w)*time.Second == c.Timeout {
				m["timeout"] = w
			}
		case string:
			if d, err := time.ParseDuration(w); err == nil && d == c.Timeout {
				m["timeout"] = w
			}
		}
	}
	return m
}

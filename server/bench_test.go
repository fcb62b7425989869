package server

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/pearchive"
)

// BenchmarkOverhead measures what the server adds to a run, with the fake
// engine so that only the server's work is timed: "direct" calls the
// runner as the server does, "http" sends the page's request (two input
// files, archive framing) through the whole handler over loopback HTTP.
// docs/benchmarks.md sets the difference against a real run's duration.
func BenchmarkOverhead(b *testing.B) {
	files := []pearchive.MemFile{{Path: "test.sh", Data: bytes.Repeat([]byte("echo hello\n"), 50)}, {Path: "folder/data.txt", Data: []byte("data\n")}}
	b.Run("direct", func(b *testing.B) {
		fake := newFakeRunner()
		dir := b.TempDir()
		for b.Loop() {
			res, err := fake.Run(b.Context(), &engine.RunRequest{Image: "demo", InputDir: dir, Overrides: engine.Overrides{Cmd: []string{"echo", "hi"}}})
			if err != nil || string(res.Stdout) != "hi\n" {
				b.Fatal(err)
			}
		}
	})
	b.Run("http", func(b *testing.B) {
		s, err := New(Config{Runner: newFakeRunner(), Presets: []Preset{{Name: "demo"}}, RatePerSecond: -1})
		if err != nil {
			b.Fatal(err)
		}
		ts := httptest.NewServer(s)
		defer ts.Close()
		body := archiveBody(b, map[string]any{"cmd": []string{"echo", "hi"}}, files)
		for b.Loop() {
			resp, err := http.Post(ts.URL+"/api/v2/runi/amd64/linux/demo", pearchive.ContentType, bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d: %s", resp.StatusCode, buf.Bytes())
			}
		}
	})
}

package server

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/pe-project/pe/pearchive"
)

// FuzzRunBody sends arbitrary bodies to the run endpoint in archive mode:
// the answer is a run (200) or a refusal naming the problem (400, 413),
// never a server error, a panic or a file left behind.
func FuzzRunBody(f *testing.F) {
	seed := func(req string, files []pearchive.MemFile) []byte {
		var ar bytes.Buffer
		if err := pearchive.PackFiles(&ar, files); err != nil {
			f.Fatal(err)
		}
		var b bytes.Buffer
		pearchive.WriteFramed(&b, []byte(req), &ar)
		return b.Bytes()
	}
	f.Add(seed(`{"cmd":["ls"]}`, []pearchive.MemFile{{Path: "a.txt", Data: []byte("x")}, {Path: "d/b", Data: []byte("yy")}}))
	f.Add(seed(`{"cmd":["cat"],"stdin":"in"}`, []pearchive.MemFile{{Path: "in", Data: []byte("data")}}))
	f.Add(seed(`{"entrypoint":[],"cmd":["write","o","v"],"env":["A=1"]}`, nil))
	f.Add(seed(`{"cmd":["ls"],"stdin":"../x"}`, nil))
	f.Add([]byte{2, 0, 0, 0, '{', '}', 2, 'd', 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})

	tmp := f.TempDir()
	s, err := New(Config{Runner: newFakeRunner(), Presets: []Preset{{Name: "demo"}}, RatePerSecond: -1, MaxBody: 1 << 16, TempDir: tmp})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequestWithContext(t.Context(), "POST", "/api/v2/runi/amd64/linux/demo", bytes.NewReader(body))
		req.Header.Set("Content-Type", pearchive.ContentType)
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
			if _, _, err := pearchive.SplitFramed(rec.Body.Bytes()); err != nil {
				t.Fatalf("200 with a bad frame: %v", err)
			}
		case 400, 413:
			var e ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" || e.Detail == "" {
				t.Fatalf("%d with body %q", rec.Code, rec.Body.Bytes())
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
		if left, _ := os.ReadDir(tmp); len(left) > 0 {
			t.Fatalf("left behind in the temp dir: %v", left)
		}
	})
}

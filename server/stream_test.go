package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/pearchive"
)

// sseEvent is one server-sent event as a client reads it; a comment has
// the name ":".
type sseEvent struct {
	name, data string
	at         time.Time
}

// readEvents parses server-sent events from r into the returned channel,
// each as it arrives, and closes it at the end of r.
func readEvents(r io.Reader) <-chan sseEvent {
	ch := make(chan sseEvent, 1000)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 64<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" {
					ev.at = time.Now()
					ch <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
				ev.name = ":"
			case strings.HasPrefix(line, "event: "):
				ev.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				ev.data += line[len("data: "):]
			}
		}
	}()
	return ch
}

// postStream sends a run asking for the stream; the caller closes the
// body.
func postStream(t *testing.T, ctx context.Context, url, ctype string, body []byte) *http.Response {
	t.Helper()
	// A server that never answers fails the test instead of hanging it.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// next returns the next event that is not a comment, failing after 10 s.
func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatal("the stream ended early")
			}
			if ev.name != ":" {
				return ev
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no event in 10 s")
		}
	}
}

// collect reads the rest of a stream: the names of its events (comments
// left out), the stdout and stderr text, and the data of the named
// events.
func collectStream(t *testing.T, ch <-chan sseEvent) (names []string, stdout, stderr string, data map[string]string) {
	t.Helper()
	data = map[string]string{}
	for ev := range ch {
		if ev.name == ":" {
			continue
		}
		names = append(names, ev.name)
		switch ev.name {
		case "stdout", "stderr":
			var s string
			if err := json.Unmarshal([]byte(ev.data), &s); err != nil {
				t.Fatalf("%s event %q: %v", ev.name, ev.data, err)
			}
			if ev.name == "stdout" {
				stdout += s
			} else {
				stderr += s
			}
		default:
			data[ev.name] = ev.data
		}
	}
	return names, stdout, stderr, data
}

// releaseAtEnd releases fake's blocked runs when the test ends, so that
// a failing test does not hang in the server's Close.
func releaseAtEnd(t *testing.T, fake *fakeRunner) {
	t.Cleanup(func() { close(fake.release) })
}

// TestStreamLive checks output arrives while the run goes on: the line
// is read while the program still waits, before anything releases it.
func TestStreamLive(t *testing.T) {
	fake := newFakeRunner()
	_, url := testServer(t, Config{Runner: fake})
	releaseAtEnd(t, fake)
	resp := postStream(t, t.Context(), url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["liveblock","hello"]}`))
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
	}
	ch := readEvents(resp.Body)
	start := next(t, ch)
	if start.name != "start" || !strings.Contains(start.data, resp.Header.Get("X-Request-Id")) {
		t.Errorf("first event %+v, want start with the request id %s", start, resp.Header.Get("X-Request-Id"))
	}
	if ev := next(t, ch); ev.name != "stdout" || ev.data != `"hello\n"` {
		t.Errorf("event %+v, want stdout \"hello\\n\" while the program runs", ev)
	}
	fake.release <- struct{}{}
	names, _, _, data := collectStream(t, ch)
	if diff := cmp.Diff([]string{"result"}, names); diff != "" {
		t.Errorf("events after the release (-want +got):\n%s", diff)
	}
	var res RunResponse
	if err := json.Unmarshal([]byte(data["result"]), &res); err != nil || res.Kind != KindOk || res.Stdout == nil || *res.Stdout != "hello\n" {
		t.Errorf("result %s: %v", data["result"], err)
	}
}

// TestStreamResultIsTheBatchAnswer checks the streaming form's result
// (and archive) are byte for byte what the request/response API answers,
// and that the live output is the run's output.
func TestStreamResultIsTheBatchAnswer(t *testing.T) {
	_, url := testServer(t, Config{})
	files := []pearchive.MemFile{{Path: "in.txt", Data: []byte("input\n")}}
	for _, c := range []struct {
		desc, ctype          string
		body                 []byte
		wantNames            []string
		wantStdout, wantErrs string
	}{
		{"JSON", "application/json", []byte(`{"cmd":["live","20","one","err:two","three ü"]}`),
			[]string{"start", "stdout", "stderr", "stdout", "result"}, "one\nthree ü\n", "two\n"},
		{"archive", pearchive.ContentType, archiveBody(t, map[string]any{"cmd": []string{"live", "0", "a", "err:b"}}, files),
			[]string{"start", "stdout", "stderr", "archive", "result"}, "a\n", "b\n"},
		{"archive, output files", pearchive.ContentType, archiveBody(t, map[string]any{"cmd": []string{"write", "sub/r.txt", "result"}}, files),
			[]string{"start", "archive", "result"}, "", ""},
		{"batch output only", "application/json", []byte(`{"cmd":["echo","a","b"]}`),
			[]string{"start", "stdout", "result"}, "a b\n", ""},
		{"overtime", "application/json", []byte(`{"cmd":["overtime"]}`),
			[]string{"start", "stdout", "result"}, "partial\n", ""},
	} {
		t.Run(c.desc, func(t *testing.T) {
			_, batch := post(t, url+"/api/v2/runi/amd64/linux/demo", c.ctype, c.body)
			resp := postStream(t, t.Context(), url+"/api/v2/runi/amd64/linux/demo", c.ctype, c.body)
			defer resp.Body.Close()
			names, stdout, stderr, data := collectStream(t, readEvents(resp.Body))
			if diff := cmp.Diff(c.wantNames, names); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			if stdout != c.wantStdout || stderr != c.wantErrs {
				t.Errorf("live stdout %q stderr %q, want %q %q", stdout, stderr, c.wantStdout, c.wantErrs)
			}
			got := []byte(data["result"] + "\n")
			if c.ctype == pearchive.ContentType {
				var b64 string
				if err := json.Unmarshal([]byte(data["archive"]), &b64); err != nil {
					t.Fatalf("archive event: %v", err)
				}
				ar, err := base64.StdEncoding.DecodeString(b64)
				if err != nil {
					t.Fatalf("archive event: %v", err)
				}
				var buf bytes.Buffer
				pearchive.WriteFramed(&buf, []byte(data["result"]), bytes.NewReader(ar))
				got = buf.Bytes()
			}
			if !bytes.Equal(got, batch) {
				t.Errorf("streamed answer\n%q\nbatch answer\n%q", got, batch)
			}
		})
	}
}

// TestStreamRefusals checks what is refused before the program starts
// is the same plain HTTP error as without the stream (Retry-After
// included), and a failure after it started is the stream's last event.
func TestStreamRefusals(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake, Slots: 1, MaxQueue: 1, MaxWait: 200 * time.Millisecond})
	releaseAtEnd(t, fake)
	run := url + "/api/v2/runi/amd64/linux/demo"

	for _, c := range []struct {
		desc, ctype, body string
		wantStatus        int
	}{
		{"bad content type", "text/plain", `{}`, 415},
		{"image not found", "application/json", `{"cmd":["imagefail"]}`, 404},
		{"VM failed before the start", "application/json", `{"cmd":["vmfail"]}`, 500},
		{"no command", "application/json", `{"entrypoint":[]}`, 400},
	} {
		t.Run(c.desc, func(t *testing.T) {
			resp := postStream(t, t.Context(), run, c.ctype, []byte(c.body))
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var eb ErrorBody
			if resp.StatusCode != c.wantStatus || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(b, &eb) != nil || eb.Error == "" {
				t.Errorf("status %d %s: %s; want %d and the error JSON", resp.StatusCode, resp.Header.Get("Content-Type"), b, c.wantStatus)
			}
		})
	}

	t.Run("failed after the start", func(t *testing.T) {
		resp := postStream(t, t.Context(), run, "application/json", []byte(`{"cmd":["startfail"]}`))
		defer resp.Body.Close()
		names, stdout, _, data := collectStream(t, readEvents(resp.Body))
		if diff := cmp.Diff([]string{"start", "stdout", "error"}, names); diff != "" || stdout != "starting\n" {
			t.Errorf("events (-want +got):\n%s\nstdout %q", diff, stdout)
		}
		var se streamError
		if err := json.Unmarshal([]byte(data["error"]), &se); err != nil || se.Status != 500 || se.Error != "Worker" || strings.Contains(se.Detail, "VM died") || se.RequestID == "" {
			t.Errorf("error event %s (%v): want status 500, Worker, the request id and no internal detail", data["error"], err)
		}
	})

	t.Run("queue full", func(t *testing.T) {
		blocked := postStream(t, t.Context(), run, "application/json", []byte(`{"cmd":["liveblock","x"]}`))
		defer blocked.Body.Close()
		waitFor(t, func() bool { _, r := s.queue.counts(); return r == 1 })
		waited := make(chan *http.Response, 1)
		go func() {
			resp := postStream(t, t.Context(), run, "application/json", []byte(`{"cmd":["echo"]}`))
			resp.Body.Close()
			waited <- resp
		}()
		waitFor(t, func() bool { q, _ := s.queue.counts(); return q == 1 })
		resp := postStream(t, t.Context(), run, "application/json", []byte(`{"cmd":["echo"]}`))
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "QueueFull") {
			t.Errorf("full queue: status %d Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
		if r := <-waited; r.StatusCode != 503 || r.Header.Get("Retry-After") == "" || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("past MaxWait: status %d %v", r.StatusCode, r.Header)
		}
		fake.release <- struct{}{}
	})
}

// TestStreamRateLimited checks the rate limit answers 429 before any
// stream.
func TestStreamRateLimited(t *testing.T) {
	_, url := testServer(t, Config{RatePerSecond: 0.001, RateBurst: 1})
	for i, want := range []int{200, 429} {
		resp := postStream(t, t.Context(), url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["echo"]}`))
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || want == 429 && (resp.Header.Get("Retry-After") == "" || resp.Header.Get("Content-Type") != "application/json") {
			t.Errorf("request %d: status %d %v, want %d", i, resp.StatusCode, resp.Header, want)
		}
	}
}

// TestStreamKeepAlive checks an idle stream sends comments.
func TestStreamKeepAlive(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake})
	releaseAtEnd(t, fake)
	s.keepAlive = 50 * time.Millisecond
	resp := postStream(t, t.Context(), url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["liveblock","x"]}`))
	defer resp.Body.Close()
	ch := readEvents(resp.Body)
	comments := 0
	for comments < 2 {
		select {
		case ev := <-ch:
			if ev.name == ":" {
				comments++
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%d keep-alive comments in 5 s, want 2", comments)
		}
	}
	fake.release <- struct{}{}
	collectStream(t, ch)
}

// TestStreamClientGone checks a client that hangs up mid-stream cancels
// the run.
func TestStreamClientGone(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake})
	ctx, cancel := context.WithCancel(t.Context())
	resp := postStream(t, ctx, url+"/api/v2/runi/amd64/linux/demo", "application/json", []byte(`{"cmd":["liveblock","x"]}`))
	ch := readEvents(resp.Body)
	next(t, ch)
	if ev := next(t, ch); ev.name != "stdout" {
		t.Fatalf("event %+v, want stdout", ev)
	}
	cancel()
	resp.Body.Close()
	waitFor(t, func() bool { q, r := s.queue.counts(); return q+r == 0 })
	s.inFlight.Wait()
}

// TestStreamSlowClient checks a client that stops reading holds the
// program back for a while only: its live output is dropped after the
// stall time, the run ends on its own while the client still reads
// nothing, and the client then gets what was queued, a dropped event and
// the result.
func TestStreamSlowClient(t *testing.T) {
	fake := newFakeRunner()
	s, url := testServer(t, Config{Runner: fake})
	s.liveStall = 300 * time.Millisecond
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 48 MiB: more than the socket buffers take (a small receive buffer
	// would also make reading it all afterwards slow, by delayed ACKs).
	body := fmt.Sprintf(`{"cmd":["flood","%d"]}`, 48<<20)
	fmt.Fprintf(c, "POST /api/v2/runi/amd64/linux/demo HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	start := time.Now()
	waitFor(t, func() bool { return len(fake.recorded()) == 1 })
	waitFor(t, func() bool { _, r := s.queue.counts(); return r == 0 })
	t.Logf("the run ended %v after it was sent, the client reading nothing", time.Since(start))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	names, stdout, _, data := collectStream(t, readEvents(resp.Body))
	if len(names) < 3 || names[len(names)-2] != "dropped" || names[len(names)-1] != "result" {
		t.Errorf("events end %q, want dropped then result", names[max(0, len(names)-3):])
	}
	if v := metricValue(t, url, "pe_stream_dropped_total"); v != "1" {
		t.Errorf("pe_stream_dropped_total %q, want 1", v)
	}
	if len(stdout) == 0 || len(stdout) >= 48<<20 || strings.Trim(stdout, "x") != "" {
		t.Errorf("live stdout %d bytes of x, want some, not all", len(stdout))
	}
	var res RunResponse
	if err := json.Unmarshal([]byte(data["result"]), &res); err != nil || res.Kind != KindOk || !res.StdoutTruncated {
		t.Errorf("result %.300s: %v", data["result"], err)
	}
}

// TestSplitText checks the live text keeps characters whole across
// writes and replaces each invalid byte.
func TestSplitText(t *testing.T) {
	for _, c := range []struct {
		desc   string
		writes []string
		max    int
		want   []string
	}{
		{"ASCII", []string{"abc", "def"}, 8, []string{"abc", "def"}},
		{"a character cut between writes", []string{"a\xe2\x82", "\xacb"}, 8, []string{"a", "€b"}},
		{"cut into chunks on a boundary", []string{"abcdéfghi"}, 5, []string{"abcd", "éfgh", "i"}},
		{"invalid bytes", []string{"a\xffb\xc3"}, 8, []string{"a\ufffdb", "\ufffd"}},
		{"a lead byte then ASCII", []string{"\xe2", "x"}, 8, []string{"\ufffdx"}},
		{"only the start of a character", []string{"\xf0\x9f"}, 8, []string{"\ufffd\ufffd"}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			var got []string
			var carry []byte
			for _, w := range c.writes {
				var chunks [][]byte
				carry, chunks = splitText(carry, []byte(w), c.max)
				for _, ch := range chunks {
					if len(ch) > c.max {
						t.Errorf("chunk %q over %d bytes", ch, c.max)
					}
					got = append(got, lossyText(ch))
				}
			}
			if len(carry) > 0 {
				got = append(got, lossyText(carry))
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzLiveText checks that however a program's output is cut into
// writes, the events' text is one JSON line each and together the
// output's text, each invalid byte U+FFFD.
func FuzzLiveText(f *testing.F) {
	f.Add([]byte("hello\nworld\n"), uint8(3), uint8(5))
	f.Add([]byte("a\xe2\x82\xacb\xff\xc3"), uint8(2), uint8(4))
	f.Add([]byte("\xf0\x9f\x98\x80\xf0\x9f\x98"), uint8(1), uint8(4))
	f.Add([]byte("\x00\x1f\"\\\u2028<>&"), uint8(4), uint8(6))
	f.Fuzz(func(t *testing.T, out []byte, cut, max uint8) {
		max = max%16 + 4
		step := int(cut)%7 + 1
		var text strings.Builder
		var carry []byte
		emit := func(b []byte) {
			js := textJSON(b)
			if bytes.ContainsAny(js, "\r\n") {
				t.Fatalf("event data %q holds a line break", js)
			}
			var s string
			if err := json.Unmarshal(js, &s); err != nil || !utf8.ValidString(s) {
				t.Fatalf("event data %q: %v", js, err)
			}
			text.WriteString(s)
		}
		for b := out; len(b) > 0; {
			n := min(step, len(b))
			var chunks [][]byte
			carry, chunks = splitText(carry, b[:n], int(max))
			for _, c := range chunks {
				if len(c) > int(max) {
					t.Fatalf("chunk of %d bytes, max %d", len(c), max)
				}
				emit(c)
			}
			b = b[n:]
		}
		emit(carry)
		if want := lossyText(out); text.String() != want {
			t.Fatalf("text %q, want %q", text.String(), want)
		}
	})
}

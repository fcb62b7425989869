package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/pe-project/pe/engine"
)

// The streaming form of POST /api/v2/runi (docs/api.md): a client that
// sends "Accept: text/event-stream" gets the run as server-sent events
// while it goes. Everything up to the program's start (rate limit, queue,
// body, image) is answered exactly as without it, so a refusal is still
// an ordinary HTTP error with Retry-After; the stream (200,
// text/event-stream) begins when the program starts (or writes, or ends):
//
//	event: start    {"request_id": ID}
//	event: stdout   "text"   (a JSON string: the bytes as UTF-8, each invalid byte U+FFFD)
//	event: stderr   "text"
//	: keep-alive    (a comment, every keepAliveInterval)
//	event: dropped  {"reason": ...}   (the live output stopped: the client fell behind)
//	event: archive  "base64"  (an archive request: the response archive)
//	event: result   the JSON body the non-streaming API answers
//
// or, for a failure after the stream began, a last "error" event with the
// API's error JSON and its HTTP status ({"status", "error", "detail",
// "request_id"}). The live output is a preview; the result (and archive)
// are the run's, byte for byte the non-streaming answer.

// EventStreamType is the media type of the streaming form.
const EventStreamType = "text/event-stream"

// Defaults of the live stream's timing (Server.keepAlive, Server.liveStall).
const (
	// keepAliveInterval is how often an idle stream sends a comment, so
	// that proxies and browsers do not take it for dead.
	keepAliveInterval = 15 * time.Second
	// liveStallTimeout is how long a program's write may wait for a
	// client that does not read before its live output is dropped: the
	// program is slowed down that long (back-pressure), never more.
	liveStallTimeout = 10 * time.Second
	// liveChunk is the most output bytes one stdout/stderr event carries.
	liveChunk = 8 << 10
	// liveQueue is how many events wait for the client: with liveChunk,
	// what a run holds for a slow client (at most 6× in JSON escapes).
	liveQueue = 8
	// liveBootAllowance is how long after the run takes its slot the
	// program's time limit is assumed to start when the guest does not
	// say (the boot before it).
	liveBootAllowance = 30 * time.Second
)

// wantsStream reports whether r asks for the streaming form: its Accept
// header lists text/event-stream.
func wantsStream(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == EventStreamType {
				return true
			}
		}
	}
	return false
}

// liveResponse is the response of a streaming run. The engine writes the
// program's output into it (Live.Stdout/Stderr); one goroutine, the
// sender, writes the events to the client, so that a client that reads
// slowly holds the program back for a while (the queue of events is
// bounded) but never past liveStall or the run's time limit: then the
// live output is dropped and the run goes on to its result.
type liveResponse struct {
	w            http.ResponseWriter
	rc           *http.ResponseController
	ctx          context.Context
	cancelRun    context.CancelFunc
	log          *slog.Logger
	id           string
	stall        time.Duration
	keepAlive    time.Duration
	writeTimeout time.Duration

	// limit is when the program's time is up (Unix nanoseconds, 0 for
	// not known yet): past it, a write never waits for the client.
	limit atomic.Int64
	// timeout is the run's time limit (a time.Duration), set by slot.
	timeout atomic.Int64

	events     chan []byte
	done       chan struct{} // closed by finish: the sender sends what is queued and ends
	senderDone chan struct{} // closed when the sender ends
	dropped    atomic.Bool
	// onDrop counts a drop (pe_stream_dropped_total).
	onDrop func()
	broken atomic.Bool

	stateMu    sync.Mutex
	began      bool
	finished   bool
	finishOnce sync.Once

	// mu serializes the output writes (their UTF-8 carries).
	mu          sync.Mutex
	stdoutCarry []byte
	stderrCarry []byte
}

// newLiveResponse returns the streaming response of r; cancelRun cancels
// the run's context (used when the connection breaks).
func (s *Server) newLiveResponse(w http.ResponseWriter, r *http.Request, cancelRun context.CancelFunc) *liveResponse {
	return &liveResponse{
		w: w, rc: http.NewResponseController(w), ctx: r.Context(), cancelRun: cancelRun,
		log: s.cfg.Log, id: requestID(r), onDrop: s.metrics.streamDropped.Inc,
		stall: s.liveStall, keepAlive: s.keepAlive, writeTimeout: s.cfg.WriteTimeout,
		events: make(chan []byte, liveQueue), done: make(chan struct{}), senderDone: make(chan struct{}),
	}
}

// live returns the engine's Live for the response.
func (lr *liveResponse) live() *engine.Live {
	return &engine.Live{
		Stdout: streamWriter{lr, "stdout"},
		Stderr: streamWriter{lr, "stderr"},
		OnStart: func() {
			lr.setLimit(time.Now().Add(lr.runTimeout()))
			lr.begin()
		},
	}
}

// runTimeout is the time limit setLimit was given first (see slot).
func (lr *liveResponse) runTimeout() time.Duration { return time.Duration(lr.timeout.Load()) }

// slot records that the run took its slot with time limit timeout.
func (lr *liveResponse) slot(timeout time.Duration) {
	lr.timeout.Store(int64(timeout))
	lr.setLimit(time.Now().Add(timeout + liveBootAllowance))
}

func (lr *liveResponse) setLimit(t time.Time) { lr.limit.Store(t.UnixNano()) }

// begin starts the stream (headers and the start event) unless it has
// begun or the run is over; it reports whether the stream is on.
func (lr *liveResponse) begin() bool {
	lr.stateMu.Lock()
	defer lr.stateMu.Unlock()
	if lr.finished {
		return lr.began
	}
	if lr.began {
		return true
	}
	lr.began = true
	h := lr.w.Header()
	h.Set("Content-Type", EventStreamType)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	// nginx buffers responses unless told not to; HAProxy does not.
	h.Set("X-Accel-Buffering", "no")
	lr.w.WriteHeader(http.StatusOK)
	start, _ := json.Marshal(map[string]string{"request_id": lr.id})
	if !lr.emit(event("start", start)) {
		close(lr.senderDone)
		return true
	}
	go lr.sender()
	return true
}

// hasBegun reports whether the stream has begun: the answer is then
// events, whatever happens.
func (lr *liveResponse) hasBegun() bool {
	lr.stateMu.Lock()
	defer lr.stateMu.Unlock()
	return lr.began
}

// sender writes the queued events and keep-alives until finish.
func (lr *liveResponse) sender() {
	defer close(lr.senderDone)
	tick := time.NewTicker(lr.keepAlive)
	defer tick.Stop()
	for {
		select {
		case ev := <-lr.events:
			if !lr.emit(ev) {
				return
			}
		case <-tick.C:
			if !lr.emit([]byte(": keep-alive\n\n")) {
				return
			}
		case <-lr.done:
			for {
				select {
				case ev := <-lr.events:
					if !lr.emit(ev) {
						return
					}
				default:
					return
				}
			}
		}
	}
}

// emit writes one event and flushes it, within the write timeout. A
// failed write breaks the connection for good (net/http's writes fail
// from then on): nothing can reach the client any more, so the run is
// cancelled as for a client that went away.
func (lr *liveResponse) emit(ev []byte) bool {
	if lr.broken.Load() {
		return false
	}
	lr.rc.SetWriteDeadline(time.Now().Add(lr.writeTimeout))
	_, err := lr.w.Write(ev)
	if err == nil {
		err = lr.rc.Flush()
	}
	if err != nil {
		lr.broken.Store(true)
		lr.dropped.Store(true)
		lr.log.Info("streaming client stopped reading; run cancelled", "request_id", lr.id, "error", err)
		lr.cancelRun()
		return false
	}
	return true
}

// streamWriter is one output stream of a liveResponse, as the engine's
// Live writer.
type streamWriter struct {
	lr   *liveResponse
	name string
}

// Write sends p as events; it never fails (a stream that cannot be sent
// is dropped, and the run goes on).
func (sw streamWriter) Write(p []byte) (int, error) {
	lr := sw.lr
	if lr.dropped.Load() || !lr.begin() || lr.isFinished() {
		return len(p), nil
	}
	lr.mu.Lock()
	defer lr.mu.Unlock()
	carry := &lr.stdoutCarry
	if sw.name == "stderr" {
		carry = &lr.stderrCarry
	}
	var chunks [][]byte
	*carry, chunks = splitText(*carry, p, liveChunk)
	for _, c := range chunks {
		if !lr.send(event(sw.name, textJSON(c))) {
			break
		}
	}
	return len(p), nil
}

func (lr *liveResponse) isFinished() bool {
	lr.stateMu.Lock()
	defer lr.stateMu.Unlock()
	return lr.finished
}

// send queues ev for the sender, waiting at most the stall time and
// never past the run's time limit; when it cannot, the live output is
// dropped.
func (lr *liveResponse) send(ev []byte) bool {
	if lr.dropped.Load() {
		return false
	}
	select {
	case lr.events <- ev:
		return true
	default:
	}
	wait := lr.stall
	if l := lr.limit.Load(); l != 0 {
		wait = max(0, min(wait, time.Until(time.Unix(0, l))))
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case lr.events <- ev:
		return true
	case <-t.C:
		lr.log.Info("streaming client fell behind: live output dropped, the run goes on", "request_id", lr.id)
		if lr.onDrop != nil {
			lr.onDrop()
		}
	case <-lr.ctx.Done():
	case <-lr.done:
	case <-lr.senderDone:
	}
	lr.dropped.Store(true)
	return false
}

// finish ends the live part of the stream: it waits for the sender to
// send what is queued (each write within the write timeout), then sends
// what the output writers held back (a character cut at the end).
// It reports whether the stream had begun.
func (lr *liveResponse) finish() bool {
	lr.stateMu.Lock()
	lr.finished = true
	began := lr.began
	lr.stateMu.Unlock()
	if began {
		lr.finishOnce.Do(lr.finishStream)
	}
	return began
}

func (lr *liveResponse) finishStream() {
	close(lr.done)
	<-lr.senderDone
	// A write still in progress (the engine does not wait for one) has
	// seen done and returns.
	lr.mu.Lock()
	defer lr.mu.Unlock()
	lr.rc.SetWriteDeadline(time.Now().Add(lr.writeTimeout))
	if !lr.dropped.Load() {
		for _, s := range []struct {
			name  string
			carry []byte
		}{{"stdout", lr.stdoutCarry}, {"stderr", lr.stderrCarry}} {
			if len(s.carry) > 0 {
				lr.emit(event(s.name, textJSON(s.carry)))
			}
		}
	}
	if lr.dropped.Load() && !lr.broken.Load() {
		js, _ := json.Marshal(map[string]string{"reason": "the client fell behind: the rest of the output is in the result"})
		lr.emit(event("dropped", js))
	}
}

// result sends the run's answer: the response archive of an archive
// request (base64), then the result JSON.
func (lr *liveResponse) result(js, archive []byte) {
	if archive != nil {
		b := make([]byte, 0, base64.StdEncoding.EncodedLen(len(archive))+2)
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, archive)
		b = append(b, '"')
		if !lr.emit(event("archive", b)) {
			return
		}
	}
	lr.emit(event("result", js))
}

// streamError is the data of an error event: the API's error JSON with
// the status the non-streaming API would have answered.
type streamError struct {
	Status int `json:"status"`
	ErrorBody
}

// fail sends the error event.
func (lr *liveResponse) fail(status int, name, detail string) {
	js, _ := json.Marshal(streamError{status, ErrorBody{Error: name, Detail: detail, RequestID: lr.id}})
	lr.emit(event("error", js))
}

// event formats one server-sent event; data is one line of JSON.
func event(name string, data []byte) []byte {
	b := make([]byte, 0, len(name)+len(data)+16)
	b = append(b, "event: "...)
	b = append(b, name...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}

// textJSON is b as a JSON string: its UTF-8 text, each byte that is not
// part of a valid UTF-8 character replaced with U+FFFD. JSON strings hold
// no line breaks, so it is one data line.
func textJSON(b []byte) []byte {
	js, _ := json.Marshal(lossyText(b))
	return js
}

// lossyText is b as text, each invalid byte U+FFFD (one per byte, so that
// how the output was cut into writes changes nothing).
func lossyText(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n == 1 {
			sb.WriteRune(utf8.RuneError)
		} else {
			sb.Write(b[:n])
		}
		b = b[n:]
	}
	return sb.String()
}

// splitText cuts carry+p into chunks of at most max bytes (max ≥ 4) that
// end on character boundaries, and returns what to carry to the next
// write: the start of a character p ends in the middle of (at most 3
// bytes).
func splitText(carry, p []byte, max int) (rest []byte, chunks [][]byte) {
	b := append(carry[:len(carry):len(carry)], p...)
	n := len(b) - incompleteTail(b)
	rest = append([]byte(nil), b[n:]...)
	b = b[:n]
	for len(b) > 0 {
		cut := min(len(b), max)
		if cut < len(b) {
			// Back to a character's start, unless there is none near
			// (invalid bytes): they are cut anywhere.
			for i := cut; i > cut-utf8.UTFMax && i > 0; i-- {
				if utf8.RuneStart(b[i]) {
					cut = i
					break
				}
			}
		}
		chunks = append(chunks, b[:cut])
		b = b[cut:]
	}
	return rest, chunks
}

// incompleteTail is how many bytes at the end of b start a character
// that is not complete yet.
func incompleteTail(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-(utf8.UTFMax-1); i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return len(b) - i
			}
			return 0
		}
	}
	return 0
}

package s3test

import (
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"
)

// A Link is a network link of a fixed bandwidth shared by every response
// through it: bytes sent over it queue behind one another, so that two
// streams at once each get about half of it, as on a real link.
type Link struct {
	bytesPerSecond int64

	mu sync.Mutex
	// free is when the link has sent everything queued so far.
	free time.Time
}

// NewLink returns a link of bytesPerSecond; zero or less means unlimited.
func NewLink(bytesPerSecond int64) *Link { return &Link{bytesPerSecond: bytesPerSecond} }

// linkQuantum is how much of a response goes over the link at once:
// small enough that concurrent responses interleave.
const linkQuantum = 32 << 10

// linkCatchUp is how far behind its schedule a busy link may fall and
// still catch up.
const linkCatchUp = 20 * time.Millisecond

// linkSlack is how far ahead of the link's schedule a sender may run
// before it sleeps: the rate holds over any longer time, and a response
// that comes in small reads costs a sleep a millisecond, not one a read
// (which made the stand-in for a distant store the busiest process on a
// small machine, beside the VM it was meant to feed).
const linkSlack = time.Millisecond

// send blocks for as long as the link takes to send n bytes after what is
// queued on it.
func (l *Link) send(n int) {
	if l == nil || l.bytesPerSecond <= 0 || n <= 0 {
		return
	}
	d := time.Duration(float64(n) / float64(l.bytesPerSecond) * float64(time.Second))
	l.mu.Lock()
	now := time.Now()
	// A link busy until a moment ago keeps its schedule: a sender whose
	// sleep overran (timers are late on a loaded machine) catches up
	// instead of losing the time, which would make the link slower than
	// its rate. A link idle for longer starts afresh, so that nothing goes
	// faster than the rate after a pause.
	if l.free.Before(now.Add(-linkCatchUp)) {
		l.free = now
	}
	l.free = l.free.Add(d)
	until := l.free
	l.mu.Unlock()
	if wait := time.Until(until); wait > linkSlack {
		time.Sleep(wait)
	}
}

// Delay wraps next so that every request waits perRequest before next
// sees it (a request's round trip to a distant store) and every response
// body goes out over link (nil: at full speed). Status, headers and bytes
// are next's, unchanged.
func Delay(next http.Handler, perRequest time.Duration, link *Link) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if perRequest > 0 {
			t := time.NewTimer(perRequest)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		next.ServeHTTP(&linkWriter{ResponseWriter: w, link: link}, r)
	})
}

// linkWriter is a ResponseWriter whose body goes over a link.
type linkWriter struct {
	http.ResponseWriter
	link *Link
}

func (w *linkWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), linkQuantum)
		w.link.send(n)
		m, err := w.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

// Flush passes flushes on, so that streamed answers stream.
func (w *linkWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *linkWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Proxy returns a reverse proxy to the S3 server at endpoint
// (http://HOST:PORT) that forwards every request unchanged, its Host
// header included: clients sign their requests (SigV4 covers Host) for the
// proxy's address, and the server checks them against the Host it
// receives, which is that same address.
func Proxy(endpoint string) (http.Handler, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("s3test: proxy target %q: want http://HOST:PORT", endpoint)
	}
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host
			// No X-Forwarded-* headers are added (Rewrite adds none
			// unless asked): the server need not know of the proxy.
		},
		// Stream bodies as they come, never buffered.
		FlushInterval: -1,
		BufferPool:    proxyBuffers{},
		// Keep a connection to the server for each client's (the
		// default keeps 2): a new one for every request of a parallel
		// client cost the proxy and the server more than the bodies.
		Transport: &http.Transport{
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
		},
	}, nil
}

// proxyBuffers lends the proxy 256 KiB copy buffers (httputil's own are
// 32 KiB): a read takes whatever the server has sent, up to a chunk.
type proxyBuffers struct{}

var proxyBufferPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (proxyBuffers) Get() []byte  { return *proxyBufferPool.Get().(*[]byte) }
func (proxyBuffers) Put(b []byte) { proxyBufferPool.Put(&b) }

// Files returns a handler that answers GET and HEAD of path-style object
// URLs (/BUCKET/KEY) with the file DIR/BUCKET/KEY, ranges included, the
// way versitygw's posix backend lays a bucket out; it checks no signature
// and refuses every other method. It stands in for a store whose own work
// is not on this machine, where a real S3 server's would be: behind Delay,
// a distant store that costs the machine only the bytes it receives.
func Files(dir string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			s3Error(w, http.StatusNotImplemented, "NotImplemented", "only GET and HEAD are served")
			return
		}
		// Clean against the root first: no path leaves dir.
		p := filepath.Join(dir, filepath.FromSlash(path.Clean("/"+r.URL.Path)))
		f, err := os.Open(p)
		if err != nil {
			s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() {
			s3Error(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
			return
		}
		w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, fi.Size(), fi.ModTime().UnixNano()))
		// Set, so that ServeContent does not read the file's start to
		// guess one at every request.
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, "", fi.ModTime(), f)
	})
}

// s3Error answers an S3 error document.
func s3Error(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n<Error><Code>%s</Code><Message>%s</Message></Error>", code, message)
}

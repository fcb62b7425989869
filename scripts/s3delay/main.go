// Command s3delay is an HTTP proxy in front of an S3 server that makes it
// look distant: every request waits -delay before it is forwarded, and
// every response body goes out over one link of -rate bytes per second
// shared by all connections (so parallel ranged GETs do not add up to more
// than the link). Requests and answers are forwarded unchanged, the Host
// header too, so that clients sign their requests for the proxy's address.
// scripts/bench-lazy.sh puts it in front of versitygw. With -files DIR it
// serves GET and HEAD from a versitygw posix directory itself, with no
// server behind it and no signature checked: a store whose own CPU is not
// on this machine (bench-lazy.sh's STORE=files).
//
// It prints its address (HOST:PORT) on the first line of standard output
// once it listens, and serves until it is killed. With -log FILE it appends
// one line per request to FILE once answered: method, path, Range header
// ("-" if none), status and response body bytes, so that a benchmark can
// count the GETs and bytes of each run.
//
// Usage: go run ./scripts/s3delay -target http://127.0.0.1:7070 | -files DIR [-listen 127.0.0.1:0] [-delay 30ms] [-rate 125000000] [-log FILE]
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/pe-project/pe/blockstore/s3/s3test"
)

func main() {
	target := flag.String("target", "", "the S3 server's endpoint, http://HOST:PORT (this or -files)")
	files := flag.String("files", "", "serve GET and HEAD of /BUCKET/KEY from the files DIR/BUCKET/KEY (a versitygw posix directory) instead of a server, checking no signature (this or -target)")
	listen := flag.String("listen", "127.0.0.1:0", "the address to listen on")
	delay := flag.Duration("delay", 0, "how long each request waits before it is forwarded")
	rate := flag.Int64("rate", 0, "the link's bandwidth for response bodies, bytes per second, shared by all connections (0: unlimited)")
	logFile := flag.String("log", "", "append a line per request to this file: method, path, range, status, body bytes")
	flag.Parse()
	if (*target == "") == (*files == "") || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	var store http.Handler
	if *files != "" {
		store = s3test.Files(*files)
	} else {
		proxy, err := s3test.Proxy(*target)
		if err != nil {
			log.Fatal(err)
		}
		store = proxy
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("s3delay: %v", err)
	}
	var h http.Handler = s3test.Delay(store, *delay, s3test.NewLink(*rate))
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			log.Fatalf("s3delay: %v", err)
		}
		h = logged(h, log.New(f, "", 0))
	}
	fmt.Println(l.Addr().String())
	log.Fatal(http.Serve(l, h))
}

// logged wraps h so that each answered request writes a line to lg.
func logged(h http.Handler, lg *log.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(cw, r)
		rng := r.Header.Get("Range")
		if rng == "" {
			rng = "-"
		}
		lg.Printf("%s %s %s %d %d", r.Method, r.URL.Path, rng, cw.status, cw.n)
	})
}

// countingWriter counts the body bytes written and keeps the status.
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (w *countingWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

// Flush passes flushes on.
func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

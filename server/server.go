package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pe-project/pe/blockstore"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/gist"
)

// Runner runs one program: *engine.Engine, or a fake in tests.
type Runner interface {
	Run(ctx context.Context, r *engine.RunRequest) (*engine.RunResult, error)
}

// Preset is an image the server offers by name: the page lists presets,
// and a run may name one even when its source is not an allowed registry
// (a local OCI layout, an imported image).
type Preset struct {
	// Name is what clients send as the reference.
	Name string `json:"reference"`
	// Source is the image reference pe resolves ("" means Name).
	Source string `json:"-"`
	// Description is shown next to the name on the page.
	Description string `json:"description,omitempty"`
}

// DefaultAllowedImages are the registries runs may name when Config gives
// none, as the original allowed.
var DefaultAllowedImages = []string{"docker.io/", "ghcr.io/"}

// Config is what New needs; zero fields take the defaults their comments
// give.
type Config struct {
	// Runner runs the programs. Required.
	Runner Runner
	// Images resolves preset images for GET /api/v2/images (their digests)
	// and each run's image before the run waits for a slot, so that pulls
	// and conversions happen outside the slots (an *engine.Converter
	// bounds them and their time; its ErrConversionsBusy is a 503, its
	// ErrPullTimeout a 504). nil lists presets without digests and leaves
	// resolving to the Runner.
	Images engine.ImageSource
	// Presets are the images the page offers; the first is the default.
	Presets []Preset
	// AllowedImages are the reference prefixes a run may name besides the
	// presets (canonical or docker-style: "docker.io/library/", "ghcr.io/").
	// nil: DefaultAllowedImages. Only registry references are ever
	// allowed this way, never local paths, and s3:// references only
	// under an s3:// prefix ("s3://BUCKET/" or "s3://BUCKET/PREFIX/",
	// whole segments: "s3://b/p" is read as "s3://b/p/"). Such images
	// are read with the operator's S3 credentials, so nothing else of
	// s3 is open to visitors.
	AllowedImages []string
	// Snapshots, when set, gives the presets' runs restored VMs: the
	// Runner's pool of snapshots, kept by its Keep (PresetImages); until
	// a preset's snapshot is ready its runs boot, and a run whose restore
	// fails boots too (the engine gives the snapshot back to its pool).
	Snapshots *engine.SnapshotPool
	// Gists serves GET /api/gh/gist/...; nil answers 404 there.
	Gists *gist.Client
	// GitHubAPI is the GitHub API base the page uses to save gists
	// (default https://api.github.com).
	GitHubAPI string

	// Slots is how many runs go at once (default the number of CPUs);
	// it should match the engine's MaxConcurrent.
	Slots int
	// MaxQueue is how many requests may wait for a slot (default
	// 4×Slots); more get 503.
	MaxQueue int
	// MaxWait is how long a request waits for a slot before 503
	// (default 30s).
	MaxWait time.Duration
	// MaxBody caps a request body (default 1 MiB); larger ones get 413.
	MaxBody int64
	// BodyTimeout is how long a client may take to send its body
	// (default 10s); slower ones get 408.
	BodyTimeout time.Duration
	// WriteTimeout is how long a client may take to read a response
	// (default 30s); the connection is closed after it.
	WriteTimeout time.Duration
	// RunTimeout is the longest a program may run (default 10s); a
	// request may ask for less.
	RunTimeout time.Duration
	// MemoryMiB is each VM's memory (default engine.DefaultMemoryMiB).
	MemoryMiB int
	// MaxOutput caps stdout, stderr and the output directory of a run
	// each (default 1 MiB).
	MaxOutput int64
	// RatePerSecond and RateBurst limit runs and gist fetches per client
	// (defaults 2 and 4; a negative rate turns the limit off). GET
	// /api/v2/images has its own bucket per client, readRateFactor times
	// larger.
	RatePerSecond float64
	RateBurst     int
	// GistsPerHour is how many gists a client may have the server fetch
	// from GitHub in an hour (default 30, also the burst; negative: no
	// limit). Gist revisions the server has cached cost nothing, and
	// neither does a latest revision GitHub says has not changed: the
	// budget guards the server's GitHub rate limit, which visitors share.
	GistsPerHour int
	// TrustedProxies are the peers whose X-Forwarded-For is believed.
	TrustedProxies []netip.Prefix
	// Arch and OS are what this server runs (default amd64 and linux);
	// requests for others get 400.
	Arch, OS string
	// TempDir holds each run's input and output files (default os.TempDir).
	TempDir string
	// Log receives one JSON line per request; nil discards.
	Log *slog.Logger
	// Registry receives the metrics (default a new registry, served at
	// /metrics).
	Registry *prometheus.Registry
	// ChunkStats, when set, reads the counters of the chunk store that
	// lazily read s3:// images go through, shown on /metrics as
	// pe_chunk_*_total.
	ChunkStats func() blockstore.Stats

	// Prepare, when set, is the worker's start-up work (see
	// EnginePreparation): /healthz answers not ready until it is done.
	Prepare *Preparation
	// CheckS3, when set, asks the bucket of an s3:// preset whether it
	// answers for the image (image.CheckS3): every HealthInterval, so
	// that a worker whose store is broken leaves its balancer's pool.
	CheckS3 func(ctx context.Context, ref string) error
	// Warm, when set, is given each preset's image once it first
	// resolves, in the background, to fetch what its runs will read
	// (engine.WarmImage); it returns what it did when done or when ctx
	// is. It never holds readiness up.
	Warm func(ctx context.Context, img *engine.ResolvedImage) blockstore.PrefetchResult
	// DiskDirs are the directories (cache, temporary files) whose file
	// systems must keep MinFreeDisk free for the worker to be ready.
	DiskDirs    []string
	MinFreeDisk DiskLimit
	// HealthInterval is how often the readiness checks run (default
	// DefaultHealthInterval).
	HealthInterval time.Duration
	// DrainGrace is the time Serve keeps taking runs after its context
	// is done while /healthz answers "draining", and the least time it
	// keeps answering, so that the balancer's health check sees the
	// worker leave before it refuses runs and before its listener
	// closes: about the balancer's check interval × fall count.
	DrainGrace time.Duration
}

// Server is pe serve's HTTP handler.
type Server struct {
	cfg      Config
	handler  http.Handler
	queue    *queue
	limiter  *rateLimiter
	keys     clientKeys
	metrics  *metrics
	allowed  []string
	inFlight sync.WaitGroup
	// runs counts the run requests in progress (inFlight's count), for
	// Serve's drain.
	runs atomic.Int64

	// health is the kept state of the readiness checks (Start), and
	// draining is set once Serve's context is done.
	health   health
	draining atomic.Bool
	// refusing is set once a draining server takes no new run: at once,
	// or at the end of Config.DrainGrace.
	refusing atomic.Bool
	// abort cuts the runs in progress off (Abort).
	abort     chan struct{}
	abortOnce sync.Once

	readLimiter *rateLimiter
	gistBudget  *rateLimiter

	// keepAlive and liveStall time streaming runs (stream.go): tests
	// shorten them.
	keepAlive, liveStall time.Duration

	// images is the answer of GET /api/v2/images, replaced whole by
	// refreshImages: readers never wait for a resolution.
	images           atomic.Pointer[imagesAnswer]
	imagesRefreshing atomic.Bool
}

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Runner == nil {
		return nil, errors.New("server: no Runner")
	}
	if cfg.Slots <= 0 {
		cfg.Slots = runtime.NumCPU()
	}
	if cfg.MaxQueue == 0 {
		cfg.MaxQueue = 4 * cfg.Slots
	}
	cfg.MaxWait = pickDuration(cfg.MaxWait, 30*time.Second)
	cfg.HealthInterval = pickDuration(cfg.HealthInterval, DefaultHealthInterval)
	cfg.BodyTimeout = pickDuration(cfg.BodyTimeout, 10*time.Second)
	cfg.WriteTimeout = pickDuration(cfg.WriteTimeout, 30*time.Second)
	cfg.RunTimeout = pickDuration(cfg.RunTimeout, engine.DefaultTimeout)
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.MemoryMiB <= 0 {
		cfg.MemoryMiB = engine.DefaultMemoryMiB
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = 1 << 20
	}
	if cfg.RatePerSecond == 0 {
		cfg.RatePerSecond = 2
	}
	if cfg.RateBurst <= 0 {
		cfg.RateBurst = 4
	}
	if cfg.GistsPerHour == 0 {
		cfg.GistsPerHour = 30
	}
	if cfg.Arch == "" {
		cfg.Arch = "amd64"
	}
	if cfg.OS == "" {
		cfg.OS = "linux"
	}
	if cfg.GitHubAPI == "" {
		cfg.GitHubAPI = "https://api.github.com"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	if cfg.AllowedImages == nil {
		cfg.AllowedImages = DefaultAllowedImages
	}
	for i, p := range cfg.Presets {
		if p.Name == "" {
			return nil, fmt.Errorf("server: preset %d has no name", i)
		}
	}
	allowed, err := canonicalPrefixes(cfg.AllowedImages)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		queue:   newQueue(cfg.Slots, cfg.MaxQueue),
		limiter: newRateLimiter(cfg.RatePerSecond, cfg.RateBurst),
		keys:    clientKeys{trusted: cfg.TrustedProxies},
		allowed: allowed,
		abort:   make(chan struct{}),

		keepAlive: keepAliveInterval,
		liveStall: liveStallTimeout,
	}
	s.readLimiter = newRateLimiter(cfg.RatePerSecond*readRateFactor, cfg.RateBurst*readRateFactor)
	s.gistBudget = newRateLimiter(float64(cfg.GistsPerHour)/3600, cfg.GistsPerHour)
	s.gistBudget.idle = 2 * time.Hour // longer than the bucket takes to fill
	// A server killed with SIGKILL left its work directories behind.
	sweepWorkDirs(cfg.TempDir, cfg.Log)
	m, err := newMetrics(cfg.Registry)
	if err != nil {
		return nil, err
	}
	if cfg.ChunkStats != nil {
		if err := cfg.Registry.Register(chunkCollector(cfg.ChunkStats)); err != nil {
			return nil, fmt.Errorf("registering metrics: %w", err)
		}
	}
	s.metrics = m
	if err := s.registerHealthMetrics(cfg.Registry); err != nil {
		return nil, err
	}
	s.queue.onChange = func(queued, running int) {
		m.queueDepth.Set(float64(queued))
		m.vmsRunning.Set(float64(running))
	}
	s.handler = s.routes()
	return s, nil
}

func pickDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) routes() http.Handler {
	api := http.NewServeMux()
	api.Handle("POST /api/v2/runi/{arch}/{os}/{reference...}", s.refuseDraining(s.limited(http.HandlerFunc(s.handleRun))))
	api.Handle("GET /api/gh/gist/{id}", s.limited(http.HandlerFunc(s.handleGist)))
	api.Handle("GET /api/gh/gist/{id}/{revision}", s.limited(http.HandlerFunc(s.handleGist)))
	api.Handle("GET /api/v2/images", s.limitedBy(s.readLimiter, http.HandlerFunc(s.handleImages)))
	api.HandleFunc("GET /api/v2/config", s.handleConfig)
	api.HandleFunc("GET /api/v2/status", s.handleStatus)
	api.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NotFound", r.Method+" "+r.URL.Path+" is not part of the API")
	})
	api.HandleFunc("GET /healthz", s.handleHealth) // and HEAD
	api.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	// "/" takes every method: "GET /" would conflict with "/api/".
	api.Handle("/", s.staticHandler())

	// Browsers send Sec-Fetch-Site/Origin: a page of another site cannot
	// make a visitor's browser spend this server's VMs.
	cop := http.NewCrossOriginProtection()
	return s.logged(cop.Handler(cleanAPIPaths(api)))
}

// readRateFactor is how many more reads of cheap, cached answers
// (/api/v2/images) a client may make than runs.
const readRateFactor = 5

// cleanAPIPaths refuses API paths with empty, "." or ".." segments
// ("/api/v2/runi/amd64/linux//etc/passwd"): http.ServeMux would redirect
// them to a cleaned path that means something else. Empty segments are
// looked for in the path as sent: an s3:// reference reaches the run
// handler percent-encoded ("s3:%2F%2Fbucket%2F..."), which the mux
// leaves alone; "." and ".." are refused encoded or not.
func cleanAPIPaths(mux http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, raw := r.URL.Path, r.URL.EscapedPath()
		if strings.HasPrefix(p, "/api/") && (strings.Contains(p+"/", "/./") || strings.Contains(p+"/", "/../") || strings.Contains(raw+"/", "/./") || strings.Contains(raw+"/", "/../") || strings.Contains(raw, "//")) {
			writeError(w, http.StatusBadRequest, "BadPath", "the path has empty, \".\" or \"..\" segments")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// limited applies the per-client rate limit of runs.
func (s *Server) limited(next http.Handler) http.Handler { return s.limitedBy(s.limiter, next) }

// limitedBy applies a per-client rate limit.
func (s *Server) limitedBy(l *rateLimiter, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := rateKey(s.keys.clientAddr(r))
		if ok, wait := l.allow(key, time.Now()); !ok {
			s.metrics.rateLimited.Inc()
			secs := int(wait/time.Second) + 1
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			writeError(w, http.StatusTooManyRequests, "RateLimited",
				fmt.Sprintf("too many requests from %s: try again in %d s", key, secs))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// lingerTimeout bounds the reading of the rest of a body the server
// answered without reading (see logged).
const lingerTimeout = 2 * time.Second

type ctxKey int

const requestIDKey ctxKey = 0

// logged gives each request an id (X-Request-Id), logs it as one line
// when done and counts it.
func (s *Server) logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-Id")
		if !validRequestID(id) {
			var b [8]byte
			rand.Read(b[:])
			id = hex.EncodeToString(b[:])
		}
		w.Header().Set("X-Request-Id", id)
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			// An answer given before the body was read whole (a refusal)
			// closes the connection: Go's server would otherwise read up
			// to 256 KiB of the rest before answering, waiting for ever
			// for a body that does not come, and the balancer or client
			// may send the body elsewhere.
			body := &trackedBody{ReadCloser: r.Body}
			r.Body, rec.body = body, body
		}
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
		next.ServeHTTP(rec, r)
		if rec.body != nil && !rec.body.eof.Load() {
			// Not read whole: the answer went out first (Connection:
			// close), and Go's server now reads up to 256 KiB of the rest
			// before it closes the connection, so that a client still
			// sending gets the answer rather than a reset. A body that
			// does not come must not hold the connection (and a drain):
			// that read is bounded.
			http.NewResponseController(w).SetReadDeadline(time.Now().Add(min(s.cfg.BodyTimeout, lingerTimeout)))
		}
		route := routeLabel(r)
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(rec.status)).Inc()
		s.cfg.Log.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("request_id", id),
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", rec.status),
			slog.Int64("bytes", rec.bytes),
			slog.String("client", s.keys.clientAddr(r).String()),
			slog.Duration("duration", time.Since(start)),
		)
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// routeLabel keeps the metrics' label set small: the route, not the path.
func routeLabel(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/api/v2/runi/"):
		return "runi"
	case strings.HasPrefix(p, "/api/gh/gist/"):
		return "gist"
	case p == "/api/v2/images", p == "/api/v2/config", p == "/api/v2/status", p == "/healthz", p == "/metrics":
		return strings.TrimPrefix(p, "/api/v2/")
	case strings.HasPrefix(p, "/api/"):
		return "api_other"
	}
	return "static"
}

// statusRecorder remembers the status and size of a response, and asks
// to close the connection when the request's body was not read whole.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
	// body is the request's body (nil when it has none).
	body *trackedBody
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
		if r.body != nil && !r.body.eof.Load() {
			r.Header().Set("Connection", "close")
		}
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.WriteHeader(http.StatusOK)
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// trackedBody is a request body that knows whether it was read to its end.
type trackedBody struct {
	io.ReadCloser
	eof atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

// refuseDraining answers 503 Draining to runs that come once the server
// refuses them (a drain past its grace), before reading their body, with
// Retry-After and Connection: close: the balancer sends them to another
// worker.
func (s *Server) refuseDraining(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.refusing.Load() {
			drainingAnswer(w)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// drainingAnswer is the answer to a run a draining server refuses.
func drainingAnswer(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	w.Header().Set("Connection", "close")
	writeError(w, http.StatusServiceUnavailable, "Draining", "this worker is shutting down: send the request to another one")
}

// writeError answers with the API's error JSON, with the request id that
// logged set.
func writeError(w http.ResponseWriter, status int, name, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(ErrorBody{Error: name, Detail: detail, RequestID: w.Header().Get("X-Request-Id")})
}

// requestID returns the id logged gave r.
func requestID(r *http.Request) string {
	id, _ := r.Context().Value(requestIDKey).(string)
	return id
}

// writeJSON answers 200 with v as JSON.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	json.NewEncoder(w).Encode(v)
}

// ErrAborted is Serve's error when Abort cut the runs in progress off.
var ErrAborted = errors.New("stopped at once: the runs in progress were cut off")

// Serve serves on ln until ctx is done, then drains: /healthz answers 503
// "draining" at once, runs are still taken for Config.DrainGrace (the
// time the balancer's health checks need to see it: until then it sends
// runs, and refusing them would fail those the other workers have no room
// for), then new runs get 503 Draining (with Retry-After and Connection:
// close, before their body is read) while the listener stays open until
// the runs accepted (running or queued) have finished, at most
// drainTimeout (or the grace, when longer); runs still going then are cut
// off. Then it closes the
// listener and the connections and returns nil. Abort ends the drain at
// once (ErrAborted). Serve starts the readiness checks (Start).
func (s *Server) Serve(ctx context.Context, ln net.Listener, drainTimeout time.Duration) error {
	s.Start(ctx)
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.cfg.Log.Handler(), slog.LevelWarn),
		// Runs outlive ctx: a drain lets them finish.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	case <-s.abort:
	}
	start := time.Now()
	s.draining.Store(true)
	// Every answer from now on closes its connection: the balancer and
	// clients open their next one to another worker.
	hs.SetKeepAlivesEnabled(false)
	if s.cfg.DrainGrace <= 0 {
		s.refuse()
	}
	s.cfg.Log.Info("draining", "runs", s.runs.Load(), "grace", s.cfg.DrainGrace, "timeout", drainTimeout)
	deadline := start.Add(max(drainTimeout, s.cfg.DrainGrace))
	graceEnd := start.Add(s.cfg.DrainGrace)
	aborted := s.waitDrained(graceEnd, deadline)
	if aborted {
		hs.Close()
	} else {
		// The runs are done (or out of time): close the listener and the
		// idle connections, and give what is still being answered (a
		// gist, an image list) a moment.
		sctx, cancel := context.WithTimeout(context.Background(), max(time.Until(deadline), 5*time.Second))
		err := hs.Shutdown(sctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			// Runs still going past the drain time: cut them off.
			s.cfg.Log.Warn("drain timeout: cutting off the runs in progress", "runs", s.runs.Load())
			hs.Close()
		}
	}
	s.inFlight.Wait()
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	if aborted {
		return ErrAborted
	}
	s.cfg.Log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// refuse makes the server refuse new runs (503 Draining), and its queue
// take no more: the end of a drain's grace.
func (s *Server) refuse() {
	s.refusing.Store(true)
	s.queue.drain()
}

// waitDrained waits until graceEnd has passed and no run is in progress,
// or until deadline, or Abort (true). Runs keep being taken until
// graceEnd: the balancer sends them until its health checks see the
// drain, and a run it sends then is better run here than refused when the
// other workers are full.
func (s *Server) waitDrained(graceEnd, deadline time.Time) (aborted bool) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		now := time.Now()
		if !now.Before(graceEnd) && !s.refusing.Load() {
			s.refuse()
		}
		if !now.Before(deadline) || !now.Before(graceEnd) && s.runs.Load() == 0 {
			return false
		}
		select {
		case <-s.abort:
			return true
		case <-t.C:
		}
	}
}

// Abort stops Serve at once: the runs in progress are cut off (their VMs
// killed, their files removed) and Serve returns ErrAborted. For a second
// SIGTERM or SIGINT during a drain.
func (s *Server) Abort() {
	s.abortOnce.Do(func() { close(s.abort) })
}

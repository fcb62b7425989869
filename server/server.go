package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	api.Handle("POST /api/v2/runi/{arch}/{os}/{reference...}", s.limited(http.HandlerFunc(s.handleRun)))
	api.Handle("GET /api/gh/gist/{id}", s.limited(http.HandlerFunc(s.handleGist)))
	api.Handle("GET /api/gh/gist/{id}/{revision}", s.limited(http.HandlerFunc(s.handleGist)))
	api.Handle("GET /api/v2/images", s.limitedBy(s.readLimiter, http.HandlerFunc(s.handleImages)))
	api.HandleFunc("GET /api/v2/config", s.handleConfig)
	api.HandleFunc("GET /api/v2/status", s.handleStatus)
	api.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NotFound", r.Method+" "+r.URL.Path+" is not part of the API")
	})
	api.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
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
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, id))
		next.ServeHTTP(rec, r)
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

// statusRecorder remembers the status and size of a response.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
}

func (r *statusRecorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	r.wrote = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

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

// Serve serves on ln until ctx is done, then shuts down gracefully: it
// stops accepting connections and new runs, lets the accepted ones finish
// (up to drainTimeout), and returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener, drainTimeout time.Duration) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.cfg.Log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.queue.drain()
	sctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		// Runs still going past the drain time: cut them off.
		hs.Close()
	}
	s.inFlight.Wait()
	if err2 := <-errc; err2 != nil && !errors.Is(err2, http.ErrServerClosed) {
		return err2
	}
	return err
}

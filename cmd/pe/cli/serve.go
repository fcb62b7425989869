package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/server"
)

// serveFlags are pe serve's flags.
type serveFlags struct {
	pullFlags
	vmFlags
	listen                   string
	presets, allow, trusted  []string
	slots, queue, burst      int
	maxWait                  time.Duration
	bodyTimeout, writeTimout time.Duration
	runTimeout               time.Duration
	maxBody, maxOut          sizeFlag
	memory                   memoryFlag
	rate                     float64
	githubAPI                string
	drain                    time.Duration
	snapshots                bool
	cold                     bool
	registryAuth             bool
	githubTokenFile          string
	gistsPerHour             int
	maxConversions           int
	pullTimeout              time.Duration
	cacheMaxSize             sizeFlag
	chunkCache               sizeFlag
	minFreeDisk              diskLimitFlag
	drainGrace               time.Duration
	checkInterval            time.Duration
}

// diskLimitFlag is --min-free-disk: a size or a percentage.
type diskLimitFlag struct {
	text  string
	limit server.DiskLimit
}

// Set implements pflag.Value.
func (f *diskLimitFlag) Set(s string) error {
	l, err := server.ParseDiskLimit(s)
	if err != nil {
		return &flagValueError{fmt.Sprintf("--min-free-disk %q: want a size such as 1GiB, or a percentage such as 5%% (0: no limit)", s)}
	}
	f.text, f.limit = s, l
	return nil
}

// String implements pflag.Value.
func (f *diskLimitFlag) String() string { return f.text }

// Type implements pflag.Value.
func (f *diskLimitFlag) Type() string { return "size|percent" }

// newServeCmd returns "pe serve".
func newServeCmd(a *app) *cobra.Command {
	f := &serveFlags{}
	cmd := &cobra.Command{
		Use:   "serve [flags]",
		Short: "Serve the web page and HTTP API (Program Explorer compatible)",
		Long: `Serve pe's web page and HTTP API: edit files in the browser, pick an image and
a command, run them in a micro-VM, see the output, share the state as a link.

The API is Program Explorer's (POST /api/v2/runi/ARCH/OS/REFERENCE with
application/json or application/x.pe.archivev1, GET /api/gh/gist/ID[/REV]),
plus GET /api/v2/images, /api/v2/status, /healthz and /metrics (Prometheus).

Runs may name the --preset images (by name) and registry references under the
--allow-image prefixes; never local paths. s3:// images (pe image push) are
read with the operator's AWS_* credentials, so visitors may name them only as
--preset NAME=s3://... or under an --allow-image s3://BUCKET/PREFIX/ prefix,
percent-encoded in the path (POST /api/v2/runi/amd64/linux/s3:%2F%2FBUCKET/...).
With no --preset and a loopback
--listen address, the images in the local image cache are the presets (make
demo puts a busybox image there); on any other address only --preset images are.

Visitors spend none of the operator's credentials unless told: images are pulled
anonymously (--registry-auth uses docker's credentials), gists are fetched
without a token (--github-token-file gives one), and each client may have the
server fetch --gists-per-hour gists from GitHub (cached ones are free).

Each run takes one of --slots VM slots; up to --queue more wait, each at most
--max-wait, in order of arrival; past that the answer is 503 with Retry-After.
Each client (its address; X-Forwarded-For only from --trusted-proxy peers) may
start --rate runs a second, in bursts of --burst. With --snapshots it keeps a VM
snapshot of each preset and restores it instead of booting.

Behind a load balancer (HAProxy: deploy/), each worker started with the same
flags serves the same presets. GET (or HEAD) /healthz answers 200 "ready" only
when a run can run here: the boot snapshot is made (or, with --cold, the VMM
chosen), every preset resolves and the bucket of each s3:// preset answers for
it, and the file systems of the cache and temporary directories have more than
--min-free-disk free; these are checked in the background every
--check-interval, so a probe is cheap. Otherwise it answers 503 with one line
per reason ("not ready: ...", "draining"); /healthz?json (or ?verbose) gives
the same as JSON, and /metrics has pe_ready and pe_draining. s3:// presets are
read lazily and warmed at start: their metadata chunks and the chunks their
stored prefetch traces list are fetched into the chunk cache.

On SIGTERM or SIGINT pe serve drains: /healthz answers 503 "draining" at once;
for --drain-grace runs are still taken (set it to about the balancer's check
interval × fall count, HAProxy's inter × fall: until its checks see the worker
leave, the balancer sends runs, which may have nowhere else to go); after it,
new runs get 503 Draining with Retry-After: 1 and Connection: close before
their body is read (the balancer sends them to another worker); the runs it
accepted (running or queued) finish, at most --drain-timeout; then pe serve
exits 0. A second SIGTERM or SIGINT stops it at once: the runs in
progress are cut off, their VMs killed and their files removed. When the queue
is full (--queue, --max-wait) or a client is over --rate, the answer (503 or
429, with Retry-After) also comes before the body is read, with Connection:
close.

Images are pulled and converted before a run waits for a VM slot, at most
--max-conversions at once (more get 503 with Retry-After), each within
--pull-timeout, under the image limits (--max-image-size 2GB of compressed
layers, --max-image-unpacked 3GiB, --max-image-entries 500000,
--max-image-depth 256 by default here). After each
conversion the least recently used images are evicted until the cache takes at
most --cache-max-size; an image a run uses (here or in a pe run sharing the
cache) is never evicted.

Logs are JSON lines on standard error, one per request with its request id.`,
		Example: `  pe serve
  pe serve --listen :8080 --preset busybox=docker.io/library/busybox:1.36 --preset gcc:14
  pe serve --trusted-proxy 127.0.0.1/32 --rate 1 --burst 3 --slots 4
  pe serve --preset clang=s3://images/ce/clang:20 --allow-image s3://images/ce/`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runServe(cmd, a, f)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.listen, "listen", "127.0.0.1:8080", "the address to listen on")
	fs.StringArrayVar(&f.presets, "preset", nil, "offer an image as a preset: REFERENCE, or NAME=SOURCE where SOURCE is any image pe run takes (repeatable; the first is the default)")
	fs.StringArrayVar(&f.allow, "allow-image", nil, "let runs name registry references starting with this prefix, or s3:// images under s3://BUCKET/PREFIX/ (repeatable; default docker.io/ and ghcr.io/; '' for none but the presets)")
	fs.StringArrayVar(&f.trusted, "trusted-proxy", nil, "believe X-Forwarded-For from peers in this CIDR, such as 127.0.0.1/32 (repeatable)")
	fs.IntVar(&f.slots, "slots", runtime.NumCPU(), "runs at once (VMs)")
	fs.IntVar(&f.queue, "queue", 0, "requests that may wait for a slot (default 4 × --slots)")
	fs.DurationVar(&f.maxWait, "max-wait", 30*time.Second, "the longest a request waits for a slot")
	sizeVar(fs, &f.maxBody, "max-body", "1MiB", sizeSpec{min: 1, want: "a size such as 1MiB", small: "want a size of at least one byte, such as 1MiB"}, "the largest request body (JSON and input files)")
	fs.DurationVar(&f.bodyTimeout, "body-timeout", 10*time.Second, "the time a client has to send its request body")
	fs.DurationVar(&f.writeTimout, "write-timeout", 30*time.Second, "the time a client has to read a response")
	fs.DurationVar(&f.runTimeout, "run-timeout", engine.DefaultTimeout, "each program's time limit (a request may ask for less)")
	memoryVar(fs, &f.memory, "each VM's memory")
	sizeVar(fs, &f.maxOut, "max-output", "1MiB", maxOutputSpec, "keep at most this much of stdout, of stderr and of the output directory of a run")
	fs.Float64Var(&f.rate, "rate", 2, "runs and gist fetches a client may start per second (0: no limit)")
	fs.IntVar(&f.burst, "burst", 4, "how many of them may come at once")
	fs.BoolVar(&f.cold, "cold", false, "boot a VM for every run instead of restoring pe's boot snapshot (made by the first run, in the cache)")
	fs.BoolVar(&f.snapshots, "snapshots", false, "keep a VM snapshot of each preset (in the cache directory) and restore it for the preset's runs instead of booting")
	fs.DurationVar(&f.drain, "drain-timeout", 2*time.Minute, "at shutdown, how long the runs in progress (and queued) may take to finish")
	fs.DurationVar(&f.drainGrace, "drain-grace", 0, "at shutdown, how long to keep taking runs while /healthz says draining, before refusing them (503) and closing the listener: about the balancer's check interval × fall count")
	fs.DurationVar(&f.checkInterval, "check-interval", server.DefaultHealthInterval, "how often the readiness checks of /healthz run (presets, their buckets, free disk)")
	f.minFreeDisk.Set("1GiB")
	fs.Var(&f.minFreeDisk, "min-free-disk", "answer not ready on /healthz while the file system of the cache or temporary directory has less free than this: a size such as 1GiB, or a percentage such as 5% (0: no limit)")
	fs.BoolVar(&f.registryAuth, "registry-auth", false, "pull with the operator's registry credentials (docker's config.json and helpers); by default pulls are anonymous, so visitors reach public images only")
	fs.StringVar(&f.githubTokenFile, "github-token-file", "", "fetch gists with the GitHub token in this file (by default without one: 60 requests an hour for the whole server)")
	fs.IntVar(&f.gistsPerHour, "gists-per-hour", 30, "gists a client may have the server fetch from GitHub per hour (cached ones are free; 0: no limit)")
	fs.IntVar(&f.maxConversions, "max-conversions", engine.DefaultMaxConversions, "images pulled and converted at once, outside the VM slots (more get 503)")
	fs.DurationVar(&f.pullTimeout, "pull-timeout", engine.DefaultPullTimeout, "the longest pulling and converting an image may take")
	sizeVar(fs, &f.cacheMaxSize, "cache-max-size", "50GiB", sizeSpec{want: "a size such as 20GiB (0: no limit)"}, "evict least recently used images (never one in use) after each conversion until the image cache takes at most this (0: no limit)")
	registerGitHubAPI(fs, &f.githubAPI)
	f.pullFlags.defLimits = image.ServeLimits()
	chunkCacheVar(fs, &f.chunkCache)
	f.pullFlags.register(fs, true)
	f.vmFlags.register(cmd)
	return cmd
}

func runServe(cmd *cobra.Command, a *app, f *serveFlags) error {
	maxBody, maxOut, cacheMax := f.maxBody.Bytes(), f.maxOut.Bytes(), f.cacheMaxSize.Bytes()
	trusted, err := serveChecks(cmd, f)
	if err != nil {
		return err
	}
	rate := f.rate
	if rate == 0 {
		rate = -1 // the server's "no limit"
	}
	log := serveLog(cmd, a)
	popts, err := servePullOptions(cmd, a, f, log)
	if err != nil {
		return err
	}
	githubToken, gistsPerHour, err := serveGists(cmd, f)
	if err != nil {
		return err
	}
	cache, err := f.open()
	if err != nil {
		return err
	}
	loopback := listenIsLoopback(f.listen)
	presets, err := servePresets(cmd.Context(), f.presets, cache, loopback)
	if err != nil {
		return usageErrorf(cmd, "%v", err)
	}
	if len(presets) == 0 {
		warnNoPresets(log, loopback)
	}
	// Images are pulled and converted before a run takes a VM slot, a
	// few at a time, each within --pull-timeout.
	conv := &engine.Converter{Cache: cache, Options: popts, MaxConversions: f.maxConversions,
		Timeout: f.pullTimeout, CacheMaxSize: cacheMax, Log: log, ChunkCacheSize: f.chunkCache.Bytes()}
	source := serveSource(conv, popts, presets, !f.registryAuth)
	eng, err := serveEngine(a, f, source, log)
	if err != nil {
		return err
	}
	allow := serveAllow(cmd, f)
	memMiB := f.memory.MiB()
	var snaps *engine.SnapshotPool
	if f.snapshots {
		dir := filepath.Join(engineCacheDir(f.cacheDir), "snapshots")
		snaps = eng.NewSnapshotPool(engine.PoolOptions{Dir: dir, MemoryMiB: memMiB, Log: log})
		go snaps.Keep(cmd.Context(), server.PresetImages(presets))
	}
	chunks, err := cache.ChunkStore(f.chunkCache.Bytes())
	if err != nil {
		return err
	}
	gists := newGistClient(f.githubAPI, f.cacheDir)
	gists.Token = githubToken // never the environment's (gist.TokenFromEnv)
	srv, err := server.New(server.Config{
		Runner:         eng,
		Images:         source,
		Presets:        presets,
		AllowedImages:  allow,
		Gists:          gists,
		GistsPerHour:   gistsPerHour,
		GitHubAPI:      f.githubAPI,
		Slots:          f.slots,
		MaxQueue:       f.queue,
		MaxWait:        f.maxWait,
		MaxBody:        maxBody,
		BodyTimeout:    f.bodyTimeout,
		WriteTimeout:   f.writeTimout,
		RunTimeout:     f.runTimeout,
		MemoryMiB:      memMiB,
		Snapshots:      snaps,
		MaxOutput:      maxOut,
		RatePerSecond:  rate,
		RateBurst:      f.burst,
		TrustedProxies: trusted,
		Log:            log,
		ChunkStats:     chunks.Stats,
		// Made in the background, the boot snapshot does not hold up
		// the first request: the worker is not ready until it is there.
		Prepare:        server.EnginePreparation(eng, !f.cold, memMiB, log.Warn),
		CheckS3:        server.S3Checker(popts),
		Warm:           engine.WarmImage,
		DiskDirs:       []string{engineCacheDir(f.cacheDir), os.TempDir()},
		MinFreeDisk:    f.minFreeDisk.limit,
		HealthInterval: f.checkInterval,
		DrainGrace:     f.drainGrace,
	})
	if err != nil {
		return err
	}
	defer abortOnSecondSignal(srv, log)()
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	// The readiness checks start before the address is out: a probe
	// finds them under way.
	srv.Start(cmd.Context())
	fmt.Fprintf(cmd.ErrOrStderr(), "pe serve: http://%s/ (%d presets, %d VM slots; Ctrl+C stops)\n", ln.Addr(), len(presets), f.slots)
	err = srv.Serve(cmd.Context(), ln, f.drain)
	// The chunks fetched in the last second wait in memory to be written
	// to the chunk cache: write them before the process ends.
	chunks.Close()
	if cmd.Context().Err() != nil && err == nil {
		log.Info("stopped")
	}
	return err
}

// abortOnSecondSignal has a second SIGTERM or SIGINT stop srv at once
// (the first one, which main turns into the end of the command's
// context, starts the drain). The returned func stops listening.
func abortOnSecondSignal(srv *server.Server, log *slog.Logger) func() {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for n := 1; ; n++ {
			select {
			case <-done:
				return
			case sig := <-sigs:
				if n >= 2 {
					log.Warn("second signal: stopping at once, cutting the runs in progress off", "signal", sig.String())
					srv.Abort()
					return
				}
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}

// serveChecks checks the flags that only pe serve has, and parses
// --trusted-proxy.
func serveChecks(cmd *cobra.Command, f *serveFlags) ([]netip.Prefix, error) {
	if f.maxConversions < 1 || f.pullTimeout <= 0 {
		return nil, usageErrorf(cmd, "--max-conversions and --pull-timeout: want at least 1 and a positive duration")
	}
	if f.checkInterval <= 0 || f.drainGrace < 0 {
		return nil, usageErrorf(cmd, "--check-interval and --drain-grace: want a positive duration and one of 0 or more")
	}
	if f.slots < 1 {
		return nil, usageErrorf(cmd, "--slots %d: want at least 1", f.slots)
	}
	var trusted []netip.Prefix
	for _, s := range f.trusted {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, usageErrorf(cmd, "--trusted-proxy %q: want a CIDR such as 127.0.0.1/32", s)
		}
		trusted = append(trusted, p)
	}
	return trusted, nil
}

// servePullOptions are the server's pull options: no progress bars, its
// log, and anonymous pulls unless --registry-auth.
func servePullOptions(cmd *cobra.Command, a *app, f *serveFlags, log *slog.Logger) (image.PullOptions, error) {
	popts, err := f.pullFlags.options(cmd, a)
	if err != nil {
		return popts, err
	}
	popts.Progress = nil // no progress bars in a server's log
	popts.Log = log
	if !f.registryAuth {
		// No keychain at all: every pull is anonymous.
		popts.Keychain = authn.NewMultiKeychain()
	}
	return popts, nil
}

// serveEngine is the server's engine: --slots VMs at once, images from
// source.
func serveEngine(a *app, f *serveFlags, source engine.ImageSource, log *slog.Logger) (*engine.Engine, error) {
	lim := guest.DefaultLimits()
	lim.MaxOutput = max(lim.MaxOutput, f.maxOut.Bytes())
	opts := f.vmFlags.engineOptions(a, source, f.cacheDir, lim)
	opts.MaxConcurrent, opts.Log = f.slots, log
	opts.BootSnapshots = !f.cold
	return engine.New(opts)
}

// serveLog is the server's log: JSON lines on standard error, at debug
// level with --log-level debug.
func serveLog(cmd *cobra.Command, a *app) *slog.Logger {
	level := slog.LevelInfo
	if a.log.Enabled(cmd.Context(), slog.LevelDebug) {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewJSONHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
}

// serveGists reads --github-token-file and checks --gists-per-hour,
// returned as the server takes it (-1: no limit).
func serveGists(cmd *cobra.Command, f *serveFlags) (token string, perHour int, err error) {
	if f.githubTokenFile != "" {
		if token, err = gist.TokenFromFile(f.githubTokenFile); err != nil {
			return "", 0, usageErrorf(cmd, "--github-token-file: %v", err)
		}
	}
	perHour = f.gistsPerHour
	if perHour < 0 {
		return "", 0, usageErrorf(cmd, "--gists-per-hour %d: want 0 (no limit) or more", perHour)
	}
	if perHour == 0 {
		perHour = -1 // the server's "no limit"
	}
	return token, perHour, nil
}

// warnNoPresets logs that the page has no preset image, and how to give
// it one.
func warnNoPresets(log *slog.Logger, loopback bool) {
	if loopback {
		log.Warn("no preset images: pass --preset, or put an image in the cache (make demo)")
	} else {
		log.Warn("no preset images: pass --preset (the cached images are presets only on a loopback --listen address)")
	}
}

// serveAllow is --allow-image as the server takes it: nil for the
// server's default when not given, without empty entries (an empty one
// alone means none but the presets).
func serveAllow(cmd *cobra.Command, f *serveFlags) []string {
	if !cmd.Flags().Changed("allow-image") {
		return nil
	}
	allow := slices.DeleteFunc(slices.Clone(f.allow), func(s string) bool { return s == "" })
	if allow == nil {
		allow = []string{}
	}
	return allow
}

// listenIsLoopback reports whether a --listen address takes connections
// from this machine only: a loopback IP address or "localhost". An empty
// host (all addresses) and other names are not.
func listenIsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// serveSource resolves the server's images: the presets' EROFS files
// (--preset NAME=/path/x.erofs) as files, everything else through the
// image cache. Only the presets' files: a run names an image by preset
// name or registry reference (server.imageSource), and no other path
// reaches the file system even should that check fail. With publicOnly,
// a reference that is not a preset's must be readable anonymously in its
// registry, cached or not (server.PublicOnly).
func serveSource(source engine.ImageSource, popts image.PullOptions, presets []server.Preset, publicOnly bool) engine.ImageSource {
	files := presetFiles{}
	exempt := map[string]bool{}
	for _, p := range presets {
		src := p.Source
		if src == "" {
			src = p.Name
		}
		exempt[src] = true
		// What engine.FileSource takes for a file.
		if _, ok := image.EROFSFile(src); ok {
			files[src] = true
		}
	}
	if publicOnly {
		source = &server.PublicOnly{Next: source, Exempt: exempt, Insecure: popts.Insecure, Transport: popts.Transport}
	}
	if len(files) == 0 {
		return source
	}
	return &presetFileSource{files: files, file: &engine.FileSource{}, next: source}
}

// presetFiles are the preset sources that are EROFS files.
type presetFiles map[string]bool

// presetFileSource resolves the presets' EROFS files with file and the
// rest with next.
type presetFileSource struct {
	files      presetFiles
	file, next engine.ImageSource
}

// Resolve implements engine.ImageSource.
func (s *presetFileSource) Resolve(ctx context.Context, ref string) (*engine.ResolvedImage, error) {
	if s.files[ref] {
		return s.file.Resolve(ctx, ref)
	}
	return s.next.Resolve(ctx, ref)
}

// servePresets turns --preset values into presets; with none and a
// loopback listen address, the images in the cache are the presets, the
// most recently used first (busybox images ahead, as the page's default
// command suits them). On other addresses the cache is not offered: it
// may hold images the operator pulled with credentials.
func servePresets(ctx context.Context, flags []string, cache *image.Cache, loopback bool) ([]server.Preset, error) {
	var presets []server.Preset
	for _, p := range flags {
		name, source, ok := strings.Cut(p, "=")
		if !ok {
			name, source = p, ""
		}
		if name == "" || ok && source == "" {
			return nil, fmt.Errorf("--preset %q: want REFERENCE or NAME=SOURCE", p)
		}
		if source != "" {
			_, file := image.EROFSFile(source)
			if _, err := image.ParseReference(source); err != nil && !file {
				return nil, fmt.Errorf("--preset %q: %w", p, err)
			}
		}
		presets = append(presets, server.Preset{Name: name, Source: source})
	}
	if len(flags) > 0 || !loopback {
		return presets, nil
	}
	images, err := cache.List(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(images, func(x, y image.CachedImage) int {
		bx, by := strings.Contains(x.Reference, "busybox") || strings.Contains(x.Reference, "demo"), strings.Contains(y.Reference, "busybox") || strings.Contains(y.Reference, "demo")
		if bx != by {
			if bx {
				return -1
			}
			return 1
		}
		return y.LastUsed.Compare(x.LastUsed)
	})
	for _, img := range images {
		if img.Reference == "" {
			continue
		}
		presets = append(presets, server.Preset{
			Name:        image.FamiliarName(img.Reference),
			Source:      img.Reference,
			Description: fmt.Sprintf("%s, %s", img.Platform, humanBytes(img.Size)),
		})
	}
	return presets, nil
}

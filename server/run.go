package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/pearchive"
)

// maxReferenceLen is the longest image reference a run may name, as the
// original.
const maxReferenceLen = 255

// apiError is a failure with the status and name the client gets.
type apiError struct {
	status int
	name   string
	detail string
}

func (e *apiError) Error() string { return e.name + ": " + e.detail }

func badRequest(name, format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, name, fmt.Sprintf(format, args...)}
}

// handleRun is POST /api/v2/runi/{arch}/{os}/{reference...}.
func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) {
	s.inFlight.Add(1)
	s.runs.Add(1)
	defer func() {
		s.runs.Add(-1)
		s.inFlight.Done()
	}()
	// The same POST answers with JSON or, asked for it, server-sent
	// events: a cache in between must not mix them up.
	w.Header().Add("Vary", "Accept")
	var lr *liveResponse
	if wantsStream(r) {
		// The run's context, also cancelled when the stream's connection
		// breaks.
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		r = r.WithContext(ctx)
		lr = s.newLiveResponse(w, r, cancel)
	}
	if err := s.run(w, r, lr); err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			ae = &apiError{http.StatusInternalServerError, "Internal", err.Error()}
		}
		switch ae.status {
		case http.StatusServiceUnavailable:
			retry := s.cfg.MaxWait / 2
			switch ae.name {
			case "RegistryRateLimited":
				// The registry's limit lasts longer than a queue.
				retry = time.Minute
			case "Draining":
				// Another worker can take it now.
				retry = time.Second
				w.Header().Set("Connection", "close")
			}
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(retry/time.Second))))
		case http.StatusRequestTimeout:
			w.Header().Set("Connection", "close")
		}
		id := requestID(r)
		// The log has the whole story; the client gets what it can act on,
		// never host paths or console text (see publicDetail).
		level := slog.LevelInfo
		if ae.status >= 500 && ae.status != http.StatusServiceUnavailable {
			level = slog.LevelWarn
		}
		s.cfg.Log.Log(r.Context(), level, "run refused", "request_id", id, "status", ae.status, "error", ae.name, "detail", ae.detail)
		if lr != nil && lr.finish() {
			// The stream has begun (status 200 sent): the error is its
			// last event.
			lr.fail(ae.status, ae.name, publicDetail(ae, id))
			return
		}
		writeError(w, ae.status, ae.name, publicDetail(ae, id))
	}
}

// run does one run request, streaming it with lr when not nil; an error
// is answered by handleRun.
func (s *Server) run(w http.ResponseWriter, r *http.Request, lr *liveResponse) error {
	if a, o := r.PathValue("arch"), r.PathValue("os"); a != s.cfg.Arch {
		return badRequest("ArchMismatch", "this server runs %s/%s images, not arch %q", s.cfg.Arch, s.cfg.OS, clip(a, 100))
	} else if o != s.cfg.OS {
		return badRequest("OsMismatch", "this server runs %s/%s images, not os %q", s.cfg.Arch, s.cfg.OS, clip(o, 100))
	}
	source, preset, err := s.imageSource(r.PathValue("reference"))
	if err != nil {
		return err
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	archiveMode := mt == pearchive.ContentType
	if err != nil || (mt != "application/json" && !archiveMode) {
		return &apiError{http.StatusUnsupportedMediaType, "BadContentType",
			fmt.Sprintf("Content-Type %q: want application/json or %s", clip(r.Header.Get("Content-Type"), 100), pearchive.ContentType)}
	}
	// Refuse before reading a body the queue has no room for.
	if err := s.queue.admit(); err != nil {
		return queueError(err)
	}
	body, err := s.readBody(w, r)
	if err != nil {
		return err
	}

	var req RunRequest
	var archive []byte
	if archiveMode {
		js, rest, err := pearchive.SplitFramed(body)
		if err != nil {
			return badRequest("BadRequest", "%v", err)
		}
		body, archive = js, rest
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return badRequest("BadRequest", "request JSON: %v", err)
	}
	req.normalize()
	if err := req.check(); err != nil {
		return err
	}
	if req.Stdin != nil && !archiveMode {
		return badRequest("BadRequest", "stdin names a file of the input archive, and an application/json request has none")
	}

	work, err := os.MkdirTemp(s.cfg.TempDir, workDirPrefix)
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	defer os.RemoveAll(work)
	if err := writeOwner(work); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	run, closeStdin, err := s.engineRequest(&req, source, work, archive, archiveMode)
	if err != nil {
		return err
	}
	defer closeStdin()
	if lr != nil {
		run.Live = lr.live()
	}

	// A preset's run restores its snapshot, when there is one: the
	// snapshot's machine is the run's.
	if run.Snapshot = s.cfg.Snapshots.Snapshot(preset); run.Snapshot != nil {
		run.MemoryMiB = 0
	}
	// Pull and convert before taking a run slot: a slow pull never holds
	// a VM slot (Config.Images bounds conversions and their time).
	if s.cfg.Images != nil && run.Snapshot == nil {
		img, err := s.cfg.Images.Resolve(r.Context(), source)
		if err != nil {
			return runError(r.Context(), err)
		}
		if img.Release != nil {
			defer img.Release()
		}
		run.Resolved = img
	}

	res, runStart, err := s.execute(r, run, lr)
	if err != nil {
		return err
	}
	return s.respond(w, r, res, preset, run.OutputDir, archiveMode, runStart, lr)
}

// execute waits for a run slot and runs run; it returns the result and
// when the run started.
func (s *Server) execute(r *http.Request, run *engine.RunRequest, lr *liveResponse) (*engine.RunResult, time.Time, error) {
	waitStart := time.Now()
	release, err := s.queue.acquire(r.Context(), s.cfg.MaxWait)
	if err != nil {
		if r.Context().Err() != nil {
			return nil, time.Time{}, &apiError{499, "ClientGone", "the client went away while queued"}
		}
		return nil, time.Time{}, queueError(err)
	}
	s.metrics.queueWait.Observe(time.Since(waitStart).Seconds())
	if lr != nil {
		lr.slot(run.Timeout)
	}
	runStart := time.Now()
	res, err := s.cfg.Runner.Run(r.Context(), run)
	release()
	if run.Snapshot != nil && res != nil {
		label := "restored"
		if res.Launch != engine.LaunchSnapshot {
			label = "fallback" // the restore failed: the run booted
		}
		s.metrics.snapshotRuns.WithLabelValues(label).Inc()
	}
	if err != nil && res != nil && r.Context().Err() == nil {
		// The program ran, but what it left in its output directory was
		// refused on the way out (the engine's limits): the original
		// answered such a run with a Panic, and so does pe, with the
		// program's status and streams.
		s.cfg.Log.Warn("the run's output files were refused", "request_id", requestID(r), "error", err)
		res.Error = "the program's output files could not be returned: they are over this server's limits"
		os.RemoveAll(run.OutputDir)
		os.Mkdir(run.OutputDir, 0o755)
		err = nil
	}
	if err != nil {
		s.metrics.runDuration.WithLabelValues("error").Observe(time.Since(runStart).Seconds())
		return nil, time.Time{}, runError(r.Context(), err)
	}
	return res, runStart, nil
}

// engineRequest is the engine's request for a client's run req of
// source, with the run directory work holding its input and output
// directories; archive is the input archive of an archiveMode request.
// closeStdin closes the program's standard input, a file of the inputs.
func (s *Server) engineRequest(req *RunRequest, source, work string, archive []byte, archiveMode bool) (*engine.RunRequest, func(), error) {
	closeStdin := func() {}
	inputDir, outputDir := work+"/input", work+"/output"
	for _, d := range []string{inputDir, outputDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, nil, fmt.Errorf("run directory: %w", err)
		}
	}
	run := &engine.RunRequest{
		Image:     source,
		OutputDir: outputDir,
		Timeout:   s.cfg.RunTimeout,
		MemoryMiB: s.cfg.MemoryMiB,
		MaxOutput: s.cfg.MaxOutput,
		Overrides: engine.Overrides{
			Entrypoint:   req.Entrypoint,
			Cmd:          req.Cmd,
			Env:          req.Env,
			ReplaceEnv:   req.Env != nil,
			KeepImageCmd: true,
			Workdir:      req.Workdir,
		},
	}
	if req.TimeoutMs > 0 {
		run.Timeout = min(run.Timeout, time.Duration(req.TimeoutMs)*time.Millisecond)
	}
	if archiveMode {
		lim := pearchive.Limits{MaxBytes: s.cfg.MaxBody}
		if err := pearchive.UnpackDir(bytes.NewReader(archive), inputDir, lim); err != nil {
			return nil, nil, badRequest("BadRequest", "input archive: %v", err)
		}
		run.InputDir = inputDir
		if run.Workdir == "" {
			run.Workdir = guest.InputDir
		}
		if req.Stdin != nil {
			f, err := openInput(inputDir, *req.Stdin)
			if err != nil {
				return nil, nil, badRequest("BadRequest", "stdin: %v", err)
			}
			closeStdin = func() { f.Close() }
			run.Stdin = f
		}
	}

	return run, closeStdin, nil
}

// respond answers a run that gave a result: JSON, or the response archive
// with the output files for an archive request; as the stream's last
// events when lr is not nil.
func (s *Server) respond(w http.ResponseWriter, r *http.Request, res *engine.RunResult, preset, outputDir string, archiveMode bool, runStart time.Time, lr *liveResponse) error {
	if res.Image.Converted {
		s.metrics.imageCache.WithLabelValues("miss").Inc()
	} else {
		s.metrics.imageCache.WithLabelValues("hit").Inc()
	}
	resp := responseFor(res, !archiveMode)
	if preset != "" {
		// A preset's source may be a file or a layout on the server:
		// the client knows the preset by its name.
		if ref, err := image.ParseReference(resp.Image); err != nil || ref.Transport() != image.TransportRegistry {
			resp.Image = preset
		}
	}
	s.metrics.runDuration.WithLabelValues(resp.Kind).Observe(time.Since(runStart).Seconds())
	js, err := json.Marshal(resp)
	if err != nil {
		return err
	}
	if lr != nil {
		var archive []byte
		if archiveMode {
			var out bytes.Buffer
			if err := packOutputs(&out, res, outputDir); err != nil {
				return fmt.Errorf("packing the output files: %w", err)
			}
			archive = out.Bytes()
		}
		// A run that neither started nor wrote (as far as the stream
		// knows) still answers as a stream: the client asked for one.
		lr.begin()
		lr.finish()
		lr.result(js, archive)
		return nil
	}

	// A client that stops reading must not hold the handler for ever.
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !archiveMode {
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(js, '\n'))
		return nil
	}
	var out bytes.Buffer
	if err := packOutputs(&out, res, outputDir); err != nil {
		return fmt.Errorf("packing the output files: %w", err)
	}
	// The archive is in memory anyway (its length goes first); the frame
	// around it is streamed, not built in a second buffer.
	w.Header().Set("Content-Type", pearchive.ContentType)
	w.Header().Set("Content-Length", strconv.FormatInt(pearchive.FramedLen(len(js), int64(out.Len())), 10))
	if err := pearchive.WriteFramed(w, js, &out); err != nil {
		s.cfg.Log.Info("client stopped reading the response", "request_id", r.Context().Value(requestIDKey), "error", err)
	}
	return nil
}

// imageSource maps the reference a client sent to what pe resolves: a
// preset's source, or a registry or s3:// reference under an allowed
// prefix, and the preset's name ("" for none). Anything else (local
// paths above all) is refused.
func (s *Server) imageSource(ref string) (source, preset string, err error) {
	if ref == "" {
		return "", "", badRequest("BadPath", "no image reference in the path: want /api/v2/runi/ARCH/OS/REFERENCE")
	}
	if len(ref) > maxReferenceLen {
		return "", "", badRequest("BadReference", "the image reference is %d bytes long, over %d", len(ref), maxReferenceLen)
	}
	for _, p := range s.cfg.Presets {
		if ref == p.Name || (p.Source != "" && ref == p.Source) {
			if p.Source != "" {
				return p.Source, p.Name, nil
			}
			return p.Name, p.Name, nil
		}
	}
	parsed, err := image.ParseReference(ref)
	// Nothing on this machine (an EROFS file, a layout, an archive, a
	// path) is named by a client, neither as it wrote it nor in the
	// canonical form handed on to the engine; of the URL-like references
	// only s3:// ones, and those only under an s3:// prefix (below).
	s3 := err == nil && parsed.Transport() == image.TransportS3
	if err != nil || image.IsLocal(ref) || parsed.IsLocal() || strings.Contains(ref, "://") && !s3 {
		return "", "", badRequest("BadReference", "%q is not an image reference this server accepts (a registry reference such as docker.io/library/busybox:latest, or a preset)", ref)
	}
	canon := parsed.String()
	for _, p := range s.allowed {
		// An s3:// reference matches s3:// prefixes only, and a registry
		// reference registry prefixes only: "s" must not open s3.
		if strings.HasPrefix(p, s3Prefix) == s3 && strings.HasPrefix(canon, p) {
			return canon, "", nil
		}
	}
	return "", "", &apiError{http.StatusForbidden, "ImageNotAllowed",
		fmt.Sprintf("%s is not in the images this server runs (presets, or references under %s)", image.FamiliarName(canon), strings.Join(s.cfg.AllowedImages, ", "))}
}

// s3Prefix starts the s3:// references and allowed prefixes.
const s3Prefix = "s3://"

// canonicalPrefixes writes docker.io prefixes the way canonical references
// spell them, so "docker.io/library/" matches
// "index.docker.io/library/busybox:latest", and checks s3:// prefixes,
// ending each with "/" so that "s3://b/p" does not open "s3://b/pq/x".
func canonicalPrefixes(prefixes []string) ([]string, error) {
	var out []string
	for _, p := range prefixes {
		if rest, ok := strings.CutPrefix(p, "docker.io/"); ok {
			p = "index.docker.io/" + rest
		}
		if strings.HasPrefix(p, s3Prefix) {
			if !strings.HasSuffix(p, "/") {
				p += "/"
			}
			// A prefix is good when a reference under it parses and
			// keeps it (no empty, "." or ".." segments, a real bucket).
			r, err := image.ParseReference(p + "x")
			if err != nil || !strings.HasPrefix(r.String(), p) {
				return nil, fmt.Errorf("server: allowed image prefix %q: want s3://BUCKET/ or s3://BUCKET/PREFIX/ (%v)", p, err)
			}
		} else if strings.Contains(p, "://") {
			return nil, fmt.Errorf("server: allowed image prefix %q: only registry and s3:// prefixes are allowed", p)
		}
		out = append(out, p)
	}
	return out, nil
}

// maxDiscardedBody is how much of a body over MaxBody the server reads
// and drops before it answers 413: a client still sending a body the
// server has not read gets its connection reset, often before it reads
// the answer, and a page that sent too large a file would show a network
// error instead of the limit. Larger bodies are not worth the time.
const maxDiscardedBody = 16 << 20

// readBody reads the whole body under the size cap and the body deadline.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	rc := http.NewResponseController(w)
	rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout))
	defer rc.SetReadDeadline(time.Time{})
	if r.ContentLength > s.cfg.MaxBody {
		if r.ContentLength <= maxDiscardedBody {
			io.Copy(io.Discard, io.LimitReader(r.Body, maxDiscardedBody))
		}
		return nil, &apiError{http.StatusRequestEntityTooLarge, "TooLarge",
			fmt.Sprintf("the request body is %d bytes, over the limit of %d", r.ContentLength, s.cfg.MaxBody)}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBody))
	if err == nil {
		return body, nil
	}
	var tooBig *http.MaxBytesError
	var netErr interface{ Timeout() bool }
	switch {
	case errors.As(err, &tooBig):
		return nil, &apiError{http.StatusRequestEntityTooLarge, "TooLarge",
			fmt.Sprintf("the request body is over the limit of %d bytes", s.cfg.MaxBody)}
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return nil, &apiError{http.StatusRequestTimeout, "ReadTimeout",
			fmt.Sprintf("the request body did not arrive within %v", s.cfg.BodyTimeout)}
	}
	return nil, badRequest("Read", "reading the request body: %v", err)
}

// openInput opens name, a path inside the input directory; it cannot
// leave it.
func openInput(dir, name string) (*os.File, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := root.Open(strings.TrimPrefix(name, "/run/pe/input/"))
	if err != nil {
		return nil, fmt.Errorf("no file %q in the input archive", clip(name, 100))
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%q in the input archive is not a regular file", clip(name, 100))
	}
	return f, nil
}

// packOutputs writes the response archive: stdout, stderr, and the output
// directory as dir/.
func packOutputs(w io.Writer, res *engine.RunResult, outputDir string) error {
	aw := pearchive.NewWriter(w)
	aw.File("stdout", int64(len(res.Stdout)), bytes.NewReader(res.Stdout))
	aw.File("stderr", int64(len(res.Stderr)), bytes.NewReader(res.Stderr))
	aw.Dir("dir")
	if err := aw.AddDir(outputDir, pearchive.PackOptions{}); err != nil {
		return err
	}
	aw.Pop()
	// The Writer's errors are sticky: Close reports any of the above.
	return aw.Close()
}

// queueError maps a queue refusal to 503: QueueFull, or Draining when the
// server shuts down.
func queueError(err error) error {
	if errors.Is(err, errDraining) {
		return &apiError{http.StatusServiceUnavailable, "Draining", "this worker is shutting down: send the request to another one"}
	}
	return &apiError{http.StatusServiceUnavailable, "QueueFull", err.Error()}
}

// runError maps an engine failure to the status that fits. Failures the
// request caused (its image, its command) are 4xx; the others are the
// server's, and their client sees a generic detail (publicDetail).
func runError(ctx context.Context, err error) error {
	var vmErr *engine.VMError
	switch {
	case ctx.Err() != nil:
		return &apiError{499, "ClientGone", "the client went away during the run"}
	case errors.Is(err, image.ErrNotFound), errors.Is(err, image.ErrPlatformNotFound), errors.Is(err, image.ErrNotCached):
		return &apiError{http.StatusNotFound, "ImageNotFound", err.Error()}
	case errors.Is(err, image.ErrUnauthorized):
		// Registries answer so for private images and, to anonymous
		// clients, for names that do not exist: either way there is no
		// public image of that name.
		return &apiError{http.StatusNotFound, "ImageNotFound", "the registry refused anonymous access: the image does not exist or is not public (this server runs public images only)"}
	case errors.Is(err, image.ErrTooLarge):
		return badRequest("ImageTooLarge", "%v", err)
	case errors.Is(err, image.ErrUnsupported):
		return badRequest("UnsupportedImage", "%v", err)
	case errors.Is(err, engine.ErrConversionsBusy):
		return &apiError{http.StatusServiceUnavailable, "ConversionsBusy", err.Error()}
	case errors.Is(err, engine.ErrPullTimeout):
		return &apiError{http.StatusGatewayTimeout, "PullTimeout", err.Error()}
	case errors.Is(err, engine.ErrNoCommand), errors.Is(err, engine.ErrUnknownUser):
		return badRequest("OciSpec", "%v", err)
	case errors.Is(err, image.ErrRateLimited):
		return &apiError{http.StatusServiceUnavailable, "RegistryRateLimited", "the image registry is rate-limiting this server; try again later"}
	case errors.Is(err, errRegistryUnreachable):
		return &apiError{http.StatusBadGateway, "ImageService", "the image registry could not be reached; try again later"}
	case errors.Is(err, image.ErrDigestMismatch):
		return &apiError{http.StatusBadGateway, "ImageService", err.Error()}
	case errors.As(err, &vmErr):
		return &apiError{http.StatusInternalServerError, "Worker", err.Error()}
	}
	return &apiError{http.StatusInternalServerError, "Internal", err.Error()}
}

// publicDetail is the detail a client gets for e: for a server error a
// generic sentence with the request id (the log has the error, which may
// name host paths or hold the guest console), else e's detail with host
// paths taken out.
func publicDetail(e *apiError, requestID string) string {
	if e.status >= 500 && e.status != http.StatusServiceUnavailable && e.status != http.StatusBadGateway {
		return "the server failed to run this request; its log has the details under request id " + requestID
	}
	return scrubHostPaths(e.detail)
}

// hostPath matches an absolute path in a message: a slash at the start
// or after a space, quote, parenthesis or '=' (so that neither image
// references, "docker.io/library/busybox", nor URLs match), then path
// characters.
var hostPath = regexp.MustCompile(`(^|[\s"'(=])(/[^\s"'():,;]*)`)

// scrubHostPaths replaces the absolute paths in s with "…", except the
// guest's own that clients know (/run/pe/..., /dev/null): error texts
// from the engine and the image cache name the server's files.
func scrubHostPaths(s string) string {
	return hostPath.ReplaceAllStringFunc(s, func(m string) string {
		i := strings.IndexByte(m, '/')
		p := m[i:]
		if p == "/" || p == "/dev/null" || p == guest.InputDir || strings.HasPrefix(p, "/run/pe/") {
			return m
		}
		return m[:i] + "…"
	})
}

// Work directories: TempDir/pe-serve-*, each holding the file "owner"
// with the PID of the pe serve that made it, so that a server killed with
// SIGKILL has its directories removed by the next one (sweepWorkDirs).
const (
	workDirPrefix = "pe-serve-"
	workDirOwner  = "owner"
)

// writeOwner records this process as dir's owner.
func writeOwner(dir string) error {
	return os.WriteFile(filepath.Join(dir, workDirOwner), []byte(strconv.Itoa(os.Getpid())), 0o600)
}

// sweepWorkDirs removes the work directories in tempDir whose server is
// gone: the owner file names a process that no longer exists, or there
// is no owner file and the directory is over an hour old (its server may
// be about to write one). Directories of live servers, this one's or
// another's, are left alone.
func sweepWorkDirs(tempDir string, log *slog.Logger) {
	if tempDir == "" {
		tempDir = os.TempDir()
	}
	dirs, _ := filepath.Glob(filepath.Join(tempDir, workDirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, workDirOwner))
		if err != nil {
			if fi, serr := os.Lstat(d); serr != nil || !fi.IsDir() || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 && processAlive(pid) {
			continue
		}
		log.Info("removing the work directory of a pe serve that is gone", "dir", d)
		os.RemoveAll(d)
	}
}

// processAlive reports whether a process with this PID exists.
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Package server is pe serve: the HTTP API and the embedded web page.
//
// The API is compatible with Program Explorer's (programexplorer.org), so
// its web client works against pe unchanged:
//
//   - POST /api/v2/runi/{arch}/{os}/{reference...} runs a command in an
//     image. The body is the JSON request (Content-Type application/json)
//     or "u32 LE length ‖ JSON ‖ pearchive v1 of the input files"
//     (application/x.pe.archivev1); the response has the same framing, the
//     Ok/Overtime/Panic kinds, siginfo, rusage and manifest_digest, and the
//     output archive holds stdout, stderr and dir/ (the program's
//     /run/pe/output).
//   - GET /api/gh/gist/{id}[/{revision}] proxies GitHub gists through the
//     gist package's cache.
//
// pe adds GET /api/v2/images (the preset images, with digests),
// GET /api/v2/config, GET /api/v2/status (queue depth, for the page's
// status line), GET /healthz and GET /metrics (Prometheus), and the page at
// "/".
//
// Every run passes, in order: the per-client rate limit (keyed on the real
// client address; X-Forwarded-For is believed only from trusted proxies), a
// check that the queue has room, the request body read under a size cap
// and a deadline, and a FIFO queue in front of the engine's VM slots with a
// maximum wait. Errors are JSON {"error": "...", "detail": "...",
// "request_id": "..."} with the status that fits (400, 403, 404, 408, 413,
// 429, 503 with Retry-After): whatever a client sends gets a 4xx, and no
// detail carries host paths or the guest console (a 500's says only that
// the server failed, with the request id the log has the error under).
// docs/security.md has the threat model.
//
// A worker behind a load balancer (docs/api.md, deploy/): GET and HEAD
// /healthz answer 200 "ready" only when a run can run here (Config.Prepare
// done: the boot snapshot made; every preset resolving, the bucket of
// each s3:// preset answering; Config.DiskDirs with Config.MinFreeDisk
// free), else 503 with one line per reason ("not ready: ...",
// "draining"), from state the background checks (Start) keep, so a probe
// is cheap; ?json gives a HealthReport; /metrics has pe_ready and
// pe_draining. s3:// presets are warmed once resolved (Config.Warm). When
// Serve's context is done the server drains: /healthz answers "draining",
// runs are still taken for Config.DrainGrace (while the balancer's checks
// notice), then new runs get 503 Draining (Retry-After: 1, Connection:
// close, the body not read) on the listener that stays open until the
// accepted runs finish (at most the drain timeout); Abort
// stops it at once. Every answer given before the body was read whole
// closes the connection instead of reading the rest.
package server

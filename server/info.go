package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pe-project/pe/gist"
)

// GistResponse is GET /api/gh/gist/{id}[/{revision}]: the original
// ghserver's shape (files as text, the revision served, all revisions
// newest first) plus the description and page.
type GistResponse struct {
	Files       map[string]string `json:"files"`
	Version     string            `json:"version"`
	Versions    []string          `json:"versions"`
	Description string            `json:"description,omitempty"`
	HTMLURL     string            `json:"html_url,omitempty"`
}

// handleGist is the gist proxy.
func (s *Server) handleGist(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Gists == nil {
		writeError(w, http.StatusNotFound, "GistsDisabled", "this server does not proxy gists")
		return
	}
	idText := r.PathValue("id")
	if rev := r.PathValue("revision"); rev != "" {
		idText += "/" + rev
	}
	id, rev, err := gist.ParseID(idText)
	if err != nil {
		s.metrics.gistRequests.WithLabelValues("bad_request").Inc()
		writeError(w, http.StatusBadRequest, "BadGistID", err.Error())
		return
	}
	// Each client has a budget of fetches from GitHub: the server's
	// GitHub rate limit is shared by all its visitors. What the cache
	// answers costs nothing.
	key := rateKey(s.keys.clientAddr(r))
	ok, wait := s.gistBudget.available(key, time.Now())
	var g *gist.Gist
	var cost int
	if !ok {
		if g = s.cfg.Gists.Cached(id, rev); g == nil {
			s.metrics.gistRequests.WithLabelValues("budget").Inc()
			secs := int(wait/time.Second) + 1
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			writeError(w, http.StatusTooManyRequests, "GistBudget",
				fmt.Sprintf("this client has fetched its %d gists of the hour from GitHub: try again in %d s", s.cfg.GistsPerHour, secs))
			return
		}
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		g, cost, err = s.cfg.Gists.FetchCounted(ctx, id, rev)
		cancel()
		// Charged after the fact: fetches running at once may together
		// spend a little past the budget (the run limit bounds them).
		s.gistBudget.charge(key, cost, time.Now())
	}
	var rl *gist.RateLimitError
	switch {
	case errors.Is(err, gist.ErrNotFound):
		s.metrics.gistRequests.WithLabelValues("not_found").Inc()
		writeError(w, http.StatusNotFound, "GistNotFound", fmt.Sprintf("no gist %s", idText))
		return
	case errors.As(err, &rl):
		s.metrics.gistRequests.WithLabelValues("rate_limited").Inc()
		secs := max(1, int(time.Until(rl.Reset).Seconds())+1)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		// Not GitHub's text: it tells the operator how to add a token.
		writeError(w, http.StatusTooManyRequests, "GitHubRateLimited",
			fmt.Sprintf("GitHub's rate limit for this server is spent: try again in %d s", secs))
		return
	case err != nil:
		s.metrics.gistRequests.WithLabelValues("error").Inc()
		s.cfg.Log.Warn("gist fetch failed", "request_id", requestID(r), "gist", idText, "error", err)
		if r.Context().Err() != nil {
			return // nobody to answer
		}
		writeError(w, http.StatusBadGateway, "GitHub",
			fmt.Sprintf("gist %s could not be fetched from GitHub; the server's log has the details under request id %s", idText, requestID(r)))
		return
	}
	s.metrics.gistRequests.WithLabelValues("ok").Inc()
	resp := GistResponse{
		Files:       map[string]string{},
		Version:     g.Revision,
		Versions:    g.Revisions,
		Description: g.Description,
		HTMLURL:     g.HTMLURL,
	}
	for _, f := range g.Files {
		resp.Files[f.Name] = strings.ToValidUTF8(string(f.Content), string(utf8.RuneError))
	}
	if rev != "" {
		// A revision never changes.
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "public, max-age=60")
	}
	writeJSON(w, resp)
}

// ImagesResponse is GET /api/v2/images.
type ImagesResponse struct {
	Default string        `json:"default"`
	Images  []ImagePreset `json:"images"`
}

// ImagePreset is one preset image with its current digest.
type ImagePreset struct {
	Reference   string `json:"reference"`
	Digest      string `json:"digest,omitempty"`
	Description string `json:"description,omitempty"`
	// Error says why the digest is missing.
	Error string `json:"error,omitempty"`
}

// imagesAnswer is a rendered GET /api/v2/images answer.
type imagesAnswer struct {
	body    []byte
	expires time.Time
}

// imagesTTL is how long a resolution of the presets is served before it is
// made again.
const imagesTTL = time.Minute

// handleImages lists the presets. It never waits for a resolution: it
// serves the last answer and, when that is over a minute old, has
// refreshImages make a new one in the background (the first answer, with
// none made yet, lists the presets without digests).
func (s *Server) handleImages(w http.ResponseWriter, r *http.Request) {
	a := s.images.Load()
	if a == nil {
		a = s.renderImages(nil)
		if s.cfg.Images == nil {
			a.expires = time.Now().Add(100 * 365 * 24 * time.Hour)
		}
		s.images.CompareAndSwap(nil, a)
	}
	if s.cfg.Images != nil && (a.expires.IsZero() || time.Now().After(a.expires)) && s.imagesRefreshing.CompareAndSwap(false, true) {
		go s.refreshImages()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(a.body)
}

// refreshImages resolves the presets and stores the new answer; one runs
// at a time (imagesRefreshing).
func (s *Server) refreshImages() {
	defer s.imagesRefreshing.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	digests := map[string]string{}
	for _, p := range s.cfg.Presets {
		src := p.Source
		if src == "" {
			src = p.Name
		}
		img, err := s.cfg.Images.Resolve(ctx, src)
		if err != nil {
			// The error may name host files: the log has it.
			s.cfg.Log.Warn("resolving a preset for /api/v2/images", "preset", p.Name, "error", err)
			continue
		}
		digests[p.Name] = img.Digest
		if img.Release != nil {
			img.Release()
		}
	}
	a := s.renderImages(digests)
	a.expires = time.Now().Add(imagesTTL)
	s.images.Store(a)
}

// renderImages renders the answer with the digests given (nil: not
// resolved yet).
func (s *Server) renderImages(digests map[string]string) *imagesAnswer {
	resp := ImagesResponse{Images: []ImagePreset{}}
	for _, p := range s.cfg.Presets {
		ip := ImagePreset{Reference: p.Name, Description: p.Description}
		if digests != nil {
			// A preset that resolved without a digest (an EROFS file)
			// is available all the same.
			d, ok := digests[p.Name]
			if ip.Digest = d; !ok {
				ip.Error = "not available now"
			}
		}
		resp.Images = append(resp.Images, ip)
	}
	if len(resp.Images) > 0 {
		resp.Default = resp.Images[0].Reference
	}
	b, _ := json.Marshal(resp) // strings only: it cannot fail
	return &imagesAnswer{body: append(b, '\n')}
}

// ConfigResponse is GET /api/v2/config: what the page needs to know.
type ConfigResponse struct {
	GitHubAPI string `json:"github_api"`
	MaxBody   int64  `json:"max_body"`
	TimeoutMs int64  `json:"timeout_ms"`
	MaxOutput int64  `json:"max_output"`
	Arch      string `json:"arch"`
	OS        string `json:"os"`
}

func (s *Server) handleConfig(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, ConfigResponse{
		GitHubAPI: s.cfg.GitHubAPI,
		MaxBody:   s.cfg.MaxBody,
		TimeoutMs: s.cfg.RunTimeout.Milliseconds(),
		MaxOutput: s.cfg.MaxOutput,
		Arch:      s.cfg.Arch,
		OS:        s.cfg.OS,
	})
}

// StatusResponse is GET /api/v2/status.
type StatusResponse struct {
	Queued  int `json:"queued"`
	Running int `json:"running"`
	Slots   int `json:"slots"`
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	queued, running := s.queue.counts()
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, StatusResponse{Queued: queued, Running: running, Slots: s.cfg.Slots})
}

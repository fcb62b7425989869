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
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	g, err := s.cfg.Gists.Fetch(ctx, id, rev)
	var rl *gist.RateLimitError
	switch {
	case errors.Is(err, gist.ErrNotFound):
		s.metrics.gistRequests.WithLabelValues("not_found").Inc()
		writeError(w, http.StatusNotFound, "GistNotFound", fmt.Sprintf("no gist %s", idText))
		return
	case errors.As(err, &rl):
		s.metrics.gistRequests.WithLabelValues("rate_limited").Inc()
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(time.Until(rl.Reset).Seconds())+1)))
		writeError(w, http.StatusTooManyRequests, "GitHubRateLimited", err.Error())
		return
	case err != nil:
		s.metrics.gistRequests.WithLabelValues("error").Inc()
		writeError(w, http.StatusBadGateway, "GitHub", err.Error())
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

// handleImages lists the presets, resolved at most once a minute.
func (s *Server) handleImages(w http.ResponseWriter, r *http.Request) {
	s.imagesMu.Lock()
	defer s.imagesMu.Unlock()
	if s.imagesCache == nil || time.Now().After(s.imagesExpires) {
		resp := ImagesResponse{Images: []ImagePreset{}}
		for _, p := range s.cfg.Presets {
			ip := ImagePreset{Reference: p.Name, Description: p.Description}
			if s.cfg.Images != nil {
				src := p.Source
				if src == "" {
					src = p.Name
				}
				ctx, cancel := context.WithTimeout(r.Context(), 2*time.Minute)
				img, err := s.cfg.Images.Resolve(ctx, src)
				cancel()
				if err != nil {
					ip.Error = err.Error()
				} else {
					ip.Digest = img.Digest
					if img.Release != nil {
						img.Release()
					}
				}
			}
			resp.Images = append(resp.Images, ip)
		}
		if len(resp.Images) > 0 {
			resp.Default = resp.Images[0].Reference
		}
		b, err := json.Marshal(resp)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "Internal", err.Error())
			return
		}
		s.imagesCache, s.imagesExpires = append(b, '\n'), time.Now().Add(time.Minute)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(s.imagesCache)
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

// Package gisttest is a fake GitHub gist API for tests: an httptest
// server answering GET /gists/{id}, GET /gists/{id}/{sha} and POST /gists
// with JSON shaped exactly like GitHub's (recorded from GitHub's REST
// documentation into gist/testdata/), ETags and 304s, raw_url downloads,
// 404s and rate limits.
package gisttest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Request is a request the server received.
type Request struct {
	Method, Path string
	// Authorization and IfNoneMatch are the request's headers.
	Authorization, IfNoneMatch string
	// Status is the status answered.
	Status int
}

// Server is the fake API. Its URL is the API's base URL.
type Server struct {
	*httptest.Server
	// Token is the token POST /gists wants ("" refuses every create).
	Token string

	dir       string
	mu        sync.Mutex
	latest    map[string][]byte // id → gist object
	revisions map[string][]byte // id@sha → gist object
	raw       map[string][]byte // path under /raw/ → content
	requests  []Request
	rateLimit time.Time
	created   []byte
}

// rawPrefix replaces https://gist.githubusercontent.com in the recorded
// answers, so raw_url points at the fake.
const rawPrefix = "/githubusercontent"

// New starts a server answering with the fixtures of dir (gist/testdata):
// gist.json as the latest revision of its gist and as its history[0],
// gist-old-revision.json as history[1], gist-truncated.json with big.txt
// behind its raw_url, gist-malicious-name.json, and gist-created.json for
// POST /gists. The server is closed when the test ends.
func New(t testing.TB, dir string) *Server {
	t.Helper()
	// Absolute, so that a test changing directory still finds them.
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{dir: dir, latest: map[string][]byte{}, revisions: map[string][]byte{}, raw: map[string][]byte{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	s.AddFile(t, "gist.json", 0, true)
	s.AddFile(t, "gist-old-revision.json", 1, false)
	s.AddFile(t, "gist-truncated.json", 0, true)
	s.AddFile(t, "gist-malicious-name.json", 0, true)
	big, err := os.ReadFile(filepath.Join(dir, "big.txt"))
	if err != nil {
		t.Fatal(err)
	}
	s.raw["octocat/2decf6c462d9b4418f2d/raw/ac3e6daf176fafe73609fd000cd188e4472010fb/big.txt"] = big
	return s
}

// Fixture reads a file of the fixture directory with the recorded URLs
// pointing at the server.
func (s *Server) Fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return []byte(strings.ReplaceAll(string(b), "https://gist.githubusercontent.com", s.URL+rawPrefix))
}

// AddFile serves a recorded gist object: as the revision history[rev]
// names, and as the latest when latest is set.
func (s *Server) AddFile(t testing.TB, name string, rev int, latest bool) {
	t.Helper()
	s.AddJSON(t, s.Fixture(t, name), rev, latest)
}

// AddJSON serves a gist object, as AddFile does.
func (s *Server) AddJSON(t testing.TB, body []byte, rev int, latest bool) {
	t.Helper()
	if err := s.addJSON(body, rev, latest); err != nil {
		t.Fatalf("fixture: %v", err)
	}
}

func (s *Server) addJSON(body []byte, rev int, latest bool) error {
	var g struct {
		ID      string `json:"id"`
		History []struct {
			Version string `json:"version"`
		} `json:"history"`
	}
	if err := json.Unmarshal(body, &g); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev < len(g.History) {
		s.revisions[g.ID+"@"+g.History[rev].Version] = body
	}
	if latest {
		s.latest[g.ID] = body
	}
	return nil
}

// AddGist serves a new revision of gist id holding files, shaped like
// gist.json, as the latest and as revision rev (40 hex digits). It
// returns the gist object.
func (s *Server) AddGist(t testing.TB, id, rev string, files map[string]string) []byte {
	t.Helper()
	b, err := s.gistObject(id, rev, files)
	if err == nil {
		err = s.addJSON(b, 0, true)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// gistObject is gist.json made into gist id at revision rev with files.
func (s *Server) gistObject(id, rev string, files map[string]string) ([]byte, error) {
	var g map[string]any
	if err := json.Unmarshal(s.fixture("gist.json"), &g); err != nil {
		return nil, err
	}
	old := g["id"].(string)
	fs := map[string]any{}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		fs[name] = map[string]any{
			"filename": name, "type": "text/plain", "language": nil,
			"raw_url": fmt.Sprintf("%s%s/octocat/%s/raw/%s/%s", s.URL, rawPrefix, id, rev, name),
			"size":    len(files[name]), "truncated": false, "content": files[name], "encoding": "utf-8",
		}
	}
	g["files"] = fs
	hist := g["history"].([]any)
	h := hist[0].(map[string]any)
	h["version"] = rev
	h["url"] = fmt.Sprintf("https://api.github.com/gists/%s/%s", id, rev)
	g["history"] = []any{h}
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return nil, err
	}
	return []byte(strings.ReplaceAll(string(b), old, id)), nil
}

// SetRateLimited makes the server answer every request with GitHub's
// rate-limit answer until reset (the zero time: never again).
func (s *Server) SetRateLimited(reset time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rateLimit = reset
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Created returns the body of the last successful POST /gists.
func (s *Server) Created() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.created
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	// GitHub's API allows browsers from any origin (pe serve's page saves
	// gists straight to it); preflights are answered, not recorded.
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Accept, X-GitHub-Api-Version")
	h.Set("Access-Control-Allow-Methods", "GET, POST, PATCH, PUT, DELETE")
	h.Set("Access-Control-Expose-Headers", "ETag, Link, Location, Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset")
	if r.Method == http.MethodOptions {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	status := s.answer(w, r)
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, Authorization: r.Header.Get("Authorization"), IfNoneMatch: r.Header.Get("If-None-Match"), Status: status})
	s.mu.Unlock()
}

// answer writes the answer to r and returns its status.
func (s *Server) answer(w http.ResponseWriter, r *http.Request) int {
	s.mu.Lock()
	reset := s.rateLimit
	s.mu.Unlock()
	h := w.Header()
	h.Set("X-GitHub-Api-Version-Selected", "2022-11-28")
	if !reset.IsZero() && time.Now().Before(reset) {
		h.Set("X-RateLimit-Limit", "60")
		h.Set("X-RateLimit-Remaining", "0")
		h.Set("X-RateLimit-Used", "60")
		h.Set("X-RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
		h.Set("X-RateLimit-Resource", "core")
		return s.write(w, http.StatusForbidden, s.fixture("error-rate-limit.json"))
	}
	if p, ok := strings.CutPrefix(r.URL.Path, rawPrefix+"/"); ok {
		s.mu.Lock()
		b, found := s.raw[p]
		s.mu.Unlock()
		if !found {
			return s.write(w, http.StatusNotFound, []byte("404: Not Found"))
		}
		h.Set("Content-Type", "text/plain; charset=utf-8")
		return s.write(w, http.StatusOK, b)
	}
	segs := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if segs[0] != "gists" {
		return s.write(w, http.StatusNotFound, s.fixture("error-not-found.json"))
	}
	switch {
	case r.Method == http.MethodPost && len(segs) == 1:
		if s.Token == "" || r.Header.Get("Authorization") != "Bearer "+s.Token {
			return s.write(w, http.StatusUnauthorized, s.fixture("error-requires-authentication.json"))
		}
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.created = body
		s.mu.Unlock()
		b := s.fixture("gist-created.json")
		// As on GitHub, the new gist can be fetched at once: the id and
		// revision of the recorded answer, holding the files sent.
		var req struct {
			Files map[string]struct{ Content string } `json:"files"`
		}
		var made struct {
			ID      string `json:"id"`
			History []struct {
				Version string `json:"version"`
			} `json:"history"`
		}
		if json.Unmarshal(body, &req) == nil && json.Unmarshal(b, &made) == nil && len(made.History) > 0 {
			files := map[string]string{}
			for name, f := range req.Files {
				files[name] = f.Content
			}
			if obj, err := s.gistObject(made.ID, made.History[0].Version, files); err == nil {
				s.addJSON(obj, 0, true)
			}
		}
		h.Set("Location", "https://api.github.com/gists/8f1a2b3c4d5e6f708192a3b4c5d6e7f8")
		return s.write(w, http.StatusCreated, b)
	case r.Method != http.MethodGet || len(segs) < 2 || len(segs) > 3:
		return s.write(w, http.StatusNotFound, s.fixture("error-not-found.json"))
	}
	s.mu.Lock()
	var b []byte
	if len(segs) == 2 {
		b = s.latest[segs[1]]
	} else {
		b = s.revisions[segs[1]+"@"+segs[2]]
	}
	s.mu.Unlock()
	if b == nil {
		return s.write(w, http.StatusNotFound, s.fixture("error-not-found.json"))
	}
	sum := sha256.Sum256(b)
	etag := `W/"` + hex.EncodeToString(sum[:16]) + `"`
	h.Set("ETag", etag)
	h.Set("Cache-Control", "public, max-age=60, s-maxage=60")
	h.Set("Vary", "Accept, Authorization, Cookie, X-GitHub-OTP")
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return http.StatusNotModified
	}
	return s.write(w, http.StatusOK, b)
}

func (s *Server) fixture(name string) []byte {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if err != nil {
		return []byte(`{"message":"fixture missing"}`)
	}
	return b
}

func (s *Server) write(w http.ResponseWriter, status int, b []byte) int {
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
	}
	w.WriteHeader(status)
	w.Write(b)
	return status
}

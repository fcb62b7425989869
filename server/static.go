package server

import (
	"embed"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
)

// static is the page, built from web/ by `make web` (esbuild) and
// committed, so building pe needs no Node.js.
//
//go:embed static
var static embed.FS

// staticHandler serves the page with headers that keep it to its own
// scripts.
func (s *Server) staticHandler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	files := http.FileServerFS(sub)
	connect := "'self'"
	if u, err := url.Parse(s.cfg.GitHubAPI); err == nil && u.Scheme != "" && u.Host != "" {
		connect += " " + u.Scheme + "://" + u.Host
	}
	// The page keeps CodeMirror in a shadow root, where it uses
	// constructed style sheets instead of <style> elements, so neither
	// scripts nor styles need 'unsafe-inline'. connect-src names the GitHub
	// API for "Save as gist".
	csp := "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src " +
		connect + "; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; object-src 'none'"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		switch {
		case r.URL.Path == "/" || r.URL.Path == "/index.html":
			h.Set("Cache-Control", "no-cache")
		case strings.HasPrefix(r.URL.Path, "/chunk-"):
			// esbuild names chunks by content hash.
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		}
		files.ServeHTTP(w, r)
	})
}

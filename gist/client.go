package gist

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Defaults of a Client's zero fields.
const (
	DefaultBaseURL = "https://api.github.com"
	// DefaultMaxFileSize bounds one file. GitHub puts up to 1 MB of each
	// file in its answer and serves up to 10 MB from raw_url; pe's
	// examples are small.
	DefaultMaxFileSize = 1 << 20
	// DefaultMaxTotalSize bounds all the files of a gist together.
	DefaultMaxTotalSize = 10 << 20
	// DefaultTimeout bounds each request, whatever the http.Client says.
	DefaultTimeout = 30 * time.Second
	// DefaultCacheMaxBytes bounds the disk cache: room for thousands of
	// the small gists pe's examples are, and for a gist of
	// DefaultMaxTotalSize (about 14 MB as a cache entry) among them.
	DefaultCacheMaxBytes = 64 << 20
	// MaxFiles is the most files GitHub lists for a gist; a gist with more
	// comes back with "truncated": true and is refused.
	MaxFiles = 300
)

// ErrNotFound means GitHub has no such gist or revision (HTTP 404; GitHub
// also answers so for a secret gist the token may not read).
var ErrNotFound = errors.New("gist not found")

// RateLimitError means GitHub refused the request for its rate limit (HTTP
// 403 or 429). Reset is when to retry; Authenticated whether the request
// carried a token.
type RateLimitError struct {
	Reset         time.Time
	Authenticated bool
}

// Error says when to retry, and how a token helps.
func (e *RateLimitError) Error() string {
	wait := time.Until(e.Reset).Round(time.Second)
	msg := fmt.Sprintf("GitHub API rate limit exceeded: retry after %s (in %v)", e.Reset.UTC().Format("15:04:05 UTC"), max(wait, 0))
	if e.Authenticated {
		return msg + "; authenticated requests may make 5000 an hour"
	}
	return msg + "; without a token GitHub allows 60 requests an hour, a token (GITHUB_TOKEN, GH_TOKEN or gh auth login) raises that to 5000"
}

// APIError is any other error answer of the GitHub API.
type APIError struct {
	StatusCode int
	// Message is GitHub's "message", or the start of the body.
	Message string
}

// Error gives the status and GitHub's message.
func (e *APIError) Error() string {
	msg := fmt.Sprintf("GitHub API: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.StatusCode == http.StatusUnauthorized {
		msg += " (check the token: GITHUB_TOKEN, GH_TOKEN or gh auth login)"
	}
	return msg
}

// Client talks to the GitHub REST API (v3) about gists. The zero value
// works with api.github.com, anonymously, without a disk cache. A Client
// is safe for concurrent use once in use; do not change its fields then.
type Client struct {
	// BaseURL is the API's root: https://api.github.com (the default), or
	// https://HOST/api/v3 for GitHub Enterprise Server.
	BaseURL string
	// Token, when set, is sent as a bearer token: it raises the rate
	// limit, reads secret gists and is needed to create gists.
	Token string
	// HTTP sends the requests (nil: a client with a DefaultTimeout
	// timeout). Each request is bounded by DefaultTimeout anyway.
	HTTP *http.Client
	// CacheDir, when set, keeps fetched gists: a revision until evicted
	// (it never changes), the latest revision with its ETag, revalidated
	// at each fetch.
	CacheDir string
	// CacheMaxBytes bounds the entries under CacheDir together (0:
	// DefaultCacheMaxBytes; negative: no bound). A write that would go
	// past it first removes the least recently used entries (written or
	// read longest ago); an entry larger than the bound is not kept.
	CacheMaxBytes int64
	// MaxFileSize and MaxTotalSize bound one file and all files of a gist
	// (0: DefaultMaxFileSize, DefaultMaxTotalSize).
	MaxFileSize, MaxTotalSize int64
	// UserAgent is sent with each request ("": "pe"); GitHub requires one.
	UserAgent string

	mu sync.Mutex
	// blockedUntil is the end of a rate limit GitHub reported: until then
	// requests fail at once instead of spending more of the limit.
	blockedUntil time.Time
	blockedAuth  bool

	// cacheMu guards the disk cache's accounting (see makeRoom).
	cacheMu sync.Mutex
	// cacheSize is the bytes of the entries under CacheDir as of the last
	// scan plus this Client's writes since (cacheWrites of them); other
	// processes' writes are seen at the next scan.
	cacheSize    int64
	cacheWrites  int
	cacheScanned bool
}

func (c *Client) baseURL() string {
	if c.BaseURL == "" {
		return DefaultBaseURL
	}
	return strings.TrimRight(c.BaseURL, "/")
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP == nil {
		return &http.Client{Timeout: DefaultTimeout}
	}
	return c.HTTP
}

func (c *Client) maxFile() int64 {
	if c.MaxFileSize > 0 {
		return c.MaxFileSize
	}
	return DefaultMaxFileSize
}

func (c *Client) maxTotal() int64 {
	if c.MaxTotalSize > 0 {
		return c.MaxTotalSize
	}
	return DefaultMaxTotalSize
}

// maxJSON bounds an API answer: the files as JSON strings (escaping can
// make text up to six times longer, \u0001) and the rest of the gist.
func (c *Client) maxJSON() int64 { return 6*c.maxTotal() + 1<<20 }

// FetchCounted is Fetch that also says how many of GitHub's answers the
// fetch cost: 0 when the cache answered, or GitHub said with a 304 that
// the cached latest revision is current (conditional requests answered
// so do not count against GitHub's rate limit); one per other answer,
// errors included. pe serve charges its visitors by it.
func (c *Client) FetchCounted(ctx context.Context, id, revision string) (*Gist, int, error) {
	var n atomic.Int64
	g, err := c.Fetch(context.WithValue(ctx, costKey{}, &n), id, revision)
	return g, int(n.Load()), err
}

// costKey is the context key of FetchCounted's counter.
type costKey struct{}

// countAnswer counts one answer of GitHub for FetchCounted.
func countAnswer(ctx context.Context) {
	if n, ok := ctx.Value(costKey{}).(*atomic.Int64); ok {
		n.Add(1)
	}
}

// Cached returns the revision of gist id from the disk cache, or nil when
// it is not there (or revision is "": the latest revision is always asked
// of GitHub). It makes no request.
func (c *Client) Cached(id, revision string) *Gist {
	if !isID(id) || !isRevision(revision) {
		return nil
	}
	return c.cachedRevision(strings.ToLower(id), strings.ToLower(revision))
}

// Fetch fetches gist id at revision ("" for the latest). Files GitHub
// truncates in its answer are fetched whole from their raw_url. Errors
// wrap ErrNotFound, or are *RateLimitError or *APIError values for the
// other answers of GitHub.
func (c *Client) Fetch(ctx context.Context, id, revision string) (*Gist, error) {
	if !isID(id) {
		return nil, fmt.Errorf("%q is not a gist ID", id)
	}
	if revision != "" && !isRevision(revision) {
		return nil, fmt.Errorf("%q is not a gist revision (want a 40-digit commit hash)", revision)
	}
	id, revision = strings.ToLower(id), strings.ToLower(revision)
	what := id
	if revision != "" {
		what += "/" + revision
		if g := c.cachedRevision(id, revision); g != nil {
			return g, nil
		}
	}
	path := "/gists/" + id
	if revision != "" {
		path += "/" + revision
	}
	var etag string
	var cached *Gist
	if revision == "" {
		cached, etag = c.cachedLatest(id)
	}
	body, header, status, err := c.do(ctx, http.MethodGet, c.baseURL()+path, nil, etag)
	if err != nil {
		return nil, fmt.Errorf("fetching gist %s: %w", what, err)
	}
	if status == http.StatusNotModified && cached != nil {
		return cached, nil
	}
	g, err := c.parseGist(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("fetching gist %s: %w", what, err)
	}
	if g.ID != id {
		return nil, fmt.Errorf("fetching gist %s: GitHub answered with gist %q", what, g.ID)
	}
	if revision != "" {
		// history lists the gist's revisions whatever revision was asked
		// for; the revision is the one asked for.
		g.Revision = revision
	}
	if g.Revision != "" {
		c.storeRevision(g)
	}
	if revision == "" {
		c.storeLatest(g, header.Get("ETag"))
	}
	return g, nil
}

// CreateRequest describes a new gist.
type CreateRequest struct {
	Description string
	// Public makes the gist listed; by default it is secret (anyone with
	// the link may read it).
	Public bool
	// Files are the gist's files: names as CheckName wants them, contents
	// UTF-8 text that is not empty (GitHub keeps no empty files).
	Files []File
}

// Create creates a gist and returns it as GitHub made it. GitHub.com needs
// a token with the gist scope (or a fine-grained one with gists write);
// GitHub Enterprise may allow anonymous gists.
func (c *Client) Create(ctx context.Context, req CreateRequest) (*Gist, error) {
	if len(req.Files) == 0 {
		return nil, errors.New("creating a gist: no files")
	}
	type file struct {
		Content string `json:"content"`
	}
	body := struct {
		Description string          `json:"description"`
		Public      bool            `json:"public"`
		Files       map[string]file `json:"files"`
	}{req.Description, req.Public, map[string]file{}}
	var total int64
	for _, f := range req.Files {
		if err := CheckName(f.Name); err != nil {
			return nil, fmt.Errorf("creating a gist: %w", err)
		}
		if _, dup := body.Files[f.Name]; dup {
			return nil, fmt.Errorf("creating a gist: two files are named %q", f.Name)
		}
		switch {
		case len(f.Content) == 0:
			return nil, fmt.Errorf("creating a gist: %s is empty, and GitHub keeps no empty files", f.Name)
		case !utf8.Valid(f.Content) || bytes.IndexByte(f.Content, 0) >= 0:
			return nil, fmt.Errorf("creating a gist: %s is not text (gists hold UTF-8 text)", f.Name)
		case int64(len(f.Content)) > c.maxFile():
			return nil, fmt.Errorf("creating a gist: %s has %d bytes, more than %d", f.Name, len(f.Content), c.maxFile())
		}
		total += int64(len(f.Content))
		body.Files[f.Name] = file{string(f.Content)}
	}
	if total > c.maxTotal() {
		return nil, fmt.Errorf("creating a gist: the files have %d bytes, more than %d", total, c.maxTotal())
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("creating a gist: %w", err)
	}
	resp, _, _, err := c.do(ctx, http.MethodPost, c.baseURL()+"/gists", b, "")
	if err != nil {
		return nil, fmt.Errorf("creating a gist: %w", err)
	}
	g, err := c.parseGist(ctx, resp)
	if err != nil {
		return nil, fmt.Errorf("creating a gist: %w", err)
	}
	return g, nil
}

// do sends one request and returns the body of a 2xx or 304 answer;
// other answers become errors. etag, when set, is sent as If-None-Match.
func (c *Client) do(ctx context.Context, method, u string, body []byte, etag string) ([]byte, http.Header, int, error) {
	if err := c.checkBlocked(); err != nil {
		return nil, nil, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, nil, 0, err
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	req.Header.Set("User-Agent", c.userAgent())
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNotModified {
		countAnswer(ctx)
	}
	limit := c.maxJSON()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, nil, 0, fmt.Errorf("reading GitHub's answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		return nil, resp.Header, resp.StatusCode, nil
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		if int64(len(data)) > limit {
			return nil, nil, 0, fmt.Errorf("GitHub's answer is larger than %d bytes", limit)
		}
		return data, resp.Header, resp.StatusCode, nil
	case resp.StatusCode == http.StatusNotFound:
		return nil, nil, 0, ErrNotFound
	}
	msg := apiMessage(data)
	if rl := c.rateLimit(resp, msg); rl != nil {
		return nil, nil, 0, rl
	}
	return nil, nil, 0, &APIError{StatusCode: resp.StatusCode, Message: msg}
}

func (c *Client) userAgent() string {
	if c.UserAgent == "" {
		return "pe"
	}
	return c.UserAgent
}

// checkBlocked fails while a rate limit GitHub reported lasts.
func (c *Client) checkBlocked() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Now().Before(c.blockedUntil) {
		return &RateLimitError{Reset: c.blockedUntil, Authenticated: c.blockedAuth}
	}
	return nil
}

// rateLimit returns the RateLimitError of a 403 or 429 answer that is one
// (GitHub's documented signs: a 429, x-ratelimit-remaining: 0, a
// retry-after header, or a message about the rate limit; other 403s are
// permission errors), and remembers it.
func (c *Client) rateLimit(resp *http.Response, msg string) *RateLimitError {
	if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusTooManyRequests {
		return nil
	}
	h := resp.Header
	if resp.StatusCode == http.StatusForbidden && h.Get("X-RateLimit-Remaining") != "0" && h.Get("Retry-After") == "" &&
		!strings.Contains(strings.ToLower(msg), "rate limit") {
		return nil
	}
	now := time.Now()
	// GitHub's advice: wait retry-after seconds; else, with no requests
	// remaining, until x-ratelimit-reset (UTC epoch seconds); else at
	// least a minute.
	reset := now.Add(time.Minute)
	if s, err := strconv.ParseInt(h.Get("Retry-After"), 10, 64); err == nil && s >= 0 {
		reset = now.Add(time.Duration(min(s, 24*3600)) * time.Second)
	} else if s, err := strconv.ParseInt(h.Get("X-RateLimit-Reset"), 10, 64); err == nil && h.Get("X-RateLimit-Remaining") == "0" {
		if t := time.Unix(s, 0); t.After(now) && t.Before(now.Add(24*time.Hour)) {
			reset = t
		}
	}
	e := &RateLimitError{Reset: reset, Authenticated: c.Token != ""}
	c.mu.Lock()
	c.blockedUntil, c.blockedAuth = reset, e.Authenticated
	c.mu.Unlock()
	return e
}

// apiMessage returns the "message" of a GitHub error body, or the start
// of the body.
func apiMessage(data []byte) string {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &m) == nil && m.Message != "" {
		return clipString(m.Message, 200)
	}
	return clipString(strings.TrimSpace(string(data)), 200)
}

func clipString(s string, n int) string {
	if len(s) <= n {
		return strings.ToValidUTF8(s, "?")
	}
	return strings.ToValidUTF8(s[:n], "?") + "..."
}

// apiGist is the part of GitHub's gist object pe reads (the shapes are
// recorded in testdata/).
type apiGist struct {
	ID          string             `json:"id"`
	HTMLURL     string             `json:"html_url"`
	Description *string            `json:"description"`
	Files       map[string]apiFile `json:"files"`
	History     []struct {
		Version string `json:"version"`
	} `json:"history"`
	Truncated bool `json:"truncated"`
}

type apiFile struct {
	Filename  string `json:"filename"`
	RawURL    string `json:"raw_url"`
	Size      int64  `json:"size"`
	Truncated bool   `json:"truncated"`
	Content   string `json:"content"`
	Encoding  string `json:"encoding"`
}

// parseGist turns GitHub's gist object into a Gist, fetching truncated
// files from their raw_url.
func (c *Client) parseGist(ctx context.Context, data []byte) (*Gist, error) {
	var a apiGist
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("decoding GitHub's answer: %w", err)
	}
	if !isID(a.ID) {
		return nil, fmt.Errorf("GitHub's answer has no valid gist id (%q)", clipString(a.ID, 80))
	}
	if a.Truncated || len(a.Files) > MaxFiles {
		return nil, fmt.Errorf("gist %s has more than %d files, which the API does not list (clone it with git)", a.ID, MaxFiles)
	}
	g := &Gist{ID: strings.ToLower(a.ID), HTMLURL: a.HTMLURL}
	if a.Description != nil {
		g.Description = *a.Description
	}
	// GitHub lists history newest first: history[0] is the revision the
	// answer shows. (The original client took the last element, the
	// oldest revision.)
	for _, h := range a.History {
		if !isRevision(h.Version) {
			return nil, fmt.Errorf("gist %s: history has an invalid version %q", a.ID, clipString(h.Version, 80))
		}
		g.Revisions = append(g.Revisions, strings.ToLower(h.Version))
	}
	if len(g.Revisions) > 0 {
		g.Revision = g.Revisions[0]
	}
	var total int64
	for key, f := range a.Files {
		name := key
		if err := CheckName(name); err != nil {
			return nil, fmt.Errorf("gist %s: %w", a.ID, err)
		}
		var content []byte
		switch {
		case f.Truncated:
			b, err := c.fetchRaw(ctx, a.ID, name, f.RawURL)
			if err != nil {
				return nil, err
			}
			content = b
		case f.Encoding == "base64":
			b, err := base64.StdEncoding.DecodeString(f.Content)
			if err != nil {
				return nil, fmt.Errorf("gist %s: file %q: %w", a.ID, name, err)
			}
			content = b
		default:
			content = []byte(f.Content)
		}
		if int64(len(content)) > c.maxFile() {
			return nil, fmt.Errorf("gist %s: file %q has %d bytes, more than the limit of %d", a.ID, name, len(content), c.maxFile())
		}
		total += int64(len(content))
		if total > c.maxTotal() {
			return nil, fmt.Errorf("gist %s: the files add up to more than the limit of %d bytes", a.ID, c.maxTotal())
		}
		g.Files = append(g.Files, File{Name: name, Content: content})
	}
	slices.SortFunc(g.Files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	return g, nil
}

// fetchRaw fetches a truncated file whole. raw_url comes from the answer,
// so it is only followed to GitHub's own hosts (those of the API, or
// *.githubusercontent.com), and the token is only sent to the API's host.
func (c *Client) fetchRaw(ctx context.Context, id, name, raw string) ([]byte, error) {
	u, err := url.Parse(raw)
	if err != nil || !c.rawAllowed(u) {
		return nil, fmt.Errorf("gist %s: file %q is truncated and its raw_url %q is not a GitHub URL", id, name, clipString(raw, 200))
	}
	if err := c.checkBlocked(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", c.userAgent())
	base, _ := url.Parse(c.baseURL())
	if c.Token != "" && base != nil && u.Host == base.Host {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("gist %s: fetching file %q: %w", id, name, err)
	}
	defer resp.Body.Close()
	countAnswer(ctx)
	if resp.StatusCode != http.StatusOK {
		if rl := c.rateLimit(resp, ""); rl != nil {
			return nil, rl
		}
		return nil, fmt.Errorf("gist %s: fetching file %q: %s", id, name, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, c.maxFile()+1))
	if err != nil {
		return nil, fmt.Errorf("gist %s: fetching file %q: %w", id, name, err)
	}
	if int64(len(b)) > c.maxFile() {
		return nil, fmt.Errorf("gist %s: file %q is larger than the limit of %d bytes", id, name, c.maxFile())
	}
	return b, nil
}

// rawAllowed reports whether a raw_url may be fetched: same scheme and
// host as the API, or HTTPS to the API's domain (gist.HOST for GitHub
// Enterprise) or to githubusercontent.com.
func (c *Client) rawAllowed(u *url.URL) bool {
	base, err := url.Parse(c.baseURL())
	if err != nil || u.User != nil {
		return false
	}
	if u.Scheme == base.Scheme && u.Host == base.Host {
		return true
	}
	if u.Scheme != "https" {
		return false
	}
	host := u.Hostname()
	domain := strings.TrimPrefix(base.Hostname(), "api.")
	return host == domain || strings.HasSuffix(host, "."+domain) ||
		host == "githubusercontent.com" || strings.HasSuffix(host, ".githubusercontent.com")
}

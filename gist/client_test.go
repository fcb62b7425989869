package gist_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/gist/gisttest"
)

// The gists of the fixtures in testdata/.
const (
	helloID   = "aa5a315d61ae9438b18d"
	helloNew  = "57a7f021a713b1c5a6a199b54cc514735d2d462f"
	helloOld  = "3a1e4c8f9b0d2e6f7a8b9c0d1e2f3a4b5c6d7e8f"
	bigID     = "2decf6c462d9b4418f2d"
	evilID    = "e71b8c2d4f6a8b0c1d2e"
	createdID = "8f1a2b3c4d5e6f708192a3b4c5d6e7f8"
)

const helloToml = "image = \"busybox\"\ncmd = \"sh main.sh\"\nstdin = \"input.txt\"\nenv = \"\"\"\n# a comment\nGREETING=hello\n\"\"\"\n"

func newClient(s *gisttest.Server) *gist.Client {
	return &gist.Client{BaseURL: s.URL, UserAgent: "pe-test"}
}

func TestFetch(t *testing.T) {
	s := gisttest.New(t, "testdata")
	c := newClient(s)
	for _, tt := range []struct {
		name, id, rev string
		want          *gist.Gist
	}{
		{"latest", helloID, "", &gist.Gist{
			ID: helloID, Revision: helloNew, Description: "Hello World in pe",
			HTMLURL:   "https://gist.github.com/octocat/" + helloID,
			Revisions: []string{helloNew, helloOld},
			Files: []gist.File{
				{Name: "input.txt", Content: []byte("line from stdin\n")},
				{Name: "main.sh", Content: []byte("echo \"$GREETING from $(pwd)\"\ncat\n")},
				{Name: "pe.toml", Content: []byte(helloToml)},
			},
		}},
		{"old revision", helloID, helloOld, &gist.Gist{
			ID: helloID, Revision: helloOld, Description: "Hello World in pe",
			HTMLURL:   "https://gist.github.com/octocat/" + helloID,
			Revisions: []string{helloNew, helloOld},
			Files: []gist.File{
				{Name: "input.txt", Content: []byte("old stdin\n")},
				{Name: "main.sh", Content: []byte("echo old\n")},
				{Name: "pe.toml", Content: []byte("image = \"busybox\"\ncmd = [\"sh\", \"main.sh\"]\n")},
			},
		}},
		{"upper-case revision", helloID, strings.ToUpper(helloOld), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g, err := c.Fetch(t.Context(), tt.id, tt.rev)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if g.Revision != strings.ToLower(tt.rev) {
					t.Errorf("revision %q, want %q", g.Revision, strings.ToLower(tt.rev))
				}
				return
			}
			if diff := cmp.Diff(tt.want, g); diff != "" {
				t.Errorf("Fetch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFetchTruncated(t *testing.T) {
	s := gisttest.New(t, "testdata")
	big, err := os.ReadFile("testdata/big.txt")
	if err != nil {
		t.Fatal(err)
	}
	g, err := newClient(s).Fetch(t.Context(), bigID, "")
	if err != nil {
		t.Fatal(err)
	}
	if f := g.File("big.txt"); f == nil || string(f.Content) != string(big) {
		t.Errorf("big.txt: got %d bytes, want the %d of raw_url", len(f.Content), len(big))
	}
	var raw int
	for _, r := range s.Requests() {
		if strings.Contains(r.Path, "/raw/") {
			raw++
		}
	}
	if raw != 1 {
		t.Errorf("%d raw_url requests, want 1", raw)
	}

	// Over the size limits.
	c := newClient(s)
	c.MaxFileSize = 10000
	if _, err := c.Fetch(t.Context(), bigID, ""); err == nil || !strings.Contains(err.Error(), "larger than the limit of 10000") {
		t.Errorf("MaxFileSize 10000: %v", err)
	}
	c = newClient(s)
	c.MaxTotalSize = 1000
	if _, err := c.Fetch(t.Context(), helloID, ""); err != nil {
		t.Errorf("the small gist within MaxTotalSize 1000: %v", err)
	}
	c.MaxTotalSize = 100
	if _, err := c.Fetch(t.Context(), helloID, ""); err == nil || !strings.Contains(err.Error(), "more than the limit of 100") {
		t.Errorf("MaxTotalSize 100: %v", err)
	}
}

func TestFetchErrors(t *testing.T) {
	s := gisttest.New(t, "testdata")
	c := newClient(s)
	for _, tt := range []struct {
		name, id, rev string
		check         func(error) bool
		want          string
	}{
		{"404", "0123456789abcdef0123", "", func(err error) bool { return errors.Is(err, gist.ErrNotFound) }, "gist not found"},
		{"404 revision", helloID, strings.Repeat("0", 40), func(err error) bool { return errors.Is(err, gist.ErrNotFound) }, helloID + "/" + strings.Repeat("0", 40)},
		{"malicious name", evilID, "", nil, `file name "../evil" has a slash`},
		{"bad id", "../../etc", "", nil, "not a gist ID"},
		{"short revision", helloID, "57a7f02", nil, "40-digit"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Fetch(t.Context(), tt.id, tt.rev)
			if err == nil || (tt.check != nil && !tt.check(err)) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Fetch(%q, %q): %v, want an error with %q", tt.id, tt.rev, err, tt.want)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	s := gisttest.New(t, "testdata")
	reset := time.Now().Add(10 * time.Minute).Truncate(time.Second)
	s.SetRateLimited(reset)
	for _, tt := range []struct {
		token string
		want  string
	}{
		{"", "a token (GITHUB_TOKEN, GH_TOKEN or gh auth login) raises that to 5000"},
		{"secret", "authenticated requests may make 5000 an hour"},
	} {
		c := newClient(s)
		c.Token = tt.token
		_, err := c.Fetch(t.Context(), helloID, "")
		var rl *gist.RateLimitError
		if !errors.As(err, &rl) {
			t.Fatalf("token %q: %v, want a RateLimitError", tt.token, err)
		}
		if !rl.Reset.Equal(reset) || rl.Authenticated != (tt.token != "") {
			t.Errorf("token %q: %+v, want reset %v", tt.token, rl, reset)
		}
		for _, want := range []string{"rate limit exceeded", "retry after " + reset.UTC().Format("15:04:05 UTC"), tt.want} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q lacks %q", err, want)
			}
		}
		// The client waits for the reset instead of asking again.
		n := len(s.Requests())
		if _, err := c.Fetch(t.Context(), helloID, ""); !errors.As(err, &rl) {
			t.Errorf("second fetch: %v", err)
		}
		if len(s.Requests()) != n {
			t.Errorf("the client asked GitHub again during the rate limit")
		}
	}
}

// TestForbiddenNotRateLimit checks that a 403 without GitHub's rate-limit
// signs is a permission error, not a rate limit (the original treated
// every 403 as one).
func TestForbiddenNotRateLimit(t *testing.T) {
	srv := http.NewServeMux()
	srv.HandleFunc("/gists/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-RateLimit-Remaining", "4999")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"message":"Resource not accessible by personal access token"}`))
	})
	ts := newServer(t, srv)
	_, err := (&gist.Client{BaseURL: ts}).Fetch(t.Context(), helloID, "")
	var api *gist.APIError
	if !errors.As(err, &api) || api.StatusCode != 403 || !strings.Contains(err.Error(), "Resource not accessible") {
		t.Errorf("403: %v, want an APIError with GitHub's message", err)
	}
}

func TestRetryAfter(t *testing.T) {
	srv := http.NewServeMux()
	srv.HandleFunc("/gists/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"message":"You have exceeded a secondary rate limit."}`))
	})
	ts := newServer(t, srv)
	start := time.Now()
	_, err := (&gist.Client{BaseURL: ts}).Fetch(t.Context(), helloID, "")
	var rl *gist.RateLimitError
	if !errors.As(err, &rl) || rl.Reset.Before(start.Add(119*time.Second)) || rl.Reset.After(time.Now().Add(121*time.Second)) {
		t.Errorf("429 with Retry-After 120: %v", err)
	}
}

func TestRawURLNotGitHub(t *testing.T) {
	s := gisttest.New(t, "testdata")
	b := s.Fixture(t, "gist-truncated.json")
	b = []byte(strings.ReplaceAll(string(b), s.URL+"/githubusercontent", "http://169.254.169.254/latest"))
	s.AddJSON(t, b, 0, true)
	_, err := newClient(s).Fetch(t.Context(), bigID, "")
	if err == nil || !strings.Contains(err.Error(), "not a GitHub URL") {
		t.Errorf("raw_url elsewhere: %v", err)
	}
}

func TestCache(t *testing.T) {
	s := gisttest.New(t, "testdata")
	dir := t.TempDir()
	c := newClient(s)
	c.CacheDir = dir

	// A revision is fetched once, then read from the cache.
	g1, err := c.Fetch(t.Context(), helloID, helloOld)
	if err != nil {
		t.Fatal(err)
	}
	n := len(s.Requests())
	g2, err := c.Fetch(t.Context(), helloID, helloOld)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Requests()) != n {
		t.Errorf("a cached revision was fetched again")
	}
	if diff := cmp.Diff(g1, g2); diff != "" {
		t.Errorf("cached revision (-fetched +cached):\n%s", diff)
	}

	// The latest is revalidated: the second fetch sends the ETag and gets
	// a 304.
	l1, err := c.Fetch(t.Context(), helloID, "")
	if err != nil {
		t.Fatal(err)
	}
	l2, err := c.Fetch(t.Context(), helloID, "")
	if err != nil {
		t.Fatal(err)
	}
	reqs := s.Requests()
	last := reqs[len(reqs)-1]
	if last.IfNoneMatch == "" || last.Status != http.StatusNotModified {
		t.Errorf("second fetch of the latest: %+v, want a 304 to If-None-Match", last)
	}
	if diff := cmp.Diff(l1, l2); diff != "" {
		t.Errorf("revalidated latest (-fetched +cached):\n%s", diff)
	}
	// The latest fetch stored its revision for ever too.
	n = len(s.Requests())
	if _, err := c.Fetch(t.Context(), helloID, helloNew); err != nil {
		t.Fatal(err)
	}
	if len(s.Requests()) != n {
		t.Errorf("the latest revision, fetched before, was fetched again by revision")
	}

	// A new revision replaces the latest.
	s.AddGist(t, helloID, strings.Repeat("ab", 20), map[string]string{"pe.toml": "image = \"alpine\"\n"})
	l3, err := c.Fetch(t.Context(), helloID, "")
	if err != nil {
		t.Fatal(err)
	}
	if l3.Revision != strings.Repeat("ab", 20) {
		t.Errorf("after a new revision: got revision %s", l3.Revision)
	}

	// Corrupt entries are ignored and fetched again.
	host := strings.ReplaceAll(strings.TrimPrefix(s.URL, "http://"), ":", "_")
	for _, p := range []string{
		filepath.Join(dir, host, "rev", helloID+"@"+helloOld+".json"),
		filepath.Join(dir, host, "latest", helloID+".json"),
	} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("cache entry: %v", err)
		}
		if err := os.WriteFile(p, []byte(`{"gist": {"ID": "`+helloID+`", "Files": [{"Name": "../x"}]}}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n = len(s.Requests())
	g3, err := c.Fetch(t.Context(), helloID, helloOld)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Requests()) != n+1 || g3.File("main.sh") == nil {
		t.Errorf("a corrupt cache entry was used")
	}
	if _, err := c.Fetch(t.Context(), helloID, ""); err != nil {
		t.Fatal(err)
	}
	if last := s.Requests()[len(s.Requests())-1]; last.IfNoneMatch != "" {
		t.Errorf("a corrupt latest entry's ETag was sent")
	}
	// No temporary files are left.
	leftovers, _ := filepath.Glob(filepath.Join(dir, "*", "*", ".tmp-*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %q", leftovers)
	}
}

func TestCreate(t *testing.T) {
	s := gisttest.New(t, "testdata")
	s.Token = "ghp_test"
	req := gist.CreateRequest{Description: "created by pe", Files: []gist.File{
		{Name: "hello.sh", Content: []byte("echo hello\n")},
		{Name: "pe.toml", Content: []byte("image = \"busybox\"\ncmd = \"sh hello.sh\"\n")},
	}}

	// Without a token GitHub answers 401.
	_, err := newClient(s).Create(t.Context(), req)
	var api *gist.APIError
	if !errors.As(err, &api) || api.StatusCode != 401 || !strings.Contains(err.Error(), "Requires authentication") || !strings.Contains(err.Error(), "GITHUB_TOKEN") {
		t.Errorf("create without a token: %v", err)
	}

	c := newClient(s)
	c.Token = "ghp_test"
	g, err := c.Create(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if g.ID != createdID || g.Revision != "d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0" || g.HTMLURL != "https://gist.github.com/"+createdID {
		t.Errorf("created %+v", g)
	}
	var body map[string]any
	if err := json.Unmarshal(s.Created(), &body); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"description": "created by pe", "public": false,
		"files": map[string]any{
			"hello.sh": map[string]any{"content": "echo hello\n"},
			"pe.toml":  map[string]any{"content": "image = \"busybox\"\ncmd = \"sh hello.sh\"\n"},
		},
	}
	if diff := cmp.Diff(want, body); diff != "" {
		t.Errorf("POST /gists body (-want +got):\n%s", diff)
	}
	reqs := s.Requests()
	if a := reqs[len(reqs)-1].Authorization; a != "Bearer ghp_test" {
		t.Errorf("Authorization %q", a)
	}

	for _, tt := range []struct {
		files []gist.File
		want  string
	}{
		{nil, "no files"},
		{[]gist.File{{Name: "a", Content: nil}}, "a is empty"},
		{[]gist.File{{Name: "a", Content: []byte{0xff, 0xfe}}}, "not text"},
		{[]gist.File{{Name: "../a", Content: []byte("x")}}, "slash"},
		{[]gist.File{{Name: "a", Content: []byte("x")}, {Name: "a", Content: []byte("y")}}, "two files"},
	} {
		n := len(s.Requests())
		if _, err := c.Create(t.Context(), gist.CreateRequest{Files: tt.files}); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Create(%v): %v, want an error with %q", tt.files, err, tt.want)
		}
		if len(s.Requests()) != n {
			t.Errorf("Create(%v) sent a request", tt.files)
		}
	}
}

// newServer starts an httptest server with h, closed after the test.
func newServer(t *testing.T, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

package gist_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/gist/gisttest"
)

func TestTokenFromFile(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		desc, content, want, wantErr string
	}{
		{"token and newline", "ghp_abc123\n", "ghp_abc123", ""},
		{"surrounding space", "  github_pat_X_y \r\n", "github_pat_X_y", ""},
		{"empty", "\n", "", "is empty"},
		{"two words", "token: ghp_abc\n", "", "the token alone"},
		{"two lines", "ghp_a\nghp_b\n", "", "the token alone"},
		{"not ASCII", "ghp_é", "", "the token alone"},
		{"huge", strings.Repeat("a", 5000), "", "not a token"},
	} {
		p := filepath.Join(dir, strings.ReplaceAll(c.desc, " ", "-"))
		os.WriteFile(p, []byte(c.content), 0o600)
		got, err := gist.TokenFromFile(p)
		if got != c.want || (c.wantErr == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: %q, %v; want %q, error with %q", c.desc, got, err, c.want, c.wantErr)
		}
	}
	if _, err := gist.TokenFromFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file: no error")
	}
}

// TestFetchCounted checks the cost FetchCounted reports: one per answer
// GitHub served, none for the cache or a 304.
func TestFetchCounted(t *testing.T) {
	s := gisttest.New(t, "testdata")
	c := newClient(s)
	c.CacheDir = t.TempDir()
	for _, step := range []struct {
		desc, id, rev string
		want          int
	}{
		{"latest, first", helloID, "", 1},
		{"latest again: 304", helloID, "", 0},
		{"the revision just cached", helloID, helloNew, 0},
		{"not found", "ffffffffffffffffffff", "", 1},
		{"truncated file: the API and raw_url", bigID, "", 2},
	} {
		_, n, _ := c.FetchCounted(t.Context(), step.id, step.rev)
		if n != step.want {
			t.Errorf("%s: cost %d, want %d", step.desc, n, step.want)
		}
	}
	if g := c.Cached(helloID, helloNew); g == nil || g.Revision != helloNew {
		t.Errorf("Cached(%s, %s) = %+v, want the revision", helloID, helloNew, g)
	}
	for _, rev := range []string{"", "../x", helloOld} {
		if g := c.Cached(helloID, rev); g != nil {
			t.Errorf("Cached(%s, %q) = %+v, want nil", helloID, rev, g)
		}
	}
}

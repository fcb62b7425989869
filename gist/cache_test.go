package gist_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/gist"
	"github.com/pe-project/pe/gist/gisttest"
)

// boundGist is the ID and revision of gist i of TestCacheBound.
func boundGist(i int) (id, rev string) {
	return fmt.Sprintf("%020x", 0xb0+i), fmt.Sprintf("%040x", 0xc0+i)
}

// ageCache makes every file under dir an hour older, so that what the
// Client does next is clearly more recent whatever the clock's grain.
func ageCache(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		old := info.ModTime().Add(-time.Hour)
		return os.Chtimes(p, old, old)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// entrySize is the size of the cache entry of gist 0 by revision.
func entrySize(t *testing.T, s *gisttest.Server) int64 {
	t.Helper()
	c := newClient(s)
	c.CacheDir = t.TempDir()
	id, rev := boundGist(0)
	if _, err := c.Fetch(t.Context(), id, rev); err != nil {
		t.Fatal(err)
	}
	paths, _ := filepath.Glob(filepath.Join(c.CacheDir, "*", "rev", "*.json"))
	if len(paths) != 1 {
		t.Fatalf("measuring an entry: cache holds %q", paths)
	}
	info, err := os.Stat(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	return info.Size()
}

// cachedGists returns the gists of TestCacheBound with a revision entry
// under dir.
func cachedGists(t *testing.T, dir string) []int {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*", "rev", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got []int
	for _, p := range paths {
		var i int
		if _, err := fmt.Sscanf(strings.TrimLeft(filepath.Base(p), "0"), "%x@", &i); err != nil {
			t.Fatalf("cache entry %s: %v", p, err)
		}
		got = append(got, i-0xb0)
	}
	slices.Sort(got)
	return got
}

func TestCacheBound(t *testing.T) {
	const big = 9 // gist 9 is larger than the bound
	s := gisttest.New(t, "testdata")
	for i := range 10 {
		id, rev := boundGist(i)
		content := strings.Repeat("x", 1000)
		if i == big {
			content = strings.Repeat("x", 8000)
		}
		s.AddGist(t, id, rev, map[string]string{"pe.toml": "image = \"busybox\"\n", "main.sh": content})
	}
	// size is the size of a revision entry of gists 0 to 8 (the same).
	size := entrySize(t, s)

	for _, tt := range []struct {
		name string
		// bound is CacheMaxBytes in entries.
		bound float64
		// fetch are the gists fetched by revision, in order; -1 stands
		// for removing the oldest cached entry, as another process
		// evicting.
		fetch []int
		// want are the gists cached at the end, fetched the number of
		// times of requests.
		want     []int
		requests int
	}{
		{"within the bound", 3.5, []int{0, 1, 2}, []int{0, 1, 2}, 3},
		{"least recently written evicted", 3.5, []int{0, 1, 2, 3, 4}, []int{2, 3, 4}, 5},
		{"a hit refreshes", 3.5, []int{0, 1, 2, 0, 3}, []int{0, 2, 3}, 4},
		{"hits in another order", 3.5, []int{0, 1, 2, 1, 0, 3}, []int{0, 1, 3}, 4},
		{"evicted entries are fetched again", 2.5, []int{0, 1, 2, 0}, []int{0, 2}, 4},
		{"bigger than the bound not cached", 3.5, []int{0, 1, big, big, 2}, []int{0, 1, 2}, 5},
		{"removed by another process", 3.5, []int{0, 1, 2, -1, 3, 4}, []int{2, 3, 4}, 5},
		{"no bound", -1, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, big}, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, big}, 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			c := newClient(s)
			c.CacheDir = dir
			c.CacheMaxBytes = -1
			if tt.bound > 0 {
				c.CacheMaxBytes = int64(tt.bound * float64(size))
			}
			before := len(s.Requests())
			for _, i := range tt.fetch {
				if i < 0 {
					cached := cachedGists(t, dir)
					id, rev := boundGist(cached[0])
					host := strings.ReplaceAll(strings.TrimPrefix(s.URL, "http://"), ":", "_")
					if err := os.Remove(filepath.Join(dir, host, "rev", id+"@"+rev+".json")); err != nil {
						t.Fatal(err)
					}
					continue
				}
				id, rev := boundGist(i)
				g, err := c.Fetch(t.Context(), id, rev)
				if err != nil {
					t.Fatal(err)
				}
				if g.ID != id || g.Revision != rev {
					t.Fatalf("fetching gist %d: got %s/%s", i, g.ID, g.Revision)
				}
				ageCache(t, dir)
			}
			if diff := cmp.Diff(tt.want, cachedGists(t, dir)); diff != "" {
				t.Errorf("cached gists (-want +got):\n%s", diff)
			}
			if got := len(s.Requests()) - before; got != tt.requests {
				t.Errorf("%d requests, want %d", got, tt.requests)
			}
		})
	}
}

// TestCacheTempFiles checks that eviction leaves a writer's temporary
// file alone, and removes one left for a day by a writer that crashed.
func TestCacheTempFiles(t *testing.T) {
	s := gisttest.New(t, "testdata")
	for i := range 3 {
		id, rev := boundGist(i)
		s.AddGist(t, id, rev, map[string]string{"main.sh": strings.Repeat("x", 1000)})
	}
	dir := t.TempDir()
	c := newClient(s)
	c.CacheDir = dir
	c.CacheMaxBytes = entrySize(t, s) * 5 / 2 // two entries
	host := strings.ReplaceAll(strings.TrimPrefix(s.URL, "http://"), ":", "_")
	revDir := filepath.Join(dir, host, "rev")
	if err := os.MkdirAll(revDir, 0o755); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(revDir, ".tmp-fresh-123")
	stale := filepath.Join(revDir, ".tmp-stale-456")
	for _, p := range []string{fresh, stale} {
		if err := os.WriteFile(p, []byte(strings.Repeat("y", 5000)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-25 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		id, rev := boundGist(i)
		if _, err := c.Fetch(t.Context(), id, rev); err != nil {
			t.Fatal(err)
		}
		ageCache(t, filepath.Join(dir, host, "rev"))
	}
	var got []string
	ents, err := os.ReadDir(revDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		got = append(got, e.Name())
	}
	id1, rev1 := boundGist(1)
	id2, rev2 := boundGist(2)
	want := []string{".tmp-fresh-123", id1 + "@" + rev1 + ".json", id2 + "@" + rev2 + ".json"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cache directory (-want +got):\n%s", diff)
	}
}

// TestCacheDefaultBound checks that a Client with a CacheDir and no
// CacheMaxBytes keeps what fits in DefaultCacheMaxBytes.
func TestCacheDefaultBound(t *testing.T) {
	s := gisttest.New(t, "testdata")
	c := &gist.Client{BaseURL: s.URL, CacheDir: t.TempDir()}
	id, rev := boundGist(0)
	s.AddGist(t, id, rev, map[string]string{"main.sh": "echo hi\n"})
	for range 2 {
		if _, err := c.Fetch(t.Context(), id, rev); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(s.Requests()); n != 1 {
		t.Errorf("%d requests for a revision fetched twice, want 1", n)
	}
}

// TestCacheConcurrent runs two Clients sharing a cache directory, as two
// processes would, each evicting what the other wrote.
func TestCacheConcurrent(t *testing.T) {
	s := gisttest.New(t, "testdata")
	const n = 9
	for i := range n {
		id, rev := boundGist(i)
		s.AddGist(t, id, rev, map[string]string{"main.sh": strings.Repeat("x", 1000+i)})
	}
	size := entrySize(t, s)
	dir := t.TempDir()
	var clients []*gist.Client
	for range 2 {
		c := newClient(s)
		c.CacheDir, c.CacheMaxBytes = dir, 3*size
		clients = append(clients, c)
	}
	errs := make(chan error, 4)
	for w := range 4 {
		go func() {
			c := clients[w%2]
			for round := range 5 {
				i := (w*3 + round*2) % n
				id, rev := boundGist(i)
				g, err := c.Fetch(t.Context(), id, rev)
				if err == nil && len(g.File("main.sh").Content) != 1000+i {
					err = fmt.Errorf("gist %d: main.sh has %d bytes", i, len(g.File("main.sh").Content))
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	// The last write scanned and made room; writers racing with it may
	// each have added an entry past the bound.
	var total int64
	paths, _ := filepath.Glob(filepath.Join(dir, "*", "*", "*"))
	for _, p := range paths {
		if strings.HasPrefix(filepath.Base(p), ".tmp-") {
			t.Errorf("temporary file left: %s", p)
		}
		if info, err := os.Stat(p); err == nil {
			total += info.Size()
		}
	}
	if limit := 3*size + 3*(size+n); total > limit {
		t.Errorf("cache holds %d bytes, more than %d", total, limit)
	}
}

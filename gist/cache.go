package gist

import (
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The disk cache (Client.CacheDir) holds one JSON file per entry, under
// a directory per API server (the host of BaseURL, such as
// api.github.com: gist IDs of two servers may collide):
//
//	<host>/rev/<id>@<revision>.json   a revision, kept for ever: it never changes
//	<host>/latest/<id>.json           the latest revision seen, with its ETag
//
// Entries appear by rename once written. An entry that does not decode,
// or decodes to another gist, is ignored and fetched again. Errors writing
// the cache are ignored: it only saves requests.

// cacheEntry is a cache file.
type cacheEntry struct {
	ETag string `json:"etag,omitempty"`
	Gist *Gist  `json:"gist"`
}

// cacheRoot is the cache directory of the API server.
func (c *Client) cacheRoot() string {
	host := "api"
	if u, err := url.Parse(c.baseURL()); err == nil && u.Host != "" {
		host = u.Host
	}
	// Keep the name one plain path element whatever the URL holds.
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '_'
	}, host)
	if strings.Trim(host, ".") == "" {
		host = "api"
	}
	return filepath.Join(c.CacheDir, host)
}

func (c *Client) revisionPath(id, revision string) string {
	return filepath.Join(c.cacheRoot(), "rev", id+"@"+revision+".json")
}

func (c *Client) latestPath(id string) string {
	return filepath.Join(c.cacheRoot(), "latest", id+".json")
}

// cachedRevision returns the cached revision of gist id, or nil.
func (c *Client) cachedRevision(id, revision string) *Gist {
	if c.CacheDir == "" {
		return nil
	}
	e := c.readEntry(c.revisionPath(id, revision), id)
	if e == nil || e.Gist.Revision != revision {
		return nil
	}
	return e.Gist
}

// cachedLatest returns the cached latest revision of gist id and its ETag,
// or nil.
func (c *Client) cachedLatest(id string) (*Gist, string) {
	if c.CacheDir == "" {
		return nil, ""
	}
	e := c.readEntry(c.latestPath(id), id)
	if e == nil || e.ETag == "" {
		return nil, ""
	}
	return e.Gist, e.ETag
}

// readEntry reads and checks a cache file: it must hold gist id, with
// valid names, within the size limits.
func (c *Client) readEntry(path, id string) *cacheEntry {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) > c.maxJSON() {
		return nil
	}
	var e cacheEntry
	if json.Unmarshal(b, &e) != nil || e.Gist == nil || e.Gist.ID != id {
		return nil
	}
	var total int64
	for i, f := range e.Gist.Files {
		if CheckName(f.Name) != nil || int64(len(f.Content)) > c.maxFile() || i > 0 && e.Gist.Files[i-1].Name >= f.Name {
			return nil
		}
		total += int64(len(f.Content))
	}
	if total > c.maxTotal() {
		return nil
	}
	return &e
}

func (c *Client) storeRevision(g *Gist) {
	if c.CacheDir != "" {
		c.writeEntry(c.revisionPath(g.ID, g.Revision), &cacheEntry{Gist: g})
	}
}

func (c *Client) storeLatest(g *Gist, etag string) {
	if c.CacheDir == "" {
		return
	}
	if etag == "" {
		// Without an ETag the entry could never be revalidated.
		os.Remove(c.latestPath(g.ID))
		return
	}
	c.writeEntry(c.latestPath(g.ID), &cacheEntry{ETag: etag, Gist: g})
}

// writeEntry writes a cache file atomically: a temporary file renamed
// into place, so a reader never sees half an entry.
func (c *Client) writeEntry(path string, e *cacheEntry) {
	g := *e.Gist
	g.Files = slices.Clone(g.Files)
	b, err := json.Marshal(&cacheEntry{ETag: e.ETag, Gist: &g})
	if err != nil {
		return
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	f, err := os.CreateTemp(dir, ".tmp-"+strings.TrimSuffix(filepath.Base(path), ".json")+"-")
	if err != nil {
		return
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
}

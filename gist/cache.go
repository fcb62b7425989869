package gist

import (
	"cmp"
	"encoding/json"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pe-project/pe/internal/atomicfile"
)

// The disk cache (Client.CacheDir) holds one JSON file per entry, under
// a directory per API server (the host of BaseURL, such as
// api.github.com: gist IDs of two servers may collide):
//
//	<host>/rev/<id>@<revision>.json   a revision: it never changes
//	<host>/latest/<id>.json           the latest revision seen, with its ETag
//
// Entries appear by rename once written. An entry that does not decode,
// or decodes to another gist, is ignored and fetched again. Errors writing
// the cache are ignored: it only saves requests.
//
// The entries together stay within Client.CacheMaxBytes, as pe serve
// fetches whatever gists its visitors name. An entry's modification time
// is when it was last used: set when written, and by os.Chtimes at each
// hit (atime may be off, and a scan reads mtimes anyway). When a write
// would go past the bound, the entries of every host are listed and the
// least recently used removed down to 7/8 of the bound, so that the next
// scan waits for an eighth of the bound to be written again. A Client
// scans at its first write; between scans it adds up its own writes, and
// every rescanEvery writes it scans again to see those of other processes
// sharing the directory. Temporary files are neither counted nor evicted
// (another process may be about to rename one) unless a day old.

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
	// A hit makes the entry the most recently used. It may fail (the
	// entry just evicted, a read-only cache): the entry is used anyway.
	now := time.Now()
	os.Chtimes(path, now, now)
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
	if limit := c.cacheMax(); limit > 0 && int64(len(b)) > limit {
		// It would push every other entry out and still not fit. What it
		// would have replaced is stale (a latest with an old ETag), so it
		// goes too.
		os.Remove(path)
		return
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	f, err := atomicfile.Create(path, atomicfile.Options{Pattern: ".tmp-" + strings.TrimSuffix(filepath.Base(path), ".json") + "-"})
	if err != nil {
		return
	}
	if _, err := f.Write(b); err != nil {
		f.Abort()
		return
	}
	// Room is made once the entry is written (a failed write takes none),
	// and before it appears: the temporary file is not an entry, so no
	// scan counts or evicts it. A failed Commit removes the temporary
	// file.
	c.makeRoom(path, int64(len(b)))
	f.Commit()
}

// rescanEvery is how many writes a Client makes between scans of the
// cache when its running total stays under the bound.
const rescanEvery = 256

// tempMaxAge is how old a temporary file must be for a scan to remove it:
// a writer renames its file within moments, so a file this old was left
// by one that crashed, and a younger one may be about to be renamed.
const tempMaxAge = 24 * time.Hour

func (c *Client) cacheMax() int64 {
	if c.CacheMaxBytes == 0 {
		return DefaultCacheMaxBytes
	}
	return c.CacheMaxBytes
}

// makeRoom accounts for an entry of n bytes about to be renamed to path,
// and evicts entries if the cache would go past its bound.
func (c *Client) makeRoom(path string, n int64) {
	limit := c.cacheMax()
	if limit < 0 {
		return
	}
	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	c.cacheWrites++
	if c.cacheScanned && c.cacheWrites < rescanEvery {
		var old int64
		if info, err := os.Lstat(path); err == nil {
			old = info.Size()
		}
		if c.cacheSize-old+n <= limit {
			c.cacheSize += n - old
			return
		}
	}
	files := c.scanCache(time.Now())
	total := n
	for _, f := range files {
		if f.path != path { // replaced by the new entry
			total += f.size
		}
	}
	if total > limit {
		total = evictLRU(files, total, limit-limit/8, path)
	}
	c.cacheSize, c.cacheWrites, c.cacheScanned = total, 0, true
}

// cacheFile is an entry found by a scan.
type cacheFile struct {
	path string
	size int64
	// used is the modification time: when the entry was written or last
	// hit.
	used time.Time
}

// scanCache lists the entries under CacheDir, of every API server's
// directory, and removes temporary files older than tempMaxAge. Files
// that vanish while it looks (another process evicting) are left out;
// anything not laid out as an entry is left alone.
func (c *Client) scanCache(now time.Time) []cacheFile {
	hosts, err := os.ReadDir(c.CacheDir)
	if err != nil {
		return nil
	}
	var files []cacheFile
	for _, h := range hosts {
		if !h.IsDir() {
			continue
		}
		for _, kind := range []string{"rev", "latest"} {
			dir := filepath.Join(c.CacheDir, h.Name(), kind)
			ents, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, e := range ents {
				name := e.Name()
				if !e.Type().IsRegular() {
					continue
				}
				info, err := e.Info()
				if err != nil {
					continue
				}
				switch {
				case strings.HasPrefix(name, ".tmp-"):
					if now.Sub(info.ModTime()) > tempMaxAge {
						os.Remove(filepath.Join(dir, name))
					}
				case strings.HasSuffix(name, ".json"):
					files = append(files, cacheFile{path: filepath.Join(dir, name), size: info.Size(), used: info.ModTime()})
				}
			}
		}
	}
	return files
}

// evictLRU removes files, least recently used first, until the total of
// those left is at most target, and returns that total. It never removes
// keep (about to be replaced, and not counted in total). A file gone
// already, evicted by another process, counts as removed; one used since
// the scan (its mtime changed: a hit, or written again) is kept.
func evictLRU(files []cacheFile, total, target int64, keep string) int64 {
	slices.SortFunc(files, func(a, b cacheFile) int {
		return cmp.Or(a.used.Compare(b.used), strings.Compare(a.path, b.path))
	})
	for _, f := range files {
		if total <= target {
			break
		}
		if f.path == keep {
			continue
		}
		info, err := os.Lstat(f.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			total -= f.size
			continue
		case err != nil || !info.ModTime().Equal(f.used):
			continue
		}
		if err := os.Remove(f.path); err == nil || errors.Is(err, fs.ErrNotExist) {
			total -= f.size
		}
	}
	return total
}

package image

// pe image ls, rm and prune of the s3:// images read lazily (OpenS3):
// each is an index under s3/indexes/sha256 and the tag records under
// s3/refs that name it; its chunks sit in the chunk store s3/chunks,
// shared by every lazy image.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore"
)

// lazyEntry is a lazy image's index found in the cache.
type lazyEntry struct {
	digest   v1.Hash
	ix       *blockstore.Index
	platform string
	// used is when a run last opened the image (OpenS3 sets the index
	// file's mtime).
	used time.Time
	// bytes is the index file's size.
	bytes int64
}

// scanLazy returns the lazy images' indexes by digest hex. Unreadable or
// damaged copies are left out (OpenS3 fetches those again).
func (c *Cache) scanLazy() (map[string]*lazyEntry, error) {
	dir := c.path(s3LazyDir, "indexes", "sha256")
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]*lazyEntry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing the lazy images' indexes: %w", err)
	}
	m := map[string]*lazyEntry{}
	for _, de := range des {
		hexName, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || strings.HasPrefix(de.Name(), tmpPrefix) {
			continue
		}
		h, err := v1.NewHash("sha256:" + hexName)
		if err != nil {
			continue
		}
		path := filepath.Join(dir, de.Name())
		b, err := os.ReadFile(path)
		if err != nil || checkDigest(b, h, path) != nil {
			continue
		}
		ix, err := blockstore.DecodeIndex(b)
		if err != nil {
			continue
		}
		e := &lazyEntry{digest: h, ix: ix, bytes: int64(len(b))}
		if fi, err := de.Info(); err == nil {
			e.used = fi.ModTime()
		}
		if cfg, err := v1.ParseConfigFile(strings.NewReader(string(ix.Config))); err == nil && cfg.OS != "" && cfg.Architecture != "" {
			e.platform = (&v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}).String()
		}
		m[h.Hex] = e
	}
	return m, nil
}

// lazyRecord is a lazy tag record and its file.
type lazyRecord struct {
	s3Ref
	path string
}

// scanLazyRefs returns the lazy tag (and pinned digest) records,
// unreadable ones left out.
func (c *Cache) scanLazyRefs() ([]lazyRecord, error) {
	dir := c.path(s3LazyDir, "refs")
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing the lazy images' records: %w", err)
	}
	var recs []lazyRecord
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), ".json") || strings.HasPrefix(de.Name(), tmpPrefix) {
			continue
		}
		path := filepath.Join(dir, de.Name())
		b, err := readSmall(path)
		if err != nil {
			continue
		}
		var rec s3Ref
		if json.Unmarshal(b, &rec) != nil || rec.Name == "" || c.s3RefPath(rec.Name) != path {
			continue
		}
		recs = append(recs, lazyRecord{rec, path})
	}
	return recs, nil
}

// listLazy returns the lazy images as List shows them: one per record
// whose index is in the cache, and with Reference "" an index no record
// names.
func (c *Cache) listLazy() ([]CachedImage, error) {
	entries, err := c.scanLazy()
	if err != nil {
		return nil, err
	}
	if len(entries) == 0 {
		return nil, nil
	}
	recs, err := c.scanLazyRefs()
	if err != nil {
		return nil, err
	}
	chunks := c.path(s3LazyDir)
	cached := map[string]int64{}
	item := func(e *lazyEntry, name string, fetched time.Time) CachedImage {
		n, ok := cached[e.digest.Hex]
		if !ok {
			n = blockstore.CachedBytes(chunks, e.ix)
			cached[e.digest.Hex] = n
		}
		used := e.used
		if fetched.After(used) {
			used = fetched
		}
		return CachedImage{Reference: name, Digest: e.digest, Platform: e.platform, Size: e.ix.Size,
			LastUsed: used, Lazy: true, CachedBytes: n}
	}
	var list []CachedImage
	named := map[string]bool{}
	for _, rec := range recs {
		if e, ok := entries[rec.Digest.Hex]; ok {
			list = append(list, item(e, rec.Name, time.Unix(rec.Fetched, 0)))
			named[rec.Digest.Hex] = true
		}
	}
	for hex, e := range entries {
		if !named[hex] {
			list = append(list, item(e, "", time.Time{}))
		}
	}
	return list, nil
}

// removeLazyRef removes the lazy records ref names: its tag record, or for
// a pinned digest its own record and every record of the same name that
// resolved to that digest; then the image if no record names it any more.
// found says whether the cache knew ref as a lazy image. The caller holds
// the gc lock exclusively.
func (c *Cache) removeLazyRef(report *RemoveReport, ref Reference) (found bool, err error) {
	recs, err := c.scanLazyRefs()
	if err != nil {
		return false, err
	}
	var digest v1.Hash
	if ref.digest != "" {
		if digest, err = v1.NewHash(ref.digest); err != nil {
			return false, err
		}
		found = exists(c.s3IndexPath(digest))
	}
	name, location := ref.String(), ref.s3.String()
	var gone []v1.Hash
	for _, rec := range recs {
		match := rec.Name == name
		if ref.digest != "" && rec.Digest == digest {
			// The tags of the same image name that resolved to it.
			if r, err := ParseReference(rec.Name); err == nil && r.transport == TransportS3 && r.s3.String() == location {
				match = true
			}
		}
		if !match {
			continue
		}
		if err := os.Remove(rec.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return found, fmt.Errorf("removing the record of %s: %w", FamiliarName(rec.Name), err)
		}
		found = true
		report.Untagged = appendNew(report.Untagged, rec.Name)
		gone = append(gone, rec.Digest)
	}
	if ref.digest != "" && found {
		gone = append(gone, digest)
	}
	return found, c.collectLazy(report, gone, false)
}

// removeLazyID removes the lazy image whose digest hex is hex, and every
// record naming it.
func (c *Cache) removeLazyID(report *RemoveReport, hex string) error {
	recs, err := c.scanLazyRefs()
	if err != nil {
		return err
	}
	for _, rec := range recs {
		if rec.Digest.Hex != hex {
			continue
		}
		if err := os.Remove(rec.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the record of %s: %w", FamiliarName(rec.Name), err)
		}
		report.Untagged = appendNew(report.Untagged, rec.Name)
	}
	h, err := v1.NewHash("sha256:" + hex)
	if err != nil {
		return err
	}
	return c.collectLazy(report, []v1.Hash{h}, false)
}

// collectLazy deletes the candidate lazy images no record names any more
// (all of them with force), each one's index and the cached chunks no
// remaining lazy image's index lists. A pe reading a deleted image at the
// same time fetches again the chunks it needs. The caller holds the gc
// lock exclusively.
func (c *Cache) collectLazy(report *RemoveReport, candidates []v1.Hash, force bool) error {
	if len(candidates) == 0 {
		return nil
	}
	recs, err := c.scanLazyRefs()
	if err != nil {
		return err
	}
	named := map[string]bool{}
	for _, rec := range recs {
		named[rec.Digest.Hex] = true
	}
	entries, err := c.scanLazy()
	if err != nil {
		return err
	}
	var gone []*lazyEntry
	for _, h := range candidates {
		if e, ok := entries[h.Hex]; ok && (force || !named[h.Hex]) {
			gone = append(gone, e)
			delete(entries, h.Hex)
		}
	}
	var keep []*blockstore.Index
	for _, e := range entries {
		keep = append(keep, e.ix)
	}
	for _, e := range gone {
		if err := os.Remove(c.s3IndexPath(e.digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the index of lazy image %s: %w", e.digest, err)
		}
		files, bytes, err := blockstore.RemoveChunks(c.path(s3LazyDir), e.ix, keep)
		report.Chunks += files
		report.Bytes += e.bytes + bytes
		if err != nil {
			return fmt.Errorf("removing the cached chunks of %s: %w", e.digest, err)
		}
		if !containsHash(report.Deleted, e.digest) {
			report.Deleted = append(report.Deleted, e.digest)
		}
	}
	return nil
}

// pruneLazy removes the lazy images no record names, with opts.All every
// one, and with opts.OlderThan those not used since cutoff, with their
// records. opts.MaxSize does not count them: the chunk store has its own
// bound (--chunk-cache-size).
func (c *Cache) pruneLazy(report *RemoveReport, opts PruneOptions, cutoff time.Time) error {
	entries, err := c.scanLazy()
	if err != nil {
		return err
	}
	recs, err := c.scanLazyRefs()
	if err != nil {
		return err
	}
	used := map[string]time.Time{}
	for _, rec := range recs {
		if t := time.Unix(rec.Fetched, 0); t.After(used[rec.Digest.Hex]) {
			used[rec.Digest.Hex] = t
		}
	}
	gone := map[string]bool{}
	var candidates []v1.Hash
	for hex, e := range entries {
		last, named := used[hex]
		if e.used.After(last) {
			last = e.used
		}
		if opts.All || !named || opts.OlderThan > 0 && last.Before(cutoff) {
			gone[hex] = true
			candidates = append(candidates, e.digest)
		}
	}
	for _, rec := range recs {
		// Records of pruned images, and of indexes no longer here
		// (unless the image is in the cache whole: OpenS3 uses that).
		if _, ok := entries[rec.Digest.Hex]; ok && !gone[rec.Digest.Hex] || !ok && c.complete(rec.Digest) {
			continue
		}
		if err := os.Remove(rec.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the record of %s: %w", FamiliarName(rec.Name), err)
		}
		report.Untagged = appendNew(report.Untagged, rec.Name)
	}
	return c.collectLazy(report, candidates, true)
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

func containsHash(list []v1.Hash, h v1.Hash) bool {
	for _, x := range list {
		if x == h {
			return true
		}
	}
	return false
}

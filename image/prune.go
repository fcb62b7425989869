package image

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// RemoveReport says what Remove, RemoveID or Prune deleted.
type RemoveReport struct {
	// Untagged are the references whose records were removed.
	Untagged []string
	// Deleted are the images removed from the cache.
	Deleted []v1.Hash
	// Blobs is how many layer blobs were removed.
	Blobs int
	// Bytes is the disk space given back, in bytes.
	Bytes int64
	// Chunks is how many cached chunks of lazy s3:// images were
	// removed (their bytes count in Bytes).
	Chunks int
	// InUse are the images that would have been removed but that a run
	// is using (see Lease): they stay.
	InUse []v1.Hash
}

// cachedEntry is an image directory found on disk.
type cachedEntry struct {
	img  *CachedImage
	meta *imageMeta
	// bytes is the size of all the directory's files.
	bytes int64
}

// scanImages returns the complete images of the cache by digest hex, and
// the names of incomplete image directories.
func (c *Cache) scanImages() (map[string]*cachedEntry, []string, error) {
	des, err := os.ReadDir(c.path(imagesDir))
	if err != nil {
		return nil, nil, err
	}
	images := map[string]*cachedEntry{}
	var broken []string
	for _, de := range des {
		if !de.IsDir() || strings.HasPrefix(de.Name(), tmpPrefix) {
			continue
		}
		h, err := v1.NewHash("sha256:" + de.Name())
		if err != nil {
			continue
		}
		img, meta, err := c.loadImage(h)
		if err != nil {
			broken = append(broken, de.Name())
			continue
		}
		images[h.Hex] = &cachedEntry{img: img, meta: meta, bytes: dirSize(c.imageDir(h))}
	}
	return images, broken, nil
}

// scanRefs returns every reference record, unreadable ones left out.
func (c *Cache) scanRefs() ([]*refRecord, error) {
	des, err := os.ReadDir(c.path(refsDir))
	if err != nil {
		return nil, err
	}
	var recs []*refRecord
	for _, de := range des {
		if !strings.HasSuffix(de.Name(), ".json") || strings.HasPrefix(de.Name(), tmpPrefix) {
			continue
		}
		b, err := readSmall(c.path(refsDir, de.Name()))
		if err != nil {
			continue
		}
		var rec refRecord
		if json.Unmarshal(b, &rec) != nil || rec.Name == "" {
			continue
		}
		recs = append(recs, &rec)
	}
	return recs, nil
}

// targets lists the images a record points to, with their platform key
// ("" for an imported image).
func (rec *refRecord) targets() map[string]v1.Hash {
	m := map[string]v1.Hash{}
	if rec.Local != nil {
		m[""] = rec.Local.Digest
	}
	for p, t := range rec.Platforms {
		m[p] = t.Digest
	}
	return m
}

// List returns the cached images: one per reference recorded for an image
// (an image known by two tags is listed twice), and once with Reference ""
// an image no reference points to any more; then likewise the s3:// images
// runs read lazily (Lazy), whose references are their tags and pinned
// digests. Sorted by reference, then platform.
func (c *Cache) List(ctx context.Context) ([]CachedImage, error) {
	images, _, err := c.scanImages()
	if err != nil {
		return nil, fmt.Errorf("listing the image cache: %w", err)
	}
	recs, err := c.scanRefs()
	if err != nil {
		return nil, fmt.Errorf("listing the image cache: %w", err)
	}
	var list []CachedImage
	named := map[string]bool{}
	for _, rec := range recs {
		for _, h := range rec.targets() {
			if e, ok := images[h.Hex]; ok {
				img := *e.img
				img.Reference = rec.Name
				list = append(list, img)
				named[h.Hex] = true
			}
		}
	}
	for hex, e := range images {
		if !named[hex] {
			list = append(list, *e.img)
		}
	}
	lazy, err := c.listLazy()
	if err != nil {
		return nil, fmt.Errorf("listing the image cache: %w", err)
	}
	list = append(list, lazy...)
	slices.SortFunc(list, func(a, b CachedImage) int {
		if (a.Reference == "") != (b.Reference == "") {
			if a.Reference == "" {
				return 1
			}
			return -1
		}
		return cmp.Or(strings.Compare(a.Reference, b.Reference), strings.Compare(a.Platform, b.Platform),
			strings.Compare(a.Digest.Hex, b.Digest.Hex))
	})
	return list, nil
}

// Remove removes ref's record from the cache, and the images it pointed
// to (for every platform) unless other references still point to them,
// then the blobs no image needs any more. Like docker rmi, an image known
// by two tags loses only the tag. It fails with ErrNotFound when the cache
// has no record of ref.
func (c *Cache) Remove(ctx context.Context, ref Reference) (*RemoveReport, error) {
	gc, err := c.lockGC(ctx, false, nil)
	if err != nil {
		return nil, err
	}
	defer gc.unlock()
	rec, err := c.readRef(ref.String())
	if err != nil {
		return nil, err
	}
	report := &RemoveReport{}
	lazy := false
	if ref.transport == TransportS3 {
		// An s3:// image may be in the cache whole (pe image pull),
		// read lazily by runs, or both: rm removes both.
		if lazy, err = c.removeLazyRef(report, ref); err != nil {
			return report, err
		}
	}
	if rec == nil {
		if lazy {
			return report, nil
		}
		return nil, kindErrorf(ErrNotFound, "no such image in the cache: %s", ref.Familiar())
	}
	if err := c.updateRef(rec.Name, func(*refRecord) bool { return false }); err != nil {
		return nil, err
	}
	report.Untagged = appendNew(report.Untagged, rec.Name)
	if err := c.collect(report, rec.targets()); err != nil {
		return report, err
	}
	return report, nil
}

// RemoveID removes the image whose digest is id ("sha256:…", or a unique
// prefix of the hex digits, at least 4, as `pe image ls` shows them) and
// every record pointing to it, then the blobs no image needs any more.
func (c *Cache) RemoveID(ctx context.Context, id string) (*RemoveReport, error) {
	prefix := strings.TrimPrefix(id, "sha256:")
	if len(prefix) < 4 || len(prefix) > 64 || strings.Trim(prefix, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("image ID %q: want sha256:HEX or at least 4 hex digits", id)
	}
	gc, err := c.lockGC(ctx, false, nil)
	if err != nil {
		return nil, err
	}
	defer gc.unlock()
	images, _, err := c.scanImages()
	if err != nil {
		return nil, err
	}
	lazy, err := c.scanLazy()
	if err != nil {
		return nil, err
	}
	found := map[string]bool{}
	for hex := range images {
		if strings.HasPrefix(hex, prefix) {
			found[hex] = true
		}
	}
	for hex := range lazy {
		if strings.HasPrefix(hex, prefix) {
			found[hex] = true
		}
	}
	var hex string
	switch len(found) {
	case 0:
		return nil, kindErrorf(ErrNotFound, "no such image in the cache: %s", id)
	case 1:
		for h := range found {
			hex = h
		}
	default:
		return nil, fmt.Errorf("image ID %s is ambiguous: %d images start with it", id, len(found))
	}
	report := &RemoveReport{}
	if lazy[hex] != nil {
		if err := c.removeLazyID(report, hex); err != nil {
			return report, err
		}
	}
	if e := images[hex]; e != nil {
		if err := c.untag(report, map[string]bool{hex: true}); err != nil {
			return report, err
		}
		return report, c.collect(report, map[string]v1.Hash{"": e.img.Digest})
	}
	return report, nil
}

// untag removes from every record the targets that are in gone.
func (c *Cache) untag(report *RemoveReport, gone map[string]bool) error {
	recs, err := c.scanRefs()
	if err != nil {
		return err
	}
	for _, rec := range recs {
		hit := false
		for _, h := range rec.targets() {
			hit = hit || gone[h.Hex]
		}
		if !hit {
			continue
		}
		err := c.updateRef(rec.Name, func(r *refRecord) bool {
			if r.Local != nil && gone[r.Local.Digest.Hex] {
				r.Local = nil
			}
			for p, t := range r.Platforms {
				if gone[t.Digest.Hex] {
					delete(r.Platforms, p)
				}
			}
			return r.Local != nil || len(r.Platforms) > 0
		})
		if err != nil {
			return err
		}
		report.Untagged = append(report.Untagged, rec.Name)
	}
	return nil
}

// collect deletes the candidate images no record points to any more, then
// the blobs no remaining image uses. The caller holds the gc lock
// exclusively.
func (c *Cache) collect(report *RemoveReport, candidates map[string]v1.Hash) error {
	recs, err := c.scanRefs()
	if err != nil {
		return err
	}
	referenced := map[string]bool{}
	for _, rec := range recs {
		for _, h := range rec.targets() {
			referenced[h.Hex] = true
		}
	}
	images, _, err := c.scanImages()
	if err != nil {
		return err
	}
	for _, h := range candidates {
		e, ok := images[h.Hex]
		if !ok || referenced[h.Hex] {
			continue
		}
		if c.inUse(h) {
			// No reference points to it any more: a later prune removes
			// it once the run is over.
			report.InUse = append(report.InUse, h)
			continue
		}
		if err := c.deleteImage(h); err != nil {
			return err
		}
		delete(images, h.Hex)
		if !containsHash(report.Deleted, h) { // rm s3://… may have deleted its lazy copy
			report.Deleted = append(report.Deleted, h)
		}
		report.Bytes += e.bytes
	}
	return c.removeUnusedBlobs(report, images)
}

// deleteImage removes an image directory: renamed out of the way first,
// so it vanishes at once, then deleted.
func (c *Cache) deleteImage(h v1.Hash) error {
	dir := c.imageDir(h)
	trash := filepath.Join(c.path(imagesDir), fmt.Sprintf("%sdel-%s-%d", tmpPrefix, h.Hex, time.Now().UnixNano()))
	if err := os.Rename(dir, trash); err != nil {
		return fmt.Errorf("removing image %s: %w", h, err)
	}
	os.Remove(dir + ".lock")
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("removing image %s: %w", h, err)
	}
	return nil
}

// removeUnusedBlobs deletes the blobs none of images was made from.
func (c *Cache) removeUnusedBlobs(report *RemoveReport, images map[string]*cachedEntry) error {
	used := map[string]bool{}
	for _, e := range images {
		for _, b := range e.meta.Blobs {
			used[strings.TrimPrefix(b, "sha256:")] = true
		}
	}
	des, err := os.ReadDir(c.path(blobsDir))
	if err != nil {
		return err
	}
	for _, de := range des {
		if used[de.Name()] || strings.HasPrefix(de.Name(), tmpPrefix) {
			continue
		}
		path := c.path(blobsDir, de.Name())
		fi, err := os.Lstat(path)
		if err != nil {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		report.Blobs++
		report.Bytes += fi.Size()
	}
	return nil
}

// PruneOptions says what Prune removes besides images no reference points
// to (which it always removes, like docker image prune).
type PruneOptions struct {
	// MaxSize, when positive, removes least recently used images until
	// the images and their blobs take at most this many bytes.
	MaxSize int64
	// OlderThan, when positive, removes images not used for that long.
	OlderThan time.Duration
	// All removes every image.
	All bool
}

// Prune removes images no reference points to any more (their tag moved
// on), and as opts asks, images unused for a while, every image, or the
// least recently used ones until the cache fits in a size. Then it removes
// the blobs no remaining image needs, records of removed images, and what
// interrupted pe processes left behind. Images in use (see Lease) are never
// removed: they are listed in the report's InUse, and with MaxSize they
// count against the size, so the cache may stay over it while they are
// used.
func (c *Cache) Prune(ctx context.Context, opts PruneOptions) (*RemoveReport, error) {
	gc, err := c.lockGC(ctx, false, nil)
	if err != nil {
		return nil, err
	}
	defer gc.unlock()
	report := &RemoveReport{}
	if err := c.removeLeftovers(report); err != nil {
		return nil, err
	}
	images, broken, err := c.scanImages()
	if err != nil {
		return nil, err
	}
	if err := c.removeBroken(report, broken); err != nil {
		return report, err
	}
	recs, err := c.scanRefs()
	if err != nil {
		return nil, err
	}
	referenced := referencedImages(recs)
	cutoff := c.now().Add(-opts.OlderThan)
	sel := c.selectPruned(images, referenced, opts, cutoff)
	c.reportInUse(report, images, referenced, sel, opts, cutoff)
	if err := c.deletePruned(report, images, sel.gone); err != nil {
		return report, err
	}
	// Records pointing to images that are gone (removed now, or lost).
	if dead := deadTargets(recs, images); len(dead) > 0 {
		if err := c.untag(report, dead); err != nil {
			return report, err
		}
	}
	if err := c.removeUnusedBlobs(report, images); err != nil {
		return report, err
	}
	return report, c.pruneLazy(report, opts, cutoff)
}

// removeLeftovers removes temporary files and the lock files of absent
// images. Everyone else who writes holds the gc lock, so temporary files now
// are leftovers of killed processes, and lock files of absent images are
// unused.
func (c *Cache) removeLeftovers(report *RemoveReport) error {
	for _, d := range []string{imagesDir, blobsDir, refsDir} {
		des, err := os.ReadDir(c.path(d))
		if err != nil {
			return err
		}
		for _, de := range des {
			path := c.path(d, de.Name())
			stale := strings.HasPrefix(de.Name(), tmpPrefix)
			if base, ok := strings.CutSuffix(de.Name(), ".lock"); ok && d == imagesDir {
				stale = !exists(c.path(d, base))
			}
			if stale {
				report.Bytes += dirSize(path)
				os.RemoveAll(path)
			}
		}
	}
	return nil
}

// removeBroken removes the image directories scanImages could not read:
// nothing can use them, and their space counts in the report.
func (c *Cache) removeBroken(report *RemoveReport, broken []string) error {
	for _, hex := range broken {
		path := c.path(imagesDir, hex)
		report.Bytes += dirSize(path)
		if err := os.RemoveAll(path); err != nil {
			return err
		}
	}
	return nil
}

// referencedImages is the set of image digests (hex) some reference record
// points to; the others are unreferenced, which Prune always removes.
func referencedImages(recs []*refRecord) map[string]bool {
	referenced := map[string]bool{}
	for _, rec := range recs {
		for _, h := range rec.targets() {
			referenced[h.Hex] = true
		}
	}
	return referenced
}

// pruneSelection is what Prune chose: the images to delete, the ones it
// keeps, and those in use, which it keeps whatever opts say.
type pruneSelection struct {
	gone  map[string]bool
	keep  []*cachedEntry
	inUse map[string]bool
}

// selectPruned chooses the images to delete: unreferenced ones, all with
// opts.All, those last used before cutoff with opts.OlderThan, then with
// opts.MaxSize the least recently used until the rest fit. Images in use stay
// and count against MaxSize.
func (c *Cache) selectPruned(images map[string]*cachedEntry, referenced map[string]bool, opts PruneOptions, cutoff time.Time) pruneSelection {
	sel := pruneSelection{gone: map[string]bool{}, inUse: map[string]bool{}}
	for hex, e := range images {
		if c.inUse(e.img.Digest) {
			sel.inUse[hex] = true
		}
		if !sel.inUse[hex] && (opts.All || !referenced[hex] || (opts.OlderThan > 0 && e.img.LastUsed.Before(cutoff))) {
			sel.gone[hex] = true
		} else {
			sel.keep = append(sel.keep, e)
		}
	}
	if opts.MaxSize > 0 {
		// Least recently used first; images in use stay, and count.
		slices.SortFunc(sel.keep, func(a, b *cachedEntry) int {
			return cmp.Or(a.img.LastUsed.Compare(b.img.LastUsed), strings.Compare(a.img.Digest.Hex, b.img.Digest.Hex))
		})
		for i := 0; i < len(sel.keep) && c.footprint(sel.keep) > opts.MaxSize; {
			if sel.inUse[sel.keep[i].img.Digest.Hex] {
				i++
				continue
			}
			sel.gone[sel.keep[i].img.Digest.Hex] = true
			sel.keep = slices.Delete(sel.keep, i, i+1)
		}
	}
	return sel
}

// reportInUse lists in the report, sorted, the images in use that Prune would
// have removed, so the caller can say why the cache is not as asked.
func (c *Cache) reportInUse(report *RemoveReport, images map[string]*cachedEntry, referenced map[string]bool, sel pruneSelection, opts PruneOptions, cutoff time.Time) {
	for hex := range sel.inUse {
		if opts.All || !referenced[hex] || opts.MaxSize > 0 && c.footprint(sel.keep) > opts.MaxSize ||
			opts.OlderThan > 0 && images[hex].img.LastUsed.Before(cutoff) {
			report.InUse = append(report.InUse, images[hex].img.Digest)
		}
	}
	slices.SortFunc(report.InUse, func(a, b v1.Hash) int { return strings.Compare(a.Hex, b.Hex) })
}

// deletePruned deletes the images in gone, drops them from images (which
// then lists what remains, for the record and blob sweeps that follow) and
// lists them in the report, sorted.
func (c *Cache) deletePruned(report *RemoveReport, images map[string]*cachedEntry, gone map[string]bool) error {
	for hex := range gone {
		e := images[hex]
		if err := c.deleteImage(e.img.Digest); err != nil {
			return err
		}
		delete(images, hex)
		report.Deleted = append(report.Deleted, e.img.Digest)
		report.Bytes += e.bytes
	}
	slices.SortFunc(report.Deleted, func(a, b v1.Hash) int { return strings.Compare(a.Hex, b.Hex) })
	return nil
}

// deadTargets is the set of image digests (hex) that reference records point
// to but that are not among images: removed now, or lost.
func deadTargets(recs []*refRecord, images map[string]*cachedEntry) map[string]bool {
	dead := map[string]bool{}
	for _, rec := range recs {
		for _, h := range rec.targets() {
			if _, ok := images[h.Hex]; !ok {
				dead[h.Hex] = true
			}
		}
	}
	return dead
}

// footprint is the disk space images and the blobs they use take.
func (c *Cache) footprint(images []*cachedEntry) int64 {
	var n int64
	blobs := map[string]bool{}
	for _, e := range images {
		n += e.bytes
		for _, b := range e.meta.Blobs {
			blobs[strings.TrimPrefix(b, "sha256:")] = true
		}
	}
	for b := range blobs {
		if fi, err := os.Stat(c.path(blobsDir, b)); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// dirSize is the size of the files under path (or of path, a file).
func dirSize(path string) int64 {
	var n int64
	filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/erofs"
)

// importURL converts an import whose tarball is a URL and stores it in
// the cache. The tarball is read once, as it streams into the image, so
// its digest, and with it the image's, is known only at the end: the
// image is written to a temporary directory first, and moved into place
// under its digest once the tarball has been read to its end (or dropped,
// if another import got there first). An import that fails leaves
// nothing.
func (c *Cache) importURL(ctx context.Context, plan *importPlan, o *pullConfig) (*CachedImage, error) {
	start := time.Now()
	u, err := OpenURL(ctx, plan.opts.Tar, plan.urlOptions(o))
	if err != nil {
		return nil, err
	}
	defer u.Close()
	record := c.importRecordPath(plan, u)
	if img, err := c.recordedImport(ctx, record, plan, o); img != nil || err != nil {
		return img, err
	}
	plan.opened = u
	hs := &tarHasher{h: sha256.New()}
	plan.hashURL = hs
	tmp, err := c.stageImage(ctx, "import", c.fillEROFS(func(w *erofs.Writer) error {
		return flattenImport(ctx, w, plan, o, nil)
	}))
	if err != nil {
		return nil, err
	}
	if !hs.eof {
		// Flatten reads every stream to its end; this is a bug, not bad input.
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("tarball %s was not read to its end", RedactURL(plan.opts.Tar))
	}
	plan.tarDigest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(hs.h.Sum(nil))}
	plan.tarSize = hs.n
	if err := plan.synthesize(tarMediaType(hs.magic)); err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	src := plan.src
	ref := src.ref.String()
	lock, err := c.lockImage(ctx, src.digest, o)
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	defer lock.unlockRemove()
	c.recordImport(record, src.digest)
	if c.complete(src.digest) {
		os.RemoveAll(tmp)
		return c.useLocked(ref, src.digest)
	}
	meta := importMeta(src)
	if err := c.commitImage(tmp, src.digest, src.config, src.manifest, &meta); err != nil {
		return nil, err
	}
	o.Log.Info("converted image", "reference", src.ref.Familiar(), "digest", src.digest, "bytes", meta.Size,
		"tarball", RedactURL(plan.opts.Tar), "duration", time.Since(start).Round(time.Millisecond))
	return c.useLocked(ref, src.digest)
}

// importsDir holds what imports from URLs found (importRecordPath).
const importsDir = "imports"

// importRecordPath is where the digest of the image an import from the
// URL u makes is recorded, so that importing it again finds the image
// without downloading the tarball again; "" when the server gives no
// strong ETag. The key is everything the image depends on: the URL as
// given, the file's ETag and length, the config (which the base, the
// prefix and the file name determine), the base's manifest and the
// options. A strong ETag changes whenever the file's bytes do.
func (c *Cache) importRecordPath(plan *importPlan, u *URLReader) string {
	if u.etag == "" || u.size < 0 {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "url %q\netag %q\nsize %d\nstrip %d\nprefix %q\n", plan.opts.Tar, u.etag, u.size,
		plan.opts.StripComponents, cmpOr(plan.opts.Prefix, "/"))
	if plan.base != nil {
		fmt.Fprintf(h, "base %s\n", plan.base.digest)
	}
	h.Write(plan.src.config)
	return c.path(importsDir, hex.EncodeToString(h.Sum(nil))+".json")
}

// importRecord is the content of an import record.
type importRecord struct {
	Digest v1.Hash `json:"digest"`
}

// recordedImport returns the image a record says an earlier import of the
// same URL made, if the cache still has it; nil otherwise.
func (c *Cache) recordedImport(ctx context.Context, record string, plan *importPlan, o *pullConfig) (*CachedImage, error) {
	if record == "" {
		return nil, nil
	}
	b, err := readSmall(record)
	if err != nil {
		return nil, nil
	}
	var rec importRecord
	if json.Unmarshal(b, &rec) != nil || rec.Digest.Algorithm != "sha256" {
		return nil, nil
	}
	lock, err := c.lockImage(ctx, rec.Digest, o)
	if err != nil {
		return nil, err
	}
	defer lock.unlockRemove()
	if !c.complete(rec.Digest) {
		return nil, nil
	}
	o.Log.Info("import found in the cache", "tarball", RedactURL(plan.opts.Tar), "digest", rec.Digest)
	plan.src.digest = rec.Digest
	return c.useLocked(plan.src.ref.String(), rec.Digest)
}

// recordImport records, best effort, that the import whose record path is
// record made the image h: without the record the next import of the
// same URL only downloads again.
func (c *Cache) recordImport(record string, h v1.Hash) {
	if record == "" {
		return
	}
	if err := os.MkdirAll(c.path(importsDir), 0o755); err == nil {
		c.writeJSON(record, importRecord{Digest: h}, false)
	}
}

// importMeta is the meta.json of an imported image before it is written.
func importMeta(src *source) imageMeta {
	meta := imageMeta{References: []string{src.ref.String()}, Platform: src.platform, Local: true}
	for _, l := range src.layers {
		if l.fetch != nil {
			meta.Blobs = append(meta.Blobs, l.digest.String())
		}
	}
	return meta
}

// urlOptions are the options a tarball URL is fetched with: the plan's,
// completed from the pull options. The tarball and the base's layers
// together stay within --max-image-size.
func (plan *importPlan) urlOptions(o *pullConfig) URLOptions {
	u := plan.opts.URL
	if u.Transport == nil {
		u.Transport = o.Transport
	}
	if u.Log == nil {
		u.Log = o.Log
	}
	if u.UserAgent == "" {
		u.UserAgent = o.UserAgent
	}
	if u.MaxSize == 0 && o.MaxSize > 0 {
		u.MaxSize = max(o.MaxSize-plan.src.size, 1)
	}
	return u
}

// openURL returns the tar stream of a tarball URL for Flatten: *url, which
// flattenImport opened (or importURL before it), the first time; a new transfer should Flatten open
// the tarball again (it does not: the tarball is the top layer). The raw
// bytes are counted with add and, for an import, hashed.
func (plan *importPlan) openURL(ctx context.Context, url **URLReader, o *pullConfig, add func(int64)) (io.ReadCloser, *URLReader, error) {
	r := *url
	if r == nil {
		var err error
		if r, err = OpenURL(ctx, plan.opts.Tar, plan.urlOptions(o)); err != nil {
			return nil, nil, err
		}
	}
	*url = nil
	var in io.Reader = r
	if plan.hashURL != nil && !plan.hashURL.used {
		plan.hashURL.used = true
		plan.hashURL.r = r
		in = plan.hashURL
	}
	rc, err := fastGunzip(readCloser{countReader{in, add}, r})
	return rc, r, err
}

// tarHasher passes a tarball through, hashing it and keeping its first
// bytes (for the media type).
type tarHasher struct {
	r     io.Reader
	h     hash.Hash
	n     int64
	magic []byte
	eof   bool
	used  bool
}

func (t *tarHasher) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.h.Write(p[:n])
		t.n += int64(n)
		if len(t.magic) < 6 {
			t.magic = append(t.magic, p[:min(n, 6-len(t.magic))]...)
		}
	}
	if errors.Is(err, io.EOF) {
		t.eof = true
	}
	return n, err
}

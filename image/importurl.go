package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	hs := &tarHasher{h: sha256.New()}
	plan.hashURL = hs
	start := time.Now()
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
// flattenImport opened, the first time; a new transfer should Flatten open
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

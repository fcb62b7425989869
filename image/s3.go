package image

// Images in S3 buckets (issue 16). pe image push stores an image under
// s3://BUCKET/PREFIX/NAME as:
//
//	PREFIX/blobs/sha256/<hex>           the EROFS image, named by its sha256
//	PREFIX/blobs/sha256/<hex>           its chunks packed (each one LZ4 block,
//	                                    or raw where LZ4 does not shrink it),
//	                                    one after the other, named by their
//	                                    sha256: what lazy runs fetch
//	                                    (blockstore.Packed; absent when the
//	                                    push chose ChunkCodecNone)
//	PREFIX/indexes/sha256/<hex>.json    a blockstore.Index of that blob (chunk
//	                                    digests, the OCI config in Config),
//	                                    named by the sha256 of its own bytes
//	PREFIX/NAME/tags/TAG                "sha256:<index hex>\n", then that
//	                                    index's bytes, so that resolving a
//	                                    tag is one request (a tag of the
//	                                    line alone is read too)
//	PREFIX/traces/sha256/<index hex>/<key hex>.json
//	                                    prefetch traces of the image, one
//	                                    per command (s3trace.go)
//
// The image's digest is its index's: it covers the blob's digest, its
// chunks' digests, the packed object's digest and stored lengths, and the
// config, so one digest pins everything a run reads. The packed object
// about halves what a lazy run fetches (the chunks a gcc run touches pack
// to 0.54 of their size) for about half the image's size again in
// storage; pe image pull still downloads the image itself. Blobs and indexes are immutable and shared by every name under
// the prefix; only tags move. A reader trusts nothing it has not checked
// against the digest it started from.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/s3"
)

// maxTagObject bounds what is read of a tag object: a digest and a newline.
const maxTagObject = 1024

func (l s3Location) blobKey(hexDigest string) string { return l.key("blobs", "sha256", hexDigest) }

func (l s3Location) indexKey(h v1.Hash) string { return l.key("indexes", "sha256", h.Hex+".json") }

func (l s3Location) tagKey(tag string) string { return l.key(l.name, "tags", tag) }

// s3Client returns the configured client, or one from the environment.
func (o *PullOptions) s3Client() (*s3.Client, error) {
	if o.S3 != nil {
		return o.S3, nil
	}
	c, err := s3.NewFromEnv(s3.Options{})
	if err != nil {
		return nil, fmt.Errorf("configuring the S3 client: %w", err)
	}
	o.S3 = c
	return c, nil
}

// s3Error gives an S3 failure the image package's kind, so callers branch
// on ErrNotFound and ErrUnauthorized whatever the transport. The s3
// package's message already names the bucket, the key and, for a 403, the
// credentials to check.
func s3Error(err error, what string) error {
	switch {
	case errors.Is(err, s3.ErrNotFound):
		return &kindError{kind: ErrNotFound, msg: what + " not found", err: err}
	case errors.Is(err, s3.ErrAccessDenied):
		return &kindError{kind: ErrUnauthorized, msg: what, err: err}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// PushOptions configures Push and PushEROFS.
type PushOptions struct {
	// PullOptions say how the image to push is found and the S3 client
	// (PullOptions.S3); Progress also gets the upload's PhaseUpload
	// reports.
	PullOptions
	// PartSize and Concurrency tune the blob's multipart upload (see
	// s3.UploadOptions; zero values are its defaults).
	PartSize    int64
	Concurrency int
	// ChunkCodec says how the chunks are also stored packed for lazy
	// readers (blockstore.Packed): "" or ChunkCodecLZ4 for LZ4,
	// ChunkCodecNone for not at all (lazy runs then fetch the blob's raw
	// ranges, and the bucket holds the image once).
	ChunkCodec string
}

// PushOptions.ChunkCodec values: chunks packed with LZ4 (the default),
// or no packed chunks.
const (
	ChunkCodecLZ4  = blockstore.CodecLZ4
	ChunkCodecNone = "none"
)

// PushResult is what Push stored.
type PushResult struct {
	// Digest is the image's digest in the bucket: its index's sha256.
	Digest v1.Hash
	// Size is the EROFS image's size in bytes.
	Size int64
	// BlobSent is false when the bucket already had the image's blob, so
	// no byte of it was sent.
	BlobSent bool
	// Resumed is true when the blob's upload continued one an earlier,
	// interrupted push left; BytesReused of the blob were already in the
	// bucket then, and BytesSent were sent by this push.
	Resumed     bool
	BytesReused int64
	BytesSent   int64
	// PackedSize is the length of the packed chunks' object (0 when the
	// push stored none), and PackedSent is false when the bucket already
	// had it.
	PackedSize int64
	PackedSent bool
}

// Push stores the image src names (anything Get takes) in the bucket dest
// names, an s3:// reference with a tag, and returns its digest.
func (c *Cache) Push(ctx context.Context, src, dest Reference, opts PushOptions) (*PushResult, error) {
	if err := checkPushDest(dest); err != nil {
		return nil, err
	}
	img, lease, err := c.Acquire(ctx, src, opts.PullOptions)
	if err != nil {
		return nil, err
	}
	defer lease.Release()
	config, err := readSmall(filepath.Join(filepath.Dir(img.EROFSPath), "config.json"))
	if err != nil {
		return nil, fmt.Errorf("reading the config of %s: %w", src.Familiar(), err)
	}
	return PushEROFS(ctx, img.EROFSPath, config, dest, opts)
}

func checkPushDest(dest Reference) error {
	if dest.transport != TransportS3 {
		return fmt.Errorf("push destination %s: want s3://BUCKET/[PREFIX/]NAME[:TAG]", dest.Familiar())
	}
	if dest.digest != "" {
		return fmt.Errorf("push destination %s: name a tag, not a digest (the digest is the pushed image's)", dest.Familiar())
	}
	return nil
}

// DefaultEROFSConfig is the config pushed with a bare EROFS file, which
// has none: linux on this machine's architecture, no entrypoint.
func DefaultEROFSConfig() []byte {
	return []byte(`{"architecture":"` + runtime.GOARCH + `","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}`)
}

// PushEROFS stores the EROFS image file at path with the OCI config
// config in the bucket dest names. Objects the bucket already has are not
// sent again; the tag is written last, so a reader never finds a tag
// whose index or blob is missing.
func PushEROFS(ctx context.Context, path string, config []byte, dest Reference, opts PushOptions) (*PushResult, error) {
	if err := checkPushDest(dest); err != nil {
		return nil, err
	}
	o, err := opts.PullOptions.config()
	if err != nil {
		return nil, err
	}
	if _, err := v1.ParseConfigFile(bytes.NewReader(config)); err != nil {
		return nil, fmt.Errorf("the config of %s: %w", path, err)
	}
	if _, err := checkEROFS(path); err != nil {
		return nil, err
	}
	client, err := o.s3Client()
	if err != nil {
		return nil, err
	}
	ix, err := blockstore.BuildIndexFile(ctx, path, blockstore.DefaultChunkSize)
	if err != nil {
		return nil, fmt.Errorf("indexing %s: %w", path, err)
	}
	ix.Config = json.RawMessage(config)
	// Best effort: an image pe's reader cannot walk (a feature it lacks)
	// is pushed without, and its runs prefetch no metadata.
	if ix.MetadataChunks, err = metadataChunks(path, ix); err != nil {
		o.Log.Warn("pushing without the list of metadata chunks", "image", path, "error", err)
	}
	if ix.Files, err = indexFiles(path); err != nil {
		o.Log.Warn("pushing without the image's user database in the index", "image", path, "error", err)
	}
	switch opts.ChunkCodec {
	case "", ChunkCodecLZ4:
		if ix.Packed, err = packChunks(ctx, path, ix); err != nil {
			return nil, err
		}
	case ChunkCodecNone:
	default:
		return nil, fmt.Errorf("chunk codec %q: want %s or %s", opts.ChunkCodec, ChunkCodecLZ4, ChunkCodecNone)
	}
	ib, err := ix.Encode()
	if err != nil {
		return nil, fmt.Errorf("indexing %s: %w", path, err)
	}
	sum := sha256.Sum256(ib)
	res := &PushResult{Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, Size: ix.Size}
	loc, bucket := dest.s3, dest.s3.bucket
	what := dest.Familiar()

	blobKey := loc.blobKey(strings.TrimPrefix(ix.Digest, "sha256:"))
	openImage := func() (io.Reader, func(), error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		return f, func() { f.Close() }, nil
	}
	up, err := pushBlobOnce(ctx, client, bucket, blobKey, "blob", openImage, ix.Size, opts, o, what)
	if err != nil {
		return nil, err
	}
	if up != nil {
		res.BlobSent, res.Resumed, res.BytesSent, res.BytesReused = true, up.Resumed, up.BytesSent, up.BytesReused
	}
	if p := ix.Packed; p != nil {
		res.PackedSize = p.Size()
		openPacked := func() (io.Reader, func(), error) {
			f, err := os.Open(path)
			if err != nil {
				return nil, nil, err
			}
			return blockstore.NewPackedReader(ctx, f, ix, p), func() { f.Close() }, nil
		}
		key := loc.blobKey(strings.TrimPrefix(p.Digest, "sha256:"))
		up, err := pushBlobOnce(ctx, client, bucket, key, "packed chunks", openPacked, res.PackedSize, opts, o, what)
		if err != nil {
			return nil, err
		}
		res.PackedSent = up != nil
	}

	indexKey := loc.indexKey(res.Digest)
	if _, err := client.HeadObject(ctx, bucket, indexKey); errors.Is(err, s3.ErrNotFound) {
		_, err = client.PutObject(ctx, bucket, indexKey, ib, s3.PutOptions{ContentType: "application/json", IfNoneMatch: true})
		// Someone else pushing the same image wrote the same bytes.
		if err != nil && !errors.Is(err, s3.ErrExists) {
			return nil, s3Error(err, "storing the image's index")
		}
	} else if err != nil {
		return nil, s3Error(err, "checking the bucket for the image's index")
	}

	tag := append([]byte(res.Digest.String()+"\n"), ib...)
	if _, err := client.PutObject(ctx, bucket, loc.tagKey(dest.tag), tag, s3.PutOptions{ContentType: "text/plain"}); err != nil {
		return nil, s3Error(err, "storing the tag "+what)
	}
	o.Log.Info("pushed image", "reference", what, "digest", res.Digest, "bytes", ix.Size, "blob_sent", res.BlobSent,
		"resumed", res.Resumed, "bytes_sent", res.BytesSent, "bytes_reused", res.BytesReused,
		"packed_bytes", res.PackedSize, "packed_sent", res.PackedSent)
	return res, nil
}

// packChunks describes the image file's chunks packed (blockstore.Packed),
// for lazy readers.
func packChunks(ctx context.Context, path string, ix *blockstore.Index) (*blockstore.Packed, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("packing the chunks of %s: %w", path, err)
	}
	defer f.Close()
	p, err := blockstore.BuildPacked(ctx, f, ix)
	if err != nil {
		return nil, fmt.Errorf("packing the chunks of %s: %w", path, err)
	}
	return p, nil
}

// pushBlobOnce uploads the content-addressed object key (what names it in
// logs and errors: "blob") of size bytes, from the readers open returns,
// unless the bucket has it. It returns nil when nothing was sent.
func pushBlobOnce(ctx context.Context, client *s3.Client, bucket, key, kind string, open func() (io.Reader, func(), error), size int64, opts PushOptions, o *pullConfig, what string) (*s3.UploadResult, error) {
	info, err := client.HeadObject(ctx, bucket, key)
	switch {
	case err == nil && info.Size == size:
		o.Log.Info("the bucket has the image's "+kind, "key", key)
		return nil, nil
	case err == nil || errors.Is(err, s3.ErrNotFound):
		// An object of the wrong size under a content-addressed name
		// is damage: replace it.
		return pushBlob(ctx, client, bucket, key, open, size, opts, o, what)
	default:
		return nil, s3Error(err, "checking the bucket for the image's "+kind)
	}
}

// pushBlob uploads the object key of size bytes from the readers open
// returns (one per attempt, closed with its func), continuing an upload
// an interrupted push left unfinished, and returns what was sent (nil
// when another push completed the object meanwhile). Pushes of the same
// image from several machines at once may share one multipart upload or
// race to complete theirs: an upload that vanishes under us (completed or
// aborted by another push) is fine when the object is then there, and is
// started again when it is not.
func pushBlob(ctx context.Context, client *s3.Client, bucket, key string, open func() (io.Reader, func(), error), size int64, opts PushOptions, o *pullConfig, what string) (*s3.UploadResult, error) {
	const attempts = 4
	for attempt := 1; ; attempt++ {
		r, done, err := open()
		if err != nil {
			return nil, err
		}
		counter := o.newProgressCounter(what, PhaseUpload, size)
		up, err := client.UploadResumable(ctx, bucket, key, r, s3.UploadOptions{
			PartSize: opts.PartSize, Concurrency: opts.Concurrency, Progress: counter.add,
		})
		done()
		if err == nil {
			if up.ResumeError != nil {
				o.Log.Info("cannot look for an interrupted upload to resume; uploaded afresh", "key", key, "error", up.ResumeError)
			}
			if up.Resumed {
				o.Log.Info("resumed an interrupted upload", "key", key, "parts_reused", up.PartsReused, "bytes_reused", up.BytesReused)
			}
			o.progress(Progress{Reference: what, Phase: PhaseUpload, Complete: counter.done(), Total: size, Done: true})
			return up, nil
		}
		if ctx.Err() != nil {
			return nil, s3Error(err, "uploading the image to "+what+" (run the same push again to resume it)")
		}
		// Worth another try: the upload vanished or its parts did
		// (another push completed the upload we shared: NoSuchUpload,
		// InvalidPart), the server failed (versitygw answers 500 to one
		// of two Completes of the key at once) or the connection broke
		// (a server refusing a part may reset it before reading it).
		var serr *s3.Error
		again := errors.Is(err, s3.ErrNotFound) || s3.IsRetriable(err) || !errors.As(err, &serr) || serr.Code == "InvalidPart"
		if !again {
			return nil, s3Error(err, "uploading the image to "+what)
		}
		// Give a concurrent Complete the time to finish, then look.
		select {
		case <-ctx.Done():
			return nil, s3Error(err, "uploading the image to "+what+" (run the same push again to resume it)")
		case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
		}
		if info, herr := client.HeadObject(ctx, bucket, key); herr == nil && info.Size == size {
			o.Log.Info("another push completed the object", "key", key, "error", err)
			// Our upload, if still there, is of no use now.
			client.AbortUploads(ctx, bucket, key)
			o.progress(Progress{Reference: what, Phase: PhaseUpload, Complete: size, Total: size, Done: true})
			return nil, nil
		}
		if attempt == attempts {
			return nil, s3Error(err, "uploading the image to "+what+" (run the same push again to resume it)")
		}
		o.Log.Info("the upload failed or vanished; trying again", "key", key, "error", err)
	}
}

// resolveS3Tag reads the digest the tag of ref points at, and the index's
// bytes when the tag object carries them (nil when it does not, or when
// they do not match the digest: the caller then reads the index object).
func resolveS3Tag(ctx context.Context, client *s3.Client, ref Reference, log *slog.Logger) (v1.Hash, []byte, error) {
	key := ref.s3.tagKey(ref.tag)
	b, err := client.ReadAll(ctx, ref.s3.bucket, key, maxTagObject+blockstore.MaxIndexBytes)
	if err != nil {
		return v1.Hash{}, nil, s3Error(err, fmt.Sprintf("image %s (tag object s3://%s/%s)", ref.Familiar(), ref.s3.bucket, key))
	}
	h, index, err := parseTagObject(b)
	if err != nil {
		return v1.Hash{}, nil, fmt.Errorf("tag object s3://%s/%s: %w", ref.s3.bucket, key, err)
	}
	if index == nil {
		return h, nil, nil
	}
	if err := checkDigest(index, h, "the index in the tag object"); err != nil {
		log.Warn("ignoring the index a tag object carries", "tag", fmt.Sprintf("s3://%s/%s", ref.s3.bucket, key), "error", err)
		return h, nil, nil
	}
	return h, index, nil
}

// readS3TagDigest reads the digest ref's tag names with a ranged read of
// the tag object's first line only: a readiness check asks every few
// seconds, and the index the object carries after that line is of no
// use to it.
func readS3TagDigest(ctx context.Context, client *s3.Client, ref Reference) (v1.Hash, error) {
	key := ref.s3.tagKey(ref.tag)
	what := fmt.Sprintf("image %s (tag object s3://%s/%s)", ref.Familiar(), ref.s3.bucket, key)
	var head []byte
	r, err := client.ReadRange(ctx, ref.s3.bucket, key, 0, maxTagObject+1)
	switch {
	case errors.Is(err, s3.ErrInvalidRange): // an empty object
	case err != nil:
		return v1.Hash{}, s3Error(err, what)
	default:
		head, err = io.ReadAll(r)
		r.Close()
		if err != nil {
			return v1.Hash{}, s3Error(err, what)
		}
	}
	h, _, err := parseTagObject(head)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("tag object s3://%s/%s: %w", ref.s3.bucket, key, err)
	}
	return h, nil
}

// fetchS3Index reads the index h from ref's bucket and checks it against
// h.
func fetchS3Index(ctx context.Context, client *s3.Client, ref Reference, h v1.Hash) ([]byte, error) {
	bucket, key := ref.s3.bucket, ref.s3.indexKey(h)
	b, err := client.ReadAll(ctx, bucket, key, blockstore.MaxIndexBytes)
	if err != nil {
		return nil, s3Error(err, fmt.Sprintf("index of %s (s3://%s/%s)", ref.Familiar(), bucket, key))
	}
	if err := checkDigest(b, h, fmt.Sprintf("index s3://%s/%s", bucket, key)); err != nil {
		return nil, err
	}
	return b, nil
}

// parseTagObject splits a tag object into the sha256 digest of its first
// line and the index bytes after it (nil when there are none). It does
// not check the index against the digest.
func parseTagObject(b []byte) (v1.Hash, []byte, error) {
	line, index, _ := bytes.Cut(b, []byte("\n"))
	if len(line) > maxTagObject {
		return v1.Hash{}, nil, fmt.Errorf("its first line is over %d bytes, not a digest", maxTagObject)
	}
	h, err := v1.NewHash(strings.TrimSpace(string(line)))
	if err != nil || h.Algorithm != "sha256" {
		return v1.Hash{}, nil, errors.New("it does not start with a sha256 digest")
	}
	if len(bytes.TrimSpace(index)) == 0 {
		return h, nil, nil
	}
	return h, index, nil
}

// getS3 is get for an s3:// reference: the cached image when the pull
// policy allows, else the tag read again and the image downloaded whole.
func (c *Cache) getS3(ctx context.Context, ref Reference, o *pullConfig) (*CachedImage, error) {
	plat := o.platform.String()
	name := ref.String()
	rec, err := c.readRef(name)
	if err != nil {
		o.Log.Warn("ignoring an unreadable reference record", "reference", ref, "error", err)
	}
	var t refTarget
	have := false
	if rec != nil {
		t, have = rec.Platforms[plat]
		have = have && c.complete(t.Digest)
	}
	if !have && ref.digest != "" {
		if h, err := v1.NewHash(ref.digest); err == nil && c.complete(h) {
			t, have = refTarget{Digest: h}, true
		}
	}
	if have && (o.Policy == PullNever || ref.digest != "" || (o.Policy == PullMissing && c.now().Sub(t.Fetched) < o.TagTTL)) {
		return c.use(ctx, ref, t.Digest, o)
	}
	if !have && o.Policy == PullNever {
		return nil, kindErrorf(ErrNotCached, "%s (%s) is not in the image cache, and the pull policy is never", ref.Familiar(), plat)
	}
	client, err := o.s3Client()
	if err != nil {
		return nil, err
	}
	var h v1.Hash
	var inline []byte
	if ref.digest != "" {
		h, err = v1.NewHash(ref.digest)
	} else {
		h, inline, err = resolveS3Tag(ctx, client, ref, o.Log)
	}
	if err != nil {
		// As with a registry, a bucket out of reach or a tag deleted
		// there leaves the cached image usable under PullMissing.
		if have && o.Policy == PullMissing {
			o.Log.Warn("using the cached image", "reference", ref.Familiar(), "error", err)
			return c.use(ctx, ref, t.Digest, o)
		}
		return nil, err
	}
	img, err := c.ensureS3(ctx, ref, h, client, o, inline)
	if err != nil {
		return nil, err
	}
	err = c.updateRef(name, func(rec *refRecord) bool {
		rec.Local = nil
		if rec.Platforms == nil {
			rec.Platforms = map[string]refTarget{}
		}
		rec.Platforms[plat] = refTarget{Digest: h, Fetched: c.now().UTC()}
		return true
	})
	if err != nil {
		return nil, err
	}
	return img, nil
}

// ensureS3 returns the cached image h, downloading it from ref's bucket
// first when the cache lacks it. index is the image's index when the tag
// carried it (checked against h), nil to read it from the bucket.
func (c *Cache) ensureS3(ctx context.Context, ref Reference, h v1.Hash, client *s3.Client, o *pullConfig, index []byte) (*CachedImage, error) {
	if c.complete(h) {
		return c.use(ctx, ref, h, o)
	}
	loc, bucket, what := ref.s3, ref.s3.bucket, ref.Familiar()
	indexKey := loc.indexKey(h)
	ib := index
	if ib == nil {
		var err error
		if ib, err = fetchS3Index(ctx, client, ref, h); err != nil {
			return nil, err
		}
	}
	ix, err := blockstore.DecodeIndex(ib)
	if err != nil {
		return nil, fmt.Errorf("index s3://%s/%s: %w", bucket, indexKey, err)
	}
	if len(ix.Config) == 0 {
		return nil, fmt.Errorf("index s3://%s/%s has no image config", bucket, indexKey)
	}
	config := []byte(ix.Config)
	cfg, err := v1.ParseConfigFile(bytes.NewReader(config))
	if err != nil {
		return nil, fmt.Errorf("the config in index s3://%s/%s: %w", bucket, indexKey, err)
	}
	platform, err := checkConfigPlatform(cfg, o.platform, what)
	if err != nil {
		return nil, err
	}
	if o.MaxSize > 0 && ix.Size > o.MaxSize {
		return nil, kindErrorf(ErrTooLarge, "%s is too large: %d bytes, over the limit of %d bytes (--max-image-size)", what, ix.Size, o.MaxSize)
	}
	if o.Convert != nil {
		done, err := o.Convert(ctx)
		if err != nil {
			return nil, err
		}
		defer done()
	}
	lock, err := c.lockImage(ctx, h, o)
	if err != nil {
		return nil, err
	}
	defer lock.unlockRemove()
	if c.complete(h) {
		return c.useLocked(ref.String(), h)
	}
	meta := imageMeta{References: []string{ref.String()}, Platform: platform}
	err = c.writeImageFile(ctx, h, config, ib, &meta, func(f *os.File, _ string) error {
		return downloadS3Blob(ctx, client, bucket, loc.blobKey(strings.TrimPrefix(ix.Digest, "sha256:")), ix, f, o, what)
	})
	if err != nil {
		return nil, err
	}
	img, err := c.useLocked(ref.String(), h)
	if err != nil {
		return nil, err
	}
	img.Converted = true
	return img, nil
}

// downloadS3Blob copies the blob ix describes into f, checking each
// chunk against the index as it arrives and the whole against ix.Digest.
func downloadS3Blob(ctx context.Context, client *s3.Client, bucket, key string, ix *blockstore.Index, f io.Writer, o *pullConfig, what string) error {
	obj := fmt.Sprintf("s3://%s/%s", bucket, key)
	rc, info, err := client.GetObject(ctx, bucket, key)
	if err != nil {
		return s3Error(err, fmt.Sprintf("image blob of %s (%s)", what, obj))
	}
	defer rc.Close()
	if info.Size >= 0 && info.Size != ix.Size {
		return kindErrorf(ErrDigestMismatch, "%s has %d bytes, its index says %d", obj, info.Size, ix.Size)
	}
	counter := o.newProgressCounter(what, PhaseDownload, ix.Size)
	whole := sha256.New()
	buf := make([]byte, ix.ChunkSize)
	r := ctxReader{ctx, rc}
	for i, want := range ix.Chunks {
		_, n := ix.ChunkRange(i)
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			if ctxErr := context.Cause(ctx); ctxErr != nil {
				return ctxErr
			}
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return kindErrorf(ErrDigestMismatch, "%s is shorter than its index says (%d bytes)", obj, ix.Size)
			}
			return fmt.Errorf("reading %s: %w", obj, err)
		}
		sum := sha256.Sum256(buf[:n])
		if hex.EncodeToString(sum[:]) != want {
			return kindErrorf(ErrDigestMismatch, "chunk %d of %s does not match its sha256 in the index: the object is corrupt", i, obj)
		}
		whole.Write(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			return err
		}
		counter.add(int64(n))
	}
	if n, _ := r.Read(buf[:1]); n > 0 {
		return kindErrorf(ErrDigestMismatch, "%s is longer than its index says (%d bytes)", obj, ix.Size)
	}
	if got := "sha256:" + hex.EncodeToString(whole.Sum(nil)); got != ix.Digest {
		return kindErrorf(ErrDigestMismatch, "%s has digest %s, its index says %s", obj, got, ix.Digest)
	}
	o.progress(Progress{Reference: what, Phase: PhaseDownload, Complete: ix.Size, Total: ix.Size, Done: true})
	return nil
}

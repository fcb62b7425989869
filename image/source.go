package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	kgzip "github.com/klauspost/compress/gzip"

	"github.com/pe-project/pe/blockstore/s3"
)

// PullPolicy says when a reference is looked up again in its registry
// rather than answered from the cache, like docker's --pull.
type PullPolicy string

// The pull policies.
const (
	// PullMissing (the default, also spelled "") uses the cache when it
	// has the image: a tag recorded less than PullOptions.TagTTL ago is not
	// looked up again; an older one is checked with one HEAD request, and
	// if the registry cannot be reached the cached image is used with a
	// warning. Digest references and imported images never go to the
	// network once cached.
	PullMissing PullPolicy = "missing"
	// PullAlways looks the reference up every time (pe image pull) and
	// fetches what changed.
	PullAlways PullPolicy = "always"
	// PullNever uses only the cache, however old the record, and fails with
	// ErrNotCached when the image is not there.
	PullNever PullPolicy = "never"
)

// ParsePullPolicy parses "always", "missing" or "never".
func ParsePullPolicy(s string) (PullPolicy, error) {
	switch p := PullPolicy(s); p {
	case PullAlways, PullMissing, PullNever:
		return p, nil
	}
	return "", fmt.Errorf("pull policy %q: want always, missing or never", s)
}

// DefaultTagTTL is how long a tag → digest record is trusted before the
// registry is asked again under PullMissing. An hour keeps `pe run` off the
// network for a working session while still noticing a moved "latest" the
// same day.
const DefaultTagTTL = time.Hour

// PullOptions configures how images are resolved and fetched.
type PullOptions struct {
	// Platform is the os/arch[/variant] chosen from multi-platform images;
	// "" means DefaultPlatform().
	Platform string
	// Policy says when the registry is asked again; "" means PullMissing.
	Policy PullPolicy
	// TagTTL is how long a tag record is fresh under PullMissing; 0 means
	// DefaultTagTTL.
	TagTTL time.Duration
	// Insecure talks plain HTTP to the registry (a local registry). Hosts
	// named localhost or with loopback and private addresses use HTTP
	// anyway.
	Insecure bool
	// MaxSize refuses images whose compressed layers add up to more than
	// this many bytes, before any layer is downloaded; 0 means no limit.
	MaxSize int64
	// Limits bound what the layers unpack to while they are converted
	// (zero fields: no limit). A conversion that goes over one stops with
	// a *LimitError, and nothing of it stays in the cache.
	Limits Limits
	// Convert, when set, is called before an image the cache lacks is
	// fetched and converted, to bound how many conversions run at once: it
	// may wait, or refuse with an error that Get then returns; done is
	// called when the conversion is over. Cache hits never call it.
	Convert func(ctx context.Context) (done func(), err error)
	// Keychain finds registry credentials; nil means authn.DefaultKeychain
	// (docker's config.json and credential helpers; anonymous otherwise).
	Keychain authn.Keychain
	// Transport carries the HTTP requests; nil means ggcr's default, which
	// honours the proxy environment variables.
	Transport http.RoundTripper
	// S3 talks to the object store of s3:// references; nil means a client
	// configured from the environment (s3.NewFromEnv) when one is needed.
	S3 *s3.Client
	// UserAgent is sent to registries, as "pe/VERSION".
	UserAgent string
	// Progress, when set, is told how downloads and conversions advance.
	Progress func(Progress)
	// Log receives what pe does (resolutions, downloads, conversions);
	// nil discards it.
	Log *slog.Logger
}

// Phase is a step of getting an image.
type Phase string

// The phases Progress reports.
const (
	// PhaseDownload is fetching layer blobs from a registry.
	PhaseDownload Phase = "download"
	// PhaseConvert is flattening the layers into the EROFS image.
	PhaseConvert Phase = "convert"
	// PhaseUpload is sending an image to an S3 bucket (pe image push).
	PhaseUpload Phase = "upload"
)

// Progress is how far a phase of getting Reference has come: Complete of
// Total bytes (compressed layer bytes; Total is -1 when unknown). The last
// report of a phase has Done set.
type Progress struct {
	Reference string
	Phase     Phase
	Complete  int64
	Total     int64
	Done      bool
}

// DefaultPlatform is the platform images are chosen for when none is
// given: linux on the architecture pe was built for ("linux/amd64").
func DefaultPlatform() string { return "linux/" + runtime.GOARCH }

// parsePlatform parses "os/arch[/variant]".
func parsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		s = DefaultPlatform()
	}
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return v1.Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], such as linux/amd64 or linux/arm/v7", s)
	}
	return *p, nil
}

// pullConfig is PullOptions with the defaults filled in.
type pullConfig struct {
	PullOptions
	platform v1.Platform
}

func (o PullOptions) config() (*pullConfig, error) {
	p, err := parsePlatform(o.Platform)
	if err != nil {
		return nil, err
	}
	if o.Policy == "" {
		o.Policy = PullMissing
	}
	if _, err := ParsePullPolicy(string(o.Policy)); err != nil {
		return nil, err
	}
	if o.TagTTL == 0 {
		o.TagTTL = DefaultTagTTL
	}
	if o.Keychain == nil {
		o.Keychain = authn.DefaultKeychain
	}
	if o.UserAgent == "" {
		o.UserAgent = "pe"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.MaxSize < 0 {
		return nil, fmt.Errorf("maximum image size %d is negative", o.MaxSize)
	}
	if err := o.Limits.check(); err != nil {
		return nil, err
	}
	return &pullConfig{PullOptions: o, platform: p}, nil
}

func (o *pullConfig) progress(p Progress) {
	if o.Progress != nil {
		o.Progress(p)
	}
}

// progressCounter adds up the bytes of one phase that concurrent readers
// report, and reports the running total.
type progressCounter struct {
	o     *pullConfig
	ref   string
	phase Phase
	total int64 // -1: unknown

	mu  sync.Mutex
	sum int64
}

func (o *pullConfig) newProgressCounter(ref string, phase Phase, total int64) *progressCounter {
	return &progressCounter{o: o, ref: ref, phase: phase, total: total}
}

// add counts n more bytes and reports the total, at most the known total
// (Flatten may read a layer twice).
func (p *progressCounter) add(n int64) {
	p.mu.Lock()
	p.sum += n
	d := p.sum
	p.mu.Unlock()
	if p.total >= 0 {
		d = min(d, p.total)
	}
	p.o.progress(Progress{Reference: p.ref, Phase: p.phase, Complete: d, Total: p.total})
}

// done is the bytes counted so far.
func (p *progressCounter) done() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sum
}

// source is an image resolved to the manifest of one platform: what the
// cache needs to know whether it has the image, and how to read its layers.
type source struct {
	ref Reference
	// digest keys the image in the cache: the manifest digest (registry,
	// OCI layout), the image ID, i.e. the config digest (docker archive),
	// or the digest of the synthesized manifest (import).
	digest v1.Hash
	// top is what a registry reference resolved to (an index or the
	// manifest itself), to notice later with a HEAD request that a tag has
	// not moved. Zero for other sources.
	top v1.Hash
	// platform is the platform of the chosen manifest, "os/arch[/variant]".
	platform string
	// manifest and config are the raw bytes, config verified against its
	// digest.
	manifest []byte
	config   []byte
	layers   []*layer
	// size is what counts against PullOptions.MaxSize: the sum of
	// compressed layer sizes (for a docker archive, the archive's size).
	size int64
}

// layer is one layer of a source, base first.
type layer struct {
	// digest and size describe the blob as its manifest does: compressed
	// digest and size, or for docker archives the uncompressed diff ID and
	// -1.
	digest    v1.Hash
	size      int64
	mediaType types.MediaType
	// open returns the blob's content. It need not verify it: the cache
	// wraps it in a verifyReader.
	open func() (io.ReadCloser, error)
	// fetch, for registry layers, streams the blob from the registry into
	// the cache (ggcr verifies it too); open then reads the cached copy.
	// Its errors are ggcr's, unwrapped: the cache passes them to
	// registryError with the layer's name.
	fetch func() (io.ReadCloser, error)
	// cached is the path of the cached copy open reads, for registry
	// layers; "" otherwise.
	cached string
}

// checkLayerMediaType refuses layers pe cannot flatten. Flatten recognises
// the compression itself, so the media type only rules out what is not a
// tar stream at all.
func checkLayerMediaType(mt types.MediaType, d v1.Hash) error {
	switch mt {
	case types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer, types.DockerLayer, types.DockerUncompressedLayer,
		types.OCIRestrictedLayer, types.OCIUncompressedRestrictedLayer, "":
		return nil
	case types.DockerForeignLayer:
		return kindErrorf(ErrUnsupported, "layer %s is a foreign layer (Windows images are not supported)", d)
	}
	return kindErrorf(ErrUnsupported, "layer %s has media type %q, which is not a container image layer", d, mt)
}

// checkManifest checks that m describes a container image pe can use.
func checkManifest(m *v1.Manifest, what string) error {
	if mt := m.Config.MediaType; mt != "" && !mt.IsConfig() {
		return kindErrorf(ErrUnsupported, "%s is not a container image (its config has media type %q)", what, mt)
	}
	for _, l := range m.Layers {
		if err := checkLayerMediaType(l.MediaType, l.Digest); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil
}

// checkDigest verifies that b has digest want.
func checkDigest(b []byte, want v1.Hash, what string) error {
	if want.Algorithm != "sha256" {
		return kindErrorf(ErrUnsupported, "%s has a %s digest; only sha256 is supported", what, want.Algorithm)
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != want.Hex {
		return kindErrorf(ErrDigestMismatch, "%s: content has digest sha256:%s, want %s", what, got, want)
	}
	return nil
}

// platformOf returns the platform of descriptor d, "" if it has none.
func platformOf(d v1.Descriptor) string {
	if d.Platform == nil {
		return ""
	}
	return d.Platform.String()
}

// platformMatches reports whether have is the platform want asks for. An
// unset variant matches any; arm64's "v8" is its only variant.
func platformMatches(have *v1.Platform, want v1.Platform) bool {
	if have == nil || have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	if want.Variant == "" || have.Variant == want.Variant {
		return true
	}
	return want.Architecture == "arm64" && (have.Variant == "" || have.Variant == "v8") && want.Variant == "v8"
}

// choosePlatform picks the manifest for want from an index, or fails with
// ErrPlatformNotFound listing what the index has.
func choosePlatform(im *v1.IndexManifest, want v1.Platform, what string) (v1.Descriptor, error) {
	var images []v1.Descriptor
	for _, d := range im.Manifests {
		if d.MediaType.IsImage() || d.MediaType.IsIndex() || d.MediaType == "" {
			images = append(images, d)
		}
	}
	for _, d := range images {
		if platformMatches(d.Platform, want) {
			return d, nil
		}
	}
	// An index without platforms (a layout written without them) whose
	// only image is the one.
	if len(images) == 1 && images[0].Platform == nil {
		return images[0], nil
	}
	var have []string
	for _, d := range images {
		// Skip buildkit's attestation manifests ("unknown/unknown").
		if p := platformOf(d); p != "" && d.Platform.OS != "unknown" && !slices.Contains(have, p) {
			have = append(have, p)
		}
	}
	if len(have) == 0 {
		return v1.Descriptor{}, kindErrorf(ErrPlatformNotFound, "%s has no image for %s", what, want)
	}
	return v1.Descriptor{}, kindErrorf(ErrPlatformNotFound, "%s has no image for %s; it has %s (choose one with --platform)",
		what, want, strings.Join(have, ", "))
}

// checkConfigPlatform refuses a single-platform image built for another
// platform than the one asked for, as docker does, and returns the
// image's platform.
func checkConfigPlatform(cfg *v1.ConfigFile, want v1.Platform, what string) (string, error) {
	if cfg.OS == "" || cfg.Architecture == "" {
		return want.String(), nil
	}
	have := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if !platformMatches(&have, want) {
		return "", kindErrorf(ErrPlatformNotFound, "%s is an image for %s, not %s (choose it with --platform %s)",
			what, have, want, have)
	}
	return have.String(), nil
}

// verifyReader checks, as the stream is read, that a blob has the digest
// and size it should. At the end of the stream it returns an
// ErrDigestMismatch error instead of io.EOF when they differ, so whoever
// reads the stream to its end sees the error.
type verifyReader struct {
	r    io.Reader
	c    io.Closer
	what string
	want v1.Hash
	size int64 // -1: unknown
	h    hash.Hash
	n    int64
	// done is set once the whole stream was read and matched.
	done bool
	err  error
}

func newVerifyReader(rc io.ReadCloser, what string, want v1.Hash, size int64) (*verifyReader, error) {
	if want.Algorithm != "sha256" {
		rc.Close()
		return nil, kindErrorf(ErrUnsupported, "%s has a %s digest; only sha256 is supported", what, want.Algorithm)
	}
	return &verifyReader{r: rc, c: rc, what: what, want: want, size: size, h: sha256.New()}, nil
}

func (v *verifyReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.size >= 0 && v.n > v.size {
		v.err = kindErrorf(ErrDigestMismatch, "%s: more than the %d bytes its manifest gives", v.what, v.size)
		return 0, v.err
	}
	if err == io.EOF {
		if v.size >= 0 && v.n != v.size {
			v.err = kindErrorf(ErrDigestMismatch, "%s: %d bytes, want %d (truncated)", v.what, v.n, v.size)
			return n, v.err
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			v.err = kindErrorf(ErrDigestMismatch, "%s: content has digest sha256:%s, want %s", v.what, got, v.want)
			return n, v.err
		}
		v.done = true
	} else if err != nil {
		v.err = fmt.Errorf("reading %s: %w", v.what, err)
		return n, v.err
	}
	return n, err
}

func (v *verifyReader) Close() error { return v.c.Close() }

// checkDone returns an error unless the stream was read to its end and
// verified.
func (v *verifyReader) checkDone() error {
	if v.done {
		return nil
	}
	if v.err != nil {
		return v.err
	}
	return errors.New(v.what + " was not read to its end, so its digest was not verified")
}

// countReader reports the bytes read through it.
type countReader struct {
	r   io.Reader
	add func(int64)
}

func (c countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.add(int64(n))
	}
	return n, err
}

// gzipMagicBytes start a gzip stream.
var gzipMagicBytes = []byte{0x1f, 0x8b}

// fastGunzip returns rc decompressed when it is a gzip stream, and rc as
// it is otherwise (Flatten recognises the other compressions itself).
//
// Flatten would decompress gzip with compress/gzip, which took 92% of the
// CPU time of converting an image of gzip layers; klauspost/compress's
// gzip reader is about 1.6 times as fast (scripts/bench-image.sh). This
// belongs in the shared decompressor of tar.go, where it would serve AddTar
// too; until it moves there, image layers take this path.
//
// As AddTar does, bytes after the last gzip member that are not another
// member end the stream rather than fail it. Close reads what the
// decompressor left of rc, so that a verifying rc sees all of it.
func fastGunzip(rc io.ReadCloser) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(rc, 64<<10)
	if magic, _ := br.Peek(len(gzipMagicBytes)); !bytes.Equal(magic, gzipMagicBytes) {
		return readCloser{br, rc}, nil
	}
	zr, err := kgzip.NewReader(br)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("reading gzip header: %w", err)
	}
	return &gunzipReader{zr: zr, rest: br, c: rc}, nil
}

type gunzipReader struct {
	zr   *kgzip.Reader
	rest io.Reader
	c    io.Closer
}

func (g *gunzipReader) Read(p []byte) (int, error) {
	n, err := g.zr.Read(p)
	if errors.Is(err, kgzip.ErrHeader) {
		// Padding after the last member, as GNU tar allows.
		return n, io.EOF
	}
	if err != nil && err != io.EOF {
		err = fmt.Errorf("gzip: %w", err)
	}
	return n, err
}

func (g *gunzipReader) Close() error {
	_, err := io.Copy(io.Discard, g.rest)
	if cerr := g.c.Close(); err == nil {
		err = cerr
	}
	return err
}

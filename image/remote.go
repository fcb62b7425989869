package image

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// retryBackoff is how registry requests are retried on 408, 429, 5xx and
// network errors: after 1 s, 3 s, 9 s. Tests shorten it.
var retryBackoff = remote.Backoff{Duration: time.Second, Factor: 3, Jitter: 0.1, Steps: 4}

// retryStatusCodes are the HTTP statuses worth retrying: timeouts, rate
// limits and server errors.
var retryStatusCodes = []int{
	http.StatusRequestTimeout,
	http.StatusTooManyRequests,
	http.StatusInternalServerError,
	http.StatusBadGateway,
	http.StatusServiceUnavailable,
	http.StatusGatewayTimeout,
}

// remoteOptions returns ggcr's options for a registry request.
func remoteOptions(ctx context.Context, o *pullConfig) []remote.Option {
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(o.Keychain),
		remote.WithUserAgent(o.UserAgent),
		remote.WithPlatform(o.platform),
		remote.WithRetryBackoff(retryBackoff),
		remote.WithRetryStatusCodes(retryStatusCodes...),
	}
	if o.Transport != nil {
		opts = append(opts, remote.WithTransport(o.Transport))
	}
	return opts
}

// headRemote returns the digest the reference points to now, with one HEAD
// request.
func headRemote(ctx context.Context, ref Reference, o *pullConfig) (v1.Hash, error) {
	n, err := ref.registryName(o.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	d, err := remote.Head(n, remoteOptions(ctx, o)...)
	if err != nil {
		return v1.Hash{}, registryError("resolving", ref.String(), err)
	}
	return d.Digest, nil
}

// registryTransport reads registry references. find fetches the manifest
// (choosing the platform from an index) and config fetches the config;
// layers are fetched later, and only if the cache does not have the
// image.
type registryTransport struct {
	ctx  context.Context
	ref  Reference
	what string
	o    *pullConfig
	img  v1.Image // set by find
}

func (t *registryTransport) find(src *source) error {
	what := t.what
	n, err := t.ref.registryName(t.o.Insecure)
	if err != nil {
		return err
	}
	opts := remoteOptions(t.ctx, t.o)
	desc, err := remote.Get(n, opts...)
	if err != nil {
		return registryError("resolving", what, err)
	}
	src.top = desc.Digest
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return fmt.Errorf("reading index of %s: %w", what, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return fmt.Errorf("reading index of %s: %w", what, err)
		}
		child, err := choosePlatform(im, t.o.platform, what)
		if err != nil {
			return err
		}
		if !child.MediaType.IsImage() {
			return kindErrorf(ErrUnsupported, "%s: the %s entry of its index is a %q, not an image manifest", what, platformOf(child), child.MediaType)
		}
		if t.img, err = remote.Image(n.Context().Digest(child.Digest.String()), opts...); err != nil {
			return registryError("resolving", fmt.Sprintf("%s (%s)", what, platformOf(child)), err)
		}
		src.platform = platformOf(child)
	case desc.MediaType.IsImage():
		if t.img, err = desc.Image(); err != nil {
			return fmt.Errorf("reading manifest of %s: %w", what, err)
		}
	case desc.MediaType.IsSchema1():
		return kindErrorf(ErrUnsupported, "%s has an old schema 1 manifest, which pe does not read", what)
	default:
		return kindErrorf(ErrUnsupported, "%s is a %q, not a container image", what, desc.MediaType)
	}
	if src.manifest, err = t.img.RawManifest(); err != nil {
		return registryError("reading", "manifest of "+what, err)
	}
	if src.digest, err = t.img.Digest(); err != nil {
		return fmt.Errorf("reading manifest of %s: %w", what, err)
	}
	return nil
}

func (t *registryTransport) hasManifest() bool { return true }

func (t *registryTransport) config(m *v1.Manifest) ([]byte, error) {
	b, err := t.img.RawConfigFile()
	if err != nil {
		return nil, registryError("fetching", "config of "+t.what, err)
	}
	if err := checkDigest(b, m.Config.Digest, "config of "+t.what); err != nil {
		return nil, err
	}
	return b, nil
}

func (t *registryTransport) layers(src *source, m *v1.Manifest, _ *v1.ConfigFile) ([]*layer, error) {
	var layers []*layer
	for _, d := range m.Layers {
		src.size += d.Size
		digest := d.Digest
		layers = append(layers, &layer{
			digest:    d.Digest,
			size:      d.Size,
			mediaType: d.MediaType,
			fetch: func() (io.ReadCloser, error) {
				l, err := t.img.LayerByDigest(digest)
				if err != nil {
					return nil, err
				}
				return l.Compressed()
			},
		})
	}
	return layers, nil
}

// remoteLayer returns a layer of a registry repository by digest. Its
// errors are ggcr's, for the caller to pass to registryError.
func remoteLayer(ctx context.Context, d name.Digest, o *pullConfig) (v1.Layer, error) {
	return remote.Layer(d, remoteOptions(ctx, o)...)
}

package image

import (
	"bytes"
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

// resolveRemote fetches the manifest (choosing the platform from an index)
// and the config of a registry image. Layers are fetched later, and only if
// the cache does not have the image.
func resolveRemote(ctx context.Context, ref Reference, o *pullConfig) (*source, error) {
	n, err := ref.registryName(o.Insecure)
	if err != nil {
		return nil, err
	}
	what := ref.String()
	opts := remoteOptions(ctx, o)
	desc, err := remote.Get(n, opts...)
	if err != nil {
		return nil, registryError("resolving", what, err)
	}
	src := &source{ref: ref, top: desc.Digest}
	var img v1.Image
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, fmt.Errorf("reading index of %s: %w", what, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("reading index of %s: %w", what, err)
		}
		child, err := choosePlatform(im, o.platform, what)
		if err != nil {
			return nil, err
		}
		if !child.MediaType.IsImage() {
			return nil, kindErrorf(ErrUnsupported, "%s: the %s entry of its index is a %q, not an image manifest", what, platformOf(child), child.MediaType)
		}
		if img, err = remote.Image(n.Context().Digest(child.Digest.String()), opts...); err != nil {
			return nil, registryError("resolving", fmt.Sprintf("%s (%s)", what, platformOf(child)), err)
		}
		src.platform = platformOf(child)
	case desc.MediaType.IsImage():
		if img, err = desc.Image(); err != nil {
			return nil, fmt.Errorf("reading manifest of %s: %w", what, err)
		}
	case desc.MediaType.IsSchema1():
		return nil, kindErrorf(ErrUnsupported, "%s has an old schema 1 manifest, which pe does not read", what)
	default:
		return nil, kindErrorf(ErrUnsupported, "%s is a %q, not a container image", what, desc.MediaType)
	}

	if src.manifest, err = img.RawManifest(); err != nil {
		return nil, registryError("reading", "manifest of "+what, err)
	}
	if src.digest, err = img.Digest(); err != nil {
		return nil, fmt.Errorf("reading manifest of %s: %w", what, err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(src.manifest))
	if err != nil {
		return nil, fmt.Errorf("reading manifest of %s: %w", what, err)
	}
	if err := checkManifest(m, what); err != nil {
		return nil, err
	}
	if src.config, err = img.RawConfigFile(); err != nil {
		return nil, registryError("fetching", "config of "+what, err)
	}
	if err := checkDigest(src.config, m.Config.Digest, "config of "+what); err != nil {
		return nil, err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(src.config))
	if err != nil {
		return nil, fmt.Errorf("reading config of %s: %w", what, err)
	}
	if src.platform == "" {
		if src.platform, err = checkConfigPlatform(cfg, o.platform, what); err != nil {
			return nil, err
		}
	}
	for _, d := range m.Layers {
		src.size += d.Size
		digest := d.Digest
		src.layers = append(src.layers, &layer{
			digest:    d.Digest,
			size:      d.Size,
			mediaType: d.MediaType,
			fetch: func() (io.ReadCloser, error) {
				l, err := img.LayerByDigest(digest)
				if err != nil {
					return nil, err
				}
				return l.Compressed()
			},
		})
	}
	return src, nil
}

// remoteLayer returns a layer of a registry repository by digest. Its
// errors are ggcr's, for the caller to pass to registryError.
func remoteLayer(ctx context.Context, d name.Digest, o *pullConfig) (v1.Layer, error) {
	return remote.Layer(d, remoteOptions(ctx, o)...)
}

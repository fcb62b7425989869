package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// imageTransport is where the images of one kind of reference come from: a
// registry (remote.go), an OCI layout directory (layout.go) or a docker
// archive (archive.go), as go-containerregistry splits remote, layout and
// tarball. An imageTransport knows how to find an image and read its parts;
// resolve runs the steps they all share (the manifest's checks, the
// config, the platform check) once, between them.
type imageTransport interface {
	// find locates the image the reference names for the platform and
	// fills src's digest and manifest, and its top, platform (when chosen
	// from an index) and size where the transport knows them then.
	find(src *source) error
	// hasManifest reports whether src.manifest is an OCI image manifest
	// resolve should parse and check; a docker archive has none.
	hasManifest() bool
	// config returns the raw config m names (m is nil without a
	// manifest), verified against its digest.
	config(m *v1.Manifest) ([]byte, error)
	// layers returns the image's layers, base first, and adds what counts
	// against PullOptions.MaxSize to src.size.
	layers(src *source, m *v1.Manifest, cfg *v1.ConfigFile) ([]*layer, error)
}

// transportFor returns the transport of ref.
func transportFor(ctx context.Context, ref Reference, o *pullConfig) (imageTransport, error) {
	what := ref.String()
	switch ref.transport {
	case TransportRegistry:
		return &registryTransport{ctx: ctx, ref: ref, what: what, o: o}, nil
	case TransportOCI:
		return &layoutTransport{ref: ref, dir: ref.path, what: what, o: o}, nil
	case TransportDockerArchive:
		return &archiveTransport{ref: ref, what: what}, nil
	case TransportS3:
		// Get takes s3:// images through getS3; only an import's base
		// comes here, and it needs layers an EROFS image does not have.
		return nil, kindErrorf(ErrUnsupported, "%s is an EROFS image in a bucket, without layers: an import's base must come from a registry, an OCI layout or a docker archive", what)
	}
	return nil, errors.New("no image reference given")
}

// resolve finds the image ref names for the configured platform: its
// manifest, its config and its layers (not yet read).
func resolve(ctx context.Context, ref Reference, o *pullConfig) (*source, error) {
	t, err := transportFor(ctx, ref, o)
	if err != nil {
		return nil, err
	}
	what := ref.String()
	src := &source{ref: ref}
	if err := t.find(src); err != nil {
		return nil, err
	}
	var m *v1.Manifest
	if t.hasManifest() {
		if m, err = v1.ParseManifest(bytes.NewReader(src.manifest)); err != nil {
			return nil, fmt.Errorf("reading manifest %s of %s: %w", src.digest, what, err)
		}
		if err := checkManifest(m, what); err != nil {
			return nil, err
		}
	}
	if src.config, err = t.config(m); err != nil {
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
	if src.layers, err = t.layers(src, m, cfg); err != nil {
		return nil, err
	}
	return src, nil
}

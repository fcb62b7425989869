package image

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// refNameAnnotation holds an image's tag in an OCI layout's index.json.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// maxManifestSize bounds the manifests and configs read into memory, as
// registries do (4 MiB for manifests; configs are far smaller in
// practice, but some carry long histories).
const maxManifestSize = 16 << 20

// layoutTransport reads oci: references, images in an OCI layout
// directory. The layout's blobs are read in place: they are not copied
// into the cache, and are verified against their digests as they are read.
type layoutTransport struct {
	ref       Reference
	dir, what string
	o         *pullConfig
}

// find picks the image index.json holds that the reference asks for, and
// its platform's manifest when that is an index.
func (t *layoutTransport) find(src *source) error {
	dir, what := t.dir, t.what
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		if _, derr := os.Stat(dir); derr != nil {
			return &kindError{kind: ErrNotFound, msg: "OCI layout " + dir + " not found", err: derr}
		}
		return fmt.Errorf("%s is not an OCI image layout (it has no oci-layout file)", dir)
	}
	b, err := readSmall(filepath.Join(dir, "index.json"))
	if err != nil {
		return fmt.Errorf("reading OCI layout %s: %w", dir, err)
	}
	im, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("reading OCI layout %s: index.json: %w", dir, err)
	}
	d, err := chooseLayoutEntry(dir, im, t.ref)
	if err != nil {
		return err
	}
	if d.MediaType.IsIndex() {
		ib, err := readLayoutBlob(dir, d.Digest, what)
		if err != nil {
			return err
		}
		child, err := v1.ParseIndexManifest(bytes.NewReader(ib))
		if err != nil {
			return fmt.Errorf("reading index %s of %s: %w", d.Digest, what, err)
		}
		if d, err = choosePlatform(child, t.o.platform, what); err != nil {
			return err
		}
		src.platform = platformOf(d)
	}
	if !d.MediaType.IsImage() {
		return kindErrorf(ErrUnsupported, "%s: %s is a %q, not an image manifest", what, d.Digest, d.MediaType)
	}
	src.digest = d.Digest
	src.manifest, err = readLayoutBlob(dir, d.Digest, what)
	return err
}

func (t *layoutTransport) hasManifest() bool { return true }

func (t *layoutTransport) config(m *v1.Manifest) ([]byte, error) {
	return readLayoutBlob(t.dir, m.Config.Digest, t.what)
}

func (t *layoutTransport) layers(src *source, m *v1.Manifest, _ *v1.ConfigFile) ([]*layer, error) {
	var layers []*layer
	for _, l := range m.Layers {
		src.size += l.Size
		path := layoutBlobPath(t.dir, l.Digest)
		layers = append(layers, &layer{
			digest:    l.Digest,
			size:      l.Size,
			mediaType: l.MediaType,
			open: func() (io.ReadCloser, error) {
				f, err := os.Open(path)
				if errors.Is(err, fs.ErrNotExist) {
					return nil, kindErrorf(ErrNotFound, "layer %s of %s is missing from the layout", l.Digest, t.what)
				}
				return f, err
			},
		})
	}
	return layers, nil
}

// chooseLayoutEntry picks the descriptor of index.json the reference asks
// for: by digest, by tag, or the only one.
func chooseLayoutEntry(dir string, im *v1.IndexManifest, ref Reference) (v1.Descriptor, error) {
	what := ref.String()
	switch {
	case ref.digest != "":
		for _, d := range im.Manifests {
			if d.Digest.String() == ref.digest {
				return d, nil
			}
		}
		// Not listed in index.json: a manifest of a nested index, say.
		h, err := v1.NewHash(ref.digest)
		if err != nil {
			return v1.Descriptor{}, err
		}
		b, err := readLayoutBlob(dir, h, what)
		if err != nil {
			return v1.Descriptor{}, err
		}
		return v1.Descriptor{Digest: h, Size: int64(len(b)), MediaType: sniffMediaType(b)}, nil
	case ref.tag != "":
		var found []v1.Descriptor
		for _, d := range im.Manifests {
			if d.Annotations[refNameAnnotation] == ref.tag {
				found = append(found, d)
			}
		}
		if len(found) == 0 {
			// Some tools record a whole reference ("docker.io/x/y:tag").
			for _, d := range im.Manifests {
				if n := d.Annotations[refNameAnnotation]; strings.HasSuffix(n, ":"+ref.tag) {
					found = append(found, d)
				}
			}
		}
		switch len(found) {
		case 0:
			return v1.Descriptor{}, kindErrorf(ErrNotFound, "%s not found: the layout has no image tagged %q%s", what, ref.tag, layoutTags(im))
		case 1:
			return found[0], nil
		}
		return v1.Descriptor{}, fmt.Errorf("%s is ambiguous: %d images in the layout are tagged %q; choose one with oci:%s@DIGEST",
			what, len(found), ref.tag, dir)
	}
	switch len(im.Manifests) {
	case 0:
		return v1.Descriptor{}, kindErrorf(ErrNotFound, "%s: the layout holds no image", what)
	case 1:
		return im.Manifests[0], nil
	}
	return v1.Descriptor{}, fmt.Errorf("%s holds %d images: choose one with oci:%s:TAG or oci:%s@DIGEST%s",
		what, len(im.Manifests), dir, dir, layoutTags(im))
}

// layoutTags lists the tags of a layout for an error message.
func layoutTags(im *v1.IndexManifest) string {
	var tags []string
	for _, d := range im.Manifests {
		if n := d.Annotations[refNameAnnotation]; n != "" {
			tags = append(tags, n)
		}
	}
	if len(tags) == 0 {
		return ""
	}
	sort.Strings(tags)
	return " (tags: " + strings.Join(tags, ", ") + ")"
}

// sniffMediaType tells an index from a manifest by their JSON.
func sniffMediaType(b []byte) types.MediaType {
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if json.Unmarshal(b, &probe) != nil {
		return ""
	}
	switch {
	case probe.MediaType != "":
		return probe.MediaType
	case probe.Manifests != nil:
		return types.OCIImageIndex
	}
	return types.OCIManifestSchema1
}

func layoutBlobPath(dir string, h v1.Hash) string {
	return filepath.Join(dir, "blobs", h.Algorithm, h.Hex)
}

// readLayoutBlob reads a small blob (index, manifest, config) of a layout
// and verifies its digest.
func readLayoutBlob(dir string, h v1.Hash, what string) ([]byte, error) {
	b, err := readSmall(layoutBlobPath(dir, h))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, kindErrorf(ErrNotFound, "%s: blob %s is missing from the layout", what, h)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := checkDigest(b, h, fmt.Sprintf("blob %s of %s", h, what)); err != nil {
		return nil, err
	}
	return b, nil
}

// readSmall reads a file of at most maxManifestSize bytes.
func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifestSize {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxManifestSize)
	}
	return b, nil
}

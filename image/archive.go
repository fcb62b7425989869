package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// archiveTransport reads docker-archive: references, images in a
// "docker save" tarball.
//
// A docker archive has no registry manifest, so its image is keyed in the
// cache by its image ID, the config digest, as docker does; the config
// lists the uncompressed digest (diff ID) of every layer, and each layer is
// verified against it as it is read. The layers are read from the archive
// in place, uncompressed by ggcr's tarball package when the archive holds
// compressed ones.
type archiveTransport struct {
	ref   Reference
	what  string
	img   v1.Image           // set by find
	entry tarball.Descriptor // the image's entry of manifest.json
}

// find picks the archive's image (the one with the reference's tag, or
// the only one); its manifest is its manifest.json entry.
func (t *archiveTransport) find(src *source) error {
	ref, what := t.ref, t.what
	fi, err := os.Stat(ref.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return &kindError{kind: ErrNotFound, msg: "docker archive " + ref.path + " not found", err: err}
		}
		return err
	}
	opener := func() (io.ReadCloser, error) { return os.Open(ref.path) }
	manifest, err := tarball.LoadManifest(opener)
	if err != nil {
		return fmt.Errorf("reading docker archive %s: manifest.json: %w", ref.path, err)
	}
	var tag *name.Tag
	if tg, ok := ref.name.(name.Tag); ok {
		tag = &tg
	}
	if t.entry, err = chooseArchiveEntry(manifest, tag, what); err != nil {
		return err
	}
	if t.img, err = tarball.Image(opener, tag); err != nil {
		return fmt.Errorf("reading docker archive %s: %w", ref.path, err)
	}
	src.size = fi.Size()
	if src.digest, err = t.img.ConfigName(); err != nil {
		return fmt.Errorf("reading config of %s: %w", what, err)
	}
	src.manifest, err = json.Marshal(t.entry)
	return err
}

func (t *archiveTransport) hasManifest() bool { return false }

func (t *archiveTransport) config(*v1.Manifest) ([]byte, error) {
	b, err := t.img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config of %s: %w", t.what, err)
	}
	return b, nil
}

func (t *archiveTransport) layers(_ *source, _ *v1.Manifest, cfg *v1.ConfigFile) ([]*layer, error) {
	if len(cfg.RootFS.DiffIDs) != len(t.entry.Layers) {
		return nil, fmt.Errorf("%s: the config lists %d layers, manifest.json %d", t.what, len(cfg.RootFS.DiffIDs), len(t.entry.Layers))
	}
	var layers []*layer
	for _, diffID := range cfg.RootFS.DiffIDs {
		layers = append(layers, &layer{
			digest:    diffID,
			size:      -1,
			mediaType: types.DockerUncompressedLayer,
			open: func() (io.ReadCloser, error) {
				l, err := t.img.LayerByDiffID(diffID)
				if err != nil {
					return nil, fmt.Errorf("layer %s of %s: %w", diffID, t.what, err)
				}
				return l.Uncompressed()
			},
		})
	}
	return layers, nil
}

// chooseArchiveEntry picks the image of a docker archive: the one with
// the tag, or the only one.
func chooseArchiveEntry(m tarball.Manifest, tag *name.Tag, what string) (tarball.Descriptor, error) {
	var tags []string
	for _, d := range m {
		for _, t := range d.RepoTags {
			if tag != nil {
				if rt, err := name.NewTag(t); err == nil && rt.Name() == tag.Name() {
					return d, nil
				}
			}
			tags = append(tags, t)
		}
	}
	list := ""
	if len(tags) > 0 {
		list = " (tags: " + strings.Join(tags, ", ") + ")"
	}
	switch {
	case tag != nil:
		return tarball.Descriptor{}, kindErrorf(ErrNotFound, "%s not found: the archive has no image tagged %s%s", what, tag, list)
	case len(m) == 0:
		return tarball.Descriptor{}, kindErrorf(ErrNotFound, "%s: the archive holds no image", what)
	case len(m) > 1:
		return tarball.Descriptor{}, fmt.Errorf("%s holds %d images: choose one with docker-archive:PATH:TAG%s", what, len(m), list)
	}
	return m[0], nil
}

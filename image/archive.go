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

// resolveArchive finds the image a docker-archive: reference names in a
// "docker save" tarball.
//
// A docker archive has no registry manifest, so its image is keyed in the
// cache by its image ID, the config digest, as docker does; the config
// lists the uncompressed digest (diff ID) of every layer, and each layer is
// verified against it as it is read. The layers are read from the archive
// in place, uncompressed by ggcr's tarball package when the archive holds
// compressed ones.
func resolveArchive(ref Reference, o *pullConfig) (*source, error) {
	what := ref.String()
	fi, err := os.Stat(ref.path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &kindError{kind: ErrNotFound, msg: "docker archive " + ref.path + " not found", err: err}
		}
		return nil, err
	}
	opener := func() (io.ReadCloser, error) { return os.Open(ref.path) }
	manifest, err := tarball.LoadManifest(opener)
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: manifest.json: %w", ref.path, err)
	}
	var tag *name.Tag
	if t, ok := ref.name.(name.Tag); ok {
		tag = &t
	}
	entry, err := chooseArchiveEntry(manifest, tag, what)
	if err != nil {
		return nil, err
	}
	img, err := tarball.Image(opener, tag)
	if err != nil {
		return nil, fmt.Errorf("reading docker archive %s: %w", ref.path, err)
	}
	src := &source{ref: ref, size: fi.Size()}
	if src.config, err = img.RawConfigFile(); err != nil {
		return nil, fmt.Errorf("reading config of %s: %w", what, err)
	}
	if src.digest, err = img.ConfigName(); err != nil {
		return nil, fmt.Errorf("reading config of %s: %w", what, err)
	}
	if src.manifest, err = json.Marshal(entry); err != nil {
		return nil, err
	}
	cfg, err := v1.ParseConfigFile(strings.NewReader(string(src.config)))
	if err != nil {
		return nil, fmt.Errorf("reading config of %s: %w", what, err)
	}
	if src.platform, err = checkConfigPlatform(cfg, o.platform, what); err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(entry.Layers) {
		return nil, fmt.Errorf("%s: the config lists %d layers, manifest.json %d", what, len(cfg.RootFS.DiffIDs), len(entry.Layers))
	}
	for _, diffID := range cfg.RootFS.DiffIDs {
		src.layers = append(src.layers, &layer{
			digest:    diffID,
			size:      -1,
			mediaType: types.DockerUncompressedLayer,
			open: func() (io.ReadCloser, error) {
				l, err := img.LayerByDiffID(diffID)
				if err != nil {
					return nil, fmt.Errorf("layer %s of %s: %w", diffID, what, err)
				}
				return l.Uncompressed()
			},
		})
	}
	return src, nil
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

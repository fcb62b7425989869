package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pe-project/pe/erofs"
)

// ImportOptions describes a tarball to lay over a base image, the way
// Compiler Explorer ships its compilers (clang-20.1.0.tar.xz unpacked under
// /opt/compiler-explorer, or re-rooted under /usr).
type ImportOptions struct {
	// Tar is the tarball: plain, gzip, zstd or xz. It is a file, or an
	// http:// or https:// URL streamed straight into the image, never
	// stored whole, its transfer resumed when the connection drops (see
	// OpenURL); BuildImportEROFS also takes "-" for BuildOptions.Stdin.
	Tar string
	// URL configures how a Tar URL is fetched (its MaxSize is
	// Pull.MaxSize less the base's layers, its Log and Transport those of
	// Pull when unset).
	URL URLOptions
	// StripComponents drops that many leading path components from each
	// entry, as tar --strip-components does.
	StripComponents int
	// Prefix is the directory of the image the tarball is unpacked into
	// ("" or "/": the root).
	Prefix string
	// Base is the image the tarball is laid over; the zero Reference
	// means none (an image holding only the tarball). It is resolved and
	// fetched with Pull, and may not itself be an imported image.
	Base Reference
	// Tag is the name Import stores the image under ("clang:20",
	// "local/clang:20"; canonically index.docker.io/library/clang:20 as
	// docker would name it). Such a name is recorded as local: `pe run`
	// and Get use it and never look it up in a registry, and Pull refuses
	// it. Unused by BuildImportEROFS.
	Tag string
	// Pull configures how the base is resolved and fetched.
	Pull PullOptions
}

// The annotations of the manifest pe synthesizes for an import.
const (
	annotationBase   = "dev.pe.import.base"
	annotationStrip  = "dev.pe.import.strip-components"
	annotationPrefix = "dev.pe.import.prefix"
)

// defaultPath is the PATH of an image without one, as docker and the OCI
// runtime spec default it.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Import lays the tarball of opts over the flattened layers of the base
// image and stores the result in the cache under opts.Tag, in one
// streaming pass: nothing is unpacked to disk. The base's layers are
// flattened with docker's whiteout rules; the tarball's entries are taken
// as they are (a ".wh." name in a tarball is an ordinary file).
//
// The image is keyed by the digest of a manifest pe synthesizes
// deterministically: the base's layers followed by the tarball as a layer
// (its sha256 and size, with the strip-components and prefix as
// annotations, the base's manifest digest as another), and a config
// derived from the base's. Importing the same tarball over the same base
// with the same options finds the image already converted.
//
// The config is the base's (or, without a base, a minimal linux one for
// the platform), with the history entry of the import added and, when the
// prefix is not the root, PREFIX/bin put first in PATH unless PATH already
// has it. The base's rootfs.diff_ids are kept as they are: the tarball's
// uncompressed digest is not computed.
func (c *Cache) Import(ctx context.Context, opts ImportOptions) (*CachedImage, error) {
	tag, err := importTag(opts.Tag)
	if err != nil {
		return nil, err
	}
	if opts.Tar == "" || opts.Tar == "-" {
		return nil, errors.New("import needs a tarball file or URL (standard input cannot be hashed before it is read)")
	}
	o, gc, err := c.configAndShare(ctx, opts.Pull)
	if err != nil {
		return nil, err
	}
	defer gc.unlock()
	url := IsURL(opts.Tar)
	imp, err := c.prepareImport(ctx, opts, o, !url)
	if err != nil {
		return nil, err
	}
	src := imp.src
	src.ref = Reference{transport: TransportRegistry, name: tag}
	var img *CachedImage
	if url {
		img, err = c.importURL(ctx, imp, o)
	} else {
		img, err = c.ensureImport(ctx, imp, o)
	}
	if err != nil {
		return nil, err
	}
	err = c.updateRef(tag.Name(), func(rec *refRecord) bool {
		rec.Platforms = nil
		rec.Local = &refTarget{Digest: src.digest, Fetched: c.now().UTC()}
		return true
	})
	if err != nil {
		return nil, err
	}
	img.Reference = tag.Name()
	return img, nil
}

// importTag parses the name an import is stored under.
func importTag(s string) (name.Tag, error) {
	if s == "" {
		return name.Tag{}, errors.New("an import needs a name to store the image under (--tag NAME, such as clang:20)")
	}
	ref, err := ParseReference(s)
	if err != nil {
		return name.Tag{}, err
	}
	t, ok := ref.name.(name.Tag)
	if ref.transport != TransportRegistry || !ok {
		return name.Tag{}, fmt.Errorf("--tag %q: want a name such as clang:20 or local/clang:20, not a digest, oci: or docker-archive: reference", s)
	}
	return t, nil
}

// importPlan is a prepared import: the base's layers ready to read, the
// tarball, and the synthesized manifest and config.
type importPlan struct {
	src  *source
	opts ImportOptions
	// tarDigest and tarSize are the tarball's (only when hashed).
	tarDigest v1.Hash
	tarSize   int64
	// base is the base image's source (nil: none), baseLayers its layers
	// as the manifest lists them.
	base       *source
	baseLayers []v1.Descriptor
	// hashURL, set for an import from a URL, hashes the tarball as
	// flattenImport streams it, since it cannot be read twice.
	hashURL *tarHasher
	// opened is the transfer of the tarball URL importURL started, which
	// flattenImport reads rather than starting its own.
	opened *URLReader
}

// prepareImport resolves and fetches the base, derives the config and,
// when hash is set, hashes the tarball and synthesizes the manifest and
// its digest.
func (c *Cache) prepareImport(ctx context.Context, opts ImportOptions, o *pullConfig, hash bool) (*importPlan, error) {
	if opts.StripComponents < 0 {
		return nil, fmt.Errorf("--strip-components %d is negative", opts.StripComponents)
	}
	if opts.Prefix != "" && !path.IsAbs(opts.Prefix) {
		opts.Prefix = "/" + opts.Prefix
	}
	if opts.Prefix != "" {
		opts.Prefix = path.Clean(opts.Prefix)
	}
	plan := &importPlan{opts: opts}
	var base *source
	var cfg *v1.ConfigFile
	if !opts.Base.IsZero() {
		var err error
		if base, err = c.baseSource(ctx, opts.Base, o); err != nil {
			return nil, err
		}
		if cfg, err = v1.ParseConfigFile(bytes.NewReader(base.config)); err != nil {
			return nil, fmt.Errorf("reading config of %s: %w", opts.Base.Familiar(), err)
		}
	} else {
		cfg = &v1.ConfigFile{
			OS:           o.platform.OS,
			Architecture: o.platform.Architecture,
			Variant:      o.platform.Variant,
			RootFS:       v1.RootFS{Type: "layers"},
			Config:       v1.Config{Env: []string{"PATH=" + defaultPath}},
		}
	}
	if opts.Prefix != "" && opts.Prefix != "/" {
		cfg.Config.Env = prependPath(cfg.Config.Env, path.Join(opts.Prefix, "bin"))
	}
	cfg.History = append(cfg.History, v1.History{
		CreatedBy: fmt.Sprintf("pe image import --tar %s --strip-components %d --prefix %s",
			tarFileName(opts.Tar), opts.StripComponents, cmpOr(opts.Prefix, "/")),
		Comment: "tarball laid over the base image by pe",
	})
	config, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}

	src := &source{config: config, platform: o.platform.String()}
	if cfg.OS != "" && cfg.Architecture != "" {
		src.platform = v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}.String()
	}
	if base != nil {
		src.layers = base.layers
		src.size = base.size
		for _, l := range base.layers {
			plan.baseLayers = append(plan.baseLayers, v1.Descriptor{MediaType: l.mediaType, Digest: l.digest, Size: l.size})
		}
	}
	plan.src = src
	plan.base = base
	if !hash {
		return plan, nil
	}

	mediaType, err := hashTarball(opts.Tar, &plan.tarDigest, &plan.tarSize)
	if err != nil {
		return nil, err
	}
	if err := plan.synthesize(mediaType); err != nil {
		return nil, err
	}
	return plan, nil
}

// synthesize writes the manifest of a plan whose tarball has been hashed
// (tarDigest, tarSize; its compression calls for mediaType), and sets the
// source's digest and size.
func (plan *importPlan) synthesize(mediaType types.MediaType) error {
	src, opts := plan.src, plan.opts
	src.size += plan.tarSize
	annotations := map[string]string{annotationStrip: strconv.Itoa(opts.StripComponents), annotationPrefix: cmpOr(opts.Prefix, "/")}
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(src.config)), Digest: sha256Hash(src.config)},
		Layers: append(slices.Clip(plan.baseLayers), v1.Descriptor{
			MediaType: mediaType, Digest: plan.tarDigest, Size: plan.tarSize, Annotations: annotations,
		}),
	}
	if plan.base != nil {
		m.Annotations = map[string]string{annotationBase: plan.base.digest.String()}
	}
	var err error
	if src.manifest, err = json.Marshal(m); err != nil {
		return err
	}
	src.digest = sha256Hash(src.manifest)
	return nil
}

// tarFileName is the file name of a tarball, or of the file a tarball URL
// names, without the URL's query.
func tarFileName(tar string) string {
	if IsURL(tar) {
		return urlFileName(tar)
	}
	return filepath.Base(tar)
}

// baseSource resolves an import's base and makes its layers readable
// (fetching registry blobs into the cache).
func (c *Cache) baseSource(ctx context.Context, ref Reference, o *pullConfig) (*source, error) {
	res, err := c.resolveRef(ctx, ref, o)
	if err != nil {
		return nil, err
	}
	if res.local {
		return nil, kindErrorf(ErrUnsupported, "base %s is an imported image; a base must come from a registry, an OCI layout or a docker archive", ref.Familiar())
	}
	src := res.src
	if src == nil {
		// The records answered; the layers are listed in the cached
		// manifest.
		if src, err = c.cachedSource(ctx, ref, res.digest, o); err != nil {
			return nil, err
		}
	}
	if o.MaxSize > 0 && src.size > o.MaxSize {
		return nil, kindErrorf(ErrTooLarge, "base %s is too large: %d bytes of layers, over the limit of %d bytes (--max-image-size)",
			ref.Familiar(), src.size, o.MaxSize)
	}
	if err := c.fetchBlobs(ctx, src, o); err != nil {
		return nil, err
	}
	if err := c.recordRef(ref, o.platform.String(), src); err != nil {
		return nil, err
	}
	return src, nil
}

// cachedSource rebuilds the source of a cached registry image from its
// manifest.json and config.json, its layers fetched again from the
// registry if blobs/ lost them.
func (c *Cache) cachedSource(ctx context.Context, ref Reference, h v1.Hash, o *pullConfig) (*source, error) {
	if ref.transport != TransportRegistry {
		return resolve(ctx, ref, o)
	}
	dir := c.imageDir(h)
	mb, err := readSmall(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	cb, err := readSmall(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	m, err := v1.ParseManifest(bytes.NewReader(mb))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "manifest.json"), err)
	}
	_, meta, err := c.loadImage(h)
	if err != nil {
		return nil, err
	}
	src := &source{ref: ref, digest: h, platform: meta.Platform, manifest: mb, config: cb}
	n, err := ref.registryName(o.Insecure)
	if err != nil {
		return nil, err
	}
	for _, d := range m.Layers {
		src.size += d.Size
		digest := d.Digest
		src.layers = append(src.layers, &layer{
			digest: d.Digest, size: d.Size, mediaType: d.MediaType,
			fetch: func() (io.ReadCloser, error) {
				l, err := remoteLayer(ctx, n.Context().Digest(digest.String()), o)
				if err != nil {
					return nil, err
				}
				return l.Compressed()
			},
		})
	}
	return src, nil
}

// ensureImport returns the cached image of a prepared import, converting
// it first if needed.
func (c *Cache) ensureImport(ctx context.Context, plan *importPlan, o *pullConfig) (*CachedImage, error) {
	src := plan.src
	ref := src.ref.String()
	lock, err := c.lockImage(ctx, src.digest, o)
	if err != nil {
		return nil, err
	}
	defer lock.unlockRemove()
	if c.complete(src.digest) {
		return c.useLocked(ref, src.digest)
	}
	start := time.Now()
	meta := importMeta(src)
	err = c.writeImage(ctx, src.digest, src.config, src.manifest, &meta, func(w *erofs.Writer) error {
		return flattenImport(ctx, w, plan, o, nil)
	})
	if err != nil {
		return nil, err
	}
	o.Log.Info("converted image", "reference", src.ref.Familiar(), "digest", src.digest, "bytes", meta.Size,
		"duration", time.Since(start).Round(time.Millisecond))
	return c.useLocked(ref, src.digest)
}

// flattenImport flattens the base layers and the tarball into w. stdin is
// read when the tarball is "-". A hashed tarball is verified again as it
// is read, in case the file changed in between.
func flattenImport(ctx context.Context, w *erofs.Writer, plan *importPlan, o *pullConfig, stdin io.Reader) error {
	tarName := plan.opts.Tar
	tarSize := plan.tarSize
	var url *URLReader    // opened first, so that an HTTP error comes before any work
	var urls []*URLReader // every transfer Open started
	isURL := IsURL(tarName)
	if isURL {
		url = plan.opened
		if url == nil {
			var err error
			if url, err = OpenURL(ctx, tarName, plan.urlOptions(o)); err != nil {
				return err
			}
		}
		defer url.Close()
		tarName, tarSize = url.Name(), url.Size()
	} else if tarSize == 0 && tarName != "-" {
		if fi, err := os.Stat(tarName); err == nil {
			tarSize = fi.Size()
		}
	}
	layers, add, check := plan.src.flattenLayers(o, cmpOr(plan.opts.Tag, tarName), tarSize)
	var vrs []*verifyReader // one per Open
	layers = append(layers, FlattenLayer{
		Name:            "tarball " + tarName,
		StripComponents: plan.opts.StripComponents,
		Prefix:          plan.opts.Prefix,
		Whiteouts:       false,
		Tarball:         true,
		Open: func() (io.ReadCloser, error) {
			if tarName == "-" {
				if stdin == nil {
					stdin = os.Stdin
				}
				return io.NopCloser(countReader{stdin, add}), nil
			}
			if isURL {
				rc, u, err := plan.openURL(ctx, &url, o, add)
				if u != nil {
					urls = append(urls, u)
				}
				return rc, err
			}
			f, err := os.Open(tarName)
			if err != nil {
				return nil, err
			}
			if plan.tarDigest == (v1.Hash{}) {
				return readCloser{countReader{f, add}, f}, nil
			}
			vr, err := newVerifyReader(f, "tarball "+tarName, plan.tarDigest, plan.tarSize)
			if err != nil {
				return nil, err
			}
			vrs = append(vrs, vr)
			return fastGunzip(readCloser{countReader{vr, add}, vr})
		},
	})
	if err := Flatten(ctx, w, layers, o.Limits); err != nil {
		for _, u := range urls {
			// A failed transfer is the cause, and its error names the
			// URL and says what happened; the decoder's and the tar
			// reader's wrappings would only repeat it.
			if uerr := u.failure(); uerr != nil {
				return uerr
			}
		}
		return fmt.Errorf("converting %s over %s: %w", tarName, baseName(plan), err)
	}
	for _, vr := range vrs {
		if err := vr.checkDone(); err != nil {
			return err
		}
	}
	return check()
}

func baseName(plan *importPlan) string {
	if plan.opts.Base.IsZero() {
		return "an empty image"
	}
	return plan.opts.Base.Familiar()
}

// BuildImportEROFS lays the tarball of opts over the base image, like
// Import, but writes the EROFS image to out instead of the cache, with
// build's writer options: the tarball is streamed straight into out. Only
// the base's blobs go through the cache. opts.Tag is ignored.
func (c *Cache) BuildImportEROFS(ctx context.Context, out string, opts ImportOptions, build BuildOptions) error {
	o, gc, err := c.configAndShare(ctx, opts.Pull)
	if err != nil {
		return err
	}
	defer gc.unlock()
	plan, err := c.prepareImport(ctx, opts, o, false)
	if err != nil {
		return err
	}
	if plan.opts.Tar != "-" && !IsURL(plan.opts.Tar) {
		if _, err := os.Stat(plan.opts.Tar); err != nil {
			return fmt.Errorf("tarball: %w", err)
		}
	}
	return writeEROFSFile(ctx, out, build, func(w *erofs.Writer, _ *os.File) error {
		return flattenImport(ctx, w, plan, o, build.Stdin)
	})
}

// hashTarball computes the sha256 and size of a tarball and returns the
// layer media type its compression calls for.
func hashTarball(file string, digest *v1.Hash, size *int64) (types.MediaType, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("tarball: %w", err)
	}
	defer f.Close()
	var magic [6]byte
	n, _ := io.ReadFull(f, magic[:])
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	h := sha256.New()
	if *size, err = io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading tarball %s: %w", file, err)
	}
	*digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	return tarMediaType(magic[:n]), nil
}

// tarMediaType is the layer media type of a tarball that starts with
// magic.
func tarMediaType(magic []byte) types.MediaType {
	switch m := magic; {
	case bytes.HasPrefix(m, []byte{0x1f, 0x8b}):
		return types.OCILayer
	case bytes.HasPrefix(m, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return types.OCILayerZStd
	case bytes.HasPrefix(m, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		// Not an OCI media type: no registry holds xz layers. The
		// manifest is pe's own and never pushed.
		return "application/vnd.oci.image.layer.v1.tar+xz"
	}
	return types.OCIUncompressedLayer
}

func sha256Hash(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// prependPath puts dir first in the PATH of env (adding PATH if missing)
// unless it is already there.
func prependPath(env []string, dir string) []string {
	env = append([]string(nil), env...)
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			for _, d := range filepath.SplitList(v) {
				if d == dir {
					return env
				}
			}
			env[i] = "PATH=" + dir + ":" + v
			return env
		}
	}
	return append(env, "PATH="+dir+":"+defaultPath)
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

package cli

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/internal/units"
)

// cacheFlags are the flags of every command that uses the image cache.
type cacheFlags struct {
	cacheDir string
}

func (f *cacheFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.cacheDir, "cache-dir", "", "the image cache directory (default $XDG_CACHE_HOME/pe or ~/.cache/pe)")
}

func (f *cacheFlags) open() (*image.Cache, error) {
	return image.OpenCache(f.cacheDir)
}

// pullFlags are the flags of the commands that fetch images and convert
// them into the cache.
type pullFlags struct {
	cacheFlags
	compress string
	platform string
	insecure bool
	maxSize  sizeFlag
	pull     string
	// The limits on what a conversion unpacks; defLimits holds their
	// defaults (zero: image.DefaultLimits), set before register; pe serve
	// sets it, which also gives --max-image-size a default of 2GB.
	maxUnpacked sizeFlag
	maxEntries  int64
	maxDepth    int
	defLimits   image.Limits
}

// register adds the flags; withPolicy adds --pull too.
func (f *pullFlags) register(fs *pflag.FlagSet, withPolicy bool) {
	f.cacheFlags.register(fs)
	fs.StringVar(&f.compress, "image-compress", "", "compress the EROFS images converted into the cache: lz4 or lz4hc[:LEVEL] (default: uncompressed; cached images keep their form)")
	fs.StringVar(&f.platform, "platform", "", "the platform to choose from multi-platform images, os/arch[/variant] (default "+image.DefaultPlatform()+")")
	fs.BoolVar(&f.insecure, "insecure", false, "talk plain HTTP to the registry (a local registry)")
	defSize := "0"
	if f.defLimits != (image.Limits{}) {
		defSize = "2GB" // pe serve: the original's limit on compressed layers
	}
	sizeVar(fs, &f.maxSize, "max-image-size", defSize, sizeSpec{want: "a size such as 2GiB or 500MB (0: no limit)"}, "refuse images whose compressed layers add up to more than this, such as 2GiB or 500MB (0: no limit)")
	def := f.defLimits
	if def == (image.Limits{}) {
		def = image.DefaultLimits()
	}
	sizeVar(fs, &f.maxUnpacked, "max-image-unpacked", units.FormatSize(def.MaxUnpacked), sizeSpec{want: "a size such as 3GiB (0: no limit)"}, "stop converting an image whose layers unpack to more than this (declared sizes, sparse files in full; 0: no limit)")
	fs.Int64Var(&f.maxEntries, "max-image-entries", def.MaxEntries, "stop converting an image whose layers hold more entries (files, directories, links) than this (0: no limit)")
	fs.IntVar(&f.maxDepth, "max-image-depth", def.MaxDepth, "stop converting an image with a path deeper than this many components (0: no limit)")
	if withPolicy {
		fs.StringVar(&f.pull, "pull", "missing", "when to look the image up in its registry: always, missing (when not cached, or a tag record is over an hour old), never")
	}
}

// open opens the cache, converting images into it compressed as
// --image-compress says.
func (f *pullFlags) open() (*image.Cache, error) {
	c, err := f.cacheFlags.open()
	if err != nil || f.compress == "" {
		return c, err
	}
	var o erofs.WriterOptions
	if err := parseCompression(f.compress, &o); err != nil {
		return nil, fmt.Errorf("--image-compress: %w", err)
	}
	c.SetCompression(o)
	return c, nil
}

// options turns the flags into image.PullOptions, with progress reports
// going to stderr.
func (f *pullFlags) options(cmd *cobra.Command, a *app) (image.PullOptions, error) {
	opts := image.PullOptions{
		Platform:  f.platform,
		Insecure:  f.insecure,
		UserAgent: "pe/" + Version,
		Log:       a.log,
		Progress:  newProgress(cmd.ErrOrStderr(), a.log),
	}
	opts.MaxSize = f.maxSize.Bytes()
	var err error
	if opts.Limits, err = f.limits(cmd); err != nil {
		return opts, err
	}
	if f.pull != "" {
		if opts.Policy, err = image.ParsePullPolicy(f.pull); err != nil {
			return opts, usageErrorf(cmd, "--pull: %v", err)
		}
	}
	return opts, nil
}

// limits returns the limits the flags set.
func (f *pullFlags) limits(cmd *cobra.Command) (image.Limits, error) {
	if f.maxEntries < 0 || f.maxDepth < 0 {
		return image.Limits{}, usageErrorf(cmd, "--max-image-entries and --max-image-depth: want 0 (no limit) or more")
	}
	return image.Limits{MaxUnpacked: f.maxUnpacked.Bytes(), MaxEntries: f.maxEntries, MaxDepth: f.maxDepth}, nil
}

// newProgress returns a progress reporter: a bar per phase when w is a
// terminal, else an info log line every few seconds and at the end.
func newProgress(w io.Writer, log *slog.Logger) func(image.Progress) {
	var mu sync.Mutex
	if !isTerminal(w) {
		var last time.Time
		return func(p image.Progress) {
			mu.Lock()
			defer mu.Unlock()
			if !p.Done && time.Since(last) < 3*time.Second {
				return
			}
			last = time.Now()
			log.Info(string(p.Phase), "reference", p.Reference, "bytes", p.Complete, "total", p.Total, "done", p.Done)
		}
	}
	var bar *progressbar.ProgressBar
	var phase image.Phase
	return func(p image.Progress) {
		mu.Lock()
		defer mu.Unlock()
		if bar == nil || phase != p.Phase {
			if bar != nil {
				bar.Finish()
			}
			verb := "downloading"
			switch p.Phase {
			case image.PhaseConvert:
				verb = "converting"
			case image.PhaseUpload:
				verb = "uploading"
			}
			phase = p.Phase
			bar = progressbar.NewOptions64(p.Total,
				progressbar.OptionSetWriter(w),
				progressbar.OptionSetDescription(verb+" "+p.Reference),
				progressbar.OptionShowBytes(true),
				progressbar.OptionUseIECUnits(true),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(100*time.Millisecond),
				progressbar.OptionClearOnFinish(),
			)
		}
		bar.Set64(p.Complete)
		if p.Done {
			bar.Finish()
			bar = nil
		}
	}
}

// newPullCmd returns "pe image pull".
func newPullCmd(a *app) *cobra.Command {
	var f pullFlags
	cmd := &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Fetch an image and convert it into the cache",
		Long: `Fetch IMAGE and convert it into the image cache as the EROFS root file system
pe runs programs in. IMAGE is a registry reference with docker's defaults
(busybox = index.docker.io/library/busybox:latest; name@sha256:... pins a
digest), oci:PATH[:TAG|@DIGEST] for an OCI image layout directory, or
docker-archive:PATH[:TAG] for a "docker save" tarball, or
s3://BUCKET/[PREFIX/]NAME[:TAG|@sha256:...] for an image pe image push stored
in an S3 bucket (downloaded whole, every chunk checked against its digest).

Pull always asks the registry what a tag points to now (one HEAD request when
the cache already has the image), unlike pe run, which trusts a tag record for
an hour. Credentials come from docker's config (docker login) and credential
helpers. Layers are checked against their digests and sizes. Prints the image
digest.`,
		Example: `  pe image pull busybox
  pe image pull --platform linux/arm64 ghcr.io/org/tool:1.2
  pe image pull --insecure localhost:5000/test:latest
  pe image pull oci:./layout:v1`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := image.ParseReference(args[0])
			if err != nil {
				return err
			}
			opts, err := f.options(cmd, a)
			if err != nil {
				return err
			}
			c, err := f.open()
			if err != nil {
				return err
			}
			img, err := c.Pull(cmd.Context(), ref, opts)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), img.Digest)
			if stderr := cmd.ErrOrStderr(); isTerminal(stderr) {
				fmt.Fprintf(stderr, "%s: %s EROFS image, %s\n", ref.Familiar(), humanBytes(img.Size), img.Platform)
			}
			return nil
		},
	}
	f.register(cmd.Flags(), false)
	return cmd
}

// importFlags describe a tarball laid over a base image (pe image import,
// pe image build-erofs --tar).
type importFlags struct {
	tar    string
	strip  int
	prefix string
	base   string
}

func (f *importFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.tar, "tar", "", "the tarball to lay over the base image (plain, gzip, zstd or xz): a file or an http(s) URL, streamed")
	fs.IntVar(&f.strip, "strip-components", 0, "drop this many leading path components of the tarball's entries")
	fs.StringVar(&f.prefix, "prefix", "/", "the directory of the image the tarball is unpacked into")
	fs.StringVar(&f.base, "base", "", "the image the tarball is laid over (default: none)")
}

func (f *importFlags) options(cmd *cobra.Command, a *app, pf *pullFlags) (image.ImportOptions, error) {
	opts := image.ImportOptions{Tar: f.tar, StripComponents: f.strip, Prefix: f.prefix}
	if f.strip < 0 {
		return opts, usageErrorf(cmd, "--strip-components %d is negative", f.strip)
	}
	if f.base != "" {
		ref, err := image.ParseReference(f.base)
		if err != nil {
			return opts, fmt.Errorf("--base: %w", err)
		}
		opts.Base = ref
	}
	var err error
	opts.Pull, err = pf.options(cmd, a)
	return opts, err
}

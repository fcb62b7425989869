package cli

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/image"
)

// buildEROFSLong is the help of "pe image build-erofs".
const buildEROFSLong = `Build an EROFS image from SOURCE:

  - a directory, or a tar file (plain or compressed with gzip, zstd or xz,
    recognised by its contents), or '-' for a tar stream on standard input;
  - an image: a registry reference (busybox, ghcr.io/org/tool:1), oci:PATH[:TAG]
    or docker-archive:PATH[:TAG]. An existing path is always a directory or
    tar file; oci: and docker-archive: are images; anything else is a
    registry reference. The image is converted into the cache (as
    pe image pull does, but trusting a tag record for an hour; see --pull) and
    copied to OUT, so building it again is immediate. With --mtime, --block-size
    or SOURCE_DATE_EPOCH, it is converted straight into OUT instead.

Or, without SOURCE, from a tarball laid over a base image, as Compiler
Explorer's compiler builds are: --tar FILE|URL [--strip-components N] [--prefix DIR]
[--base IMAGE] streams the base's layers and the tarball straight into OUT.
Only the base's layers go through the cache. An http:// or https:// URL is read
as it downloads, never stored whole; a dropped or stalled connection is resumed
where it stopped (the server must support Range requests and give an ETag or
Last-Modified), and a file that changed on the server meanwhile is an error.

Everything is kept: file types, permissions with setuid, setgid and sticky bits,
owners, modification times to the nanosecond, extended attributes, symbolic
links, devices, FIFOs, sockets and hard links; image layers are flattened with
docker's rules (whiteouts, opaque directories). The output file appears only
once the image is complete; on failure nothing is left behind.

For reproducible images, --mtime sets every modification time. Without it, a
SOURCE_DATE_EPOCH environment variable clamps modification times to that
moment.`

// buildEROFSExample is the examples of "pe image build-erofs".
const buildEROFSExample = `  pe image build-erofs ./rootfs -o rootfs.erofs
  pe image build-erofs layer.tar.gz -o layer.erofs --mtime 2024-01-01T00:00:00Z
  tar -C ./rootfs -c . | pe image build-erofs - -o rootfs.erofs
  pe image build-erofs busybox -o busybox.erofs --compress lz4hc --pcluster-size 16K
  pe image build-erofs oci:./layout:v1 -o image.erofs
  pe image build-erofs --tar clang.tar.xz --strip-components 1 --prefix /usr --base ubuntu:22.04 -o clang.erofs
  pe image build-erofs --tar https://example.com/gcc-14.2.0.tar.xz --strip-components 1 -o gcc.erofs`

// buildEROFSFlags are the flags of "pe image build-erofs".
type buildEROFSFlags struct {
	out       string
	mtime     string
	blockSize int
	pull      pullFlags
	imp       importFlags
	zf        compressFlags
}

// register adds the flags to fs.
func (f *buildEROFSFlags) register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.out, "output", "o", "", "the image file to write (required)")
	fs.StringVar(&f.mtime, "mtime", "", "set every modification time: RFC 3339 (2024-01-01T00:00:00Z) or unix seconds (@1700000000)")
	fs.IntVar(&f.blockSize, "block-size", 4096, "file system block size: 4096, or 512, 1024, 2048")
	f.pull.register(fs, true)
	f.imp.register(fs)
	f.zf.register(fs)
}

// newBuildEROFSCmd returns "pe image build-erofs".
func newBuildEROFSCmd(a *app) *cobra.Command {
	var f buildEROFSFlags
	cmd := &cobra.Command{
		Use:     "build-erofs SOURCE -o OUT.erofs",
		Short:   "Build an EROFS image from a directory, a tar file or an image",
		Long:    buildEROFSLong,
		Example: buildEROFSExample,
		Args:    usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBuildEROFS(cmd, a, &f, args)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// runBuildEROFS runs "pe image build-erofs": it checks the arguments,
// gathers the writer's options, builds the image and reports it.
func runBuildEROFS(cmd *cobra.Command, a *app, f *buildEROFSFlags, args []string) error {
	source, err := buildEROFSSource(cmd, f, args)
	if err != nil {
		return err
	}
	opts := image.BuildOptions{
		Writer: erofs.WriterOptions{BlockSize: f.blockSize},
		Stdin:  cmd.InOrStdin(),
	}
	custom, err := buildEROFSWriterOptions(cmd, a, f, &opts.Writer)
	if err != nil {
		return err
	}
	if (source == "-" || f.imp.tar == "-") && isTerminal(opts.Stdin) {
		return usageErrorf(cmd, "refusing to read a tar stream from a terminal")
	}
	start := time.Now()
	tarArg := f.imp.tar
	if image.IsURL(tarArg) {
		tarArg = image.RedactURL(tarArg) // no credentials in logs
	}
	a.log.Debug("building EROFS image", "source", source, "tar", tarArg, "output", f.out, "block_size", f.blockSize,
		"mtime", opts.Writer.ModTime, "clamp_mtime", opts.Writer.ClampModTime)
	if err := buildEROFS(cmd, a, f, source, opts, custom); err != nil {
		return err
	}
	reportBuiltEROFS(cmd, a, f.out, time.Since(start))
	return nil
}

// buildEROFSSource returns the SOURCE argument ("" with --tar), checking
// that exactly one of SOURCE and --tar is given, and an output.
func buildEROFSSource(cmd *cobra.Command, f *buildEROFSFlags, args []string) (string, error) {
	source := ""
	if len(args) == 1 {
		source = args[0]
	}
	switch {
	case f.imp.tar != "" && source != "":
		return "", usageErrorf(cmd, "give either SOURCE or --tar, not both")
	case f.imp.tar == "" && source == "":
		return "", usageErrorf(cmd, "SOURCE (a directory, tar file or image) or --tar is required")
	case f.out == "":
		return "", usageErrorf(cmd, "the output file (-o, --output) is required")
	}
	return source, nil
}

// buildEROFSWriterOptions sets the compression and modification times of
// w from the flags and SOURCE_DATE_EPOCH; custom says they differ from
// the cache's (so an image is converted straight into the output).
func buildEROFSWriterOptions(cmd *cobra.Command, a *app, f *buildEROFSFlags, w *erofs.WriterOptions) (custom bool, err error) {
	custom = cmd.Flags().Changed("block-size") || f.zf.changed(cmd)
	if err := f.zf.apply(cmd, w); err != nil {
		return false, err
	}
	if cmd.Flags().Changed("mtime") {
		t, err := parseMtime(f.mtime)
		if err != nil {
			return false, usageErrorf(cmd, "--mtime: %v", err)
		}
		w.ModTime = &t
		return true, nil
	}
	if v, ok := a.lookupEnv("SOURCE_DATE_EPOCH"); ok && v != "" {
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return false, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a whole number of seconds", v)
		}
		t := time.Unix(sec, 0).UTC()
		w.ClampModTime = &t
		return true, nil
	}
	return custom, nil
}

// buildEROFS writes the image of source, or of --tar over its base, to
// f.out.
func buildEROFS(cmd *cobra.Command, a *app, f *buildEROFSFlags, source string, opts image.BuildOptions, custom bool) error {
	switch kind := sourceKind(source); {
	case f.imp.tar != "":
		return buildImport(cmd, a, &f.pull, &f.imp, f.out, opts)
	case kind == "path":
		lim, err := f.pull.limits(cmd)
		if err != nil {
			return err
		}
		opts.Limits = lim
		return image.BuildEROFS(cmd.Context(), source, f.out, opts)
	default:
		return buildFromImage(cmd, a, &f.pull, source, f.out, opts, custom)
	}
}

// reportBuiltEROFS logs the image built in out, and tells a terminal.
func reportBuiltEROFS(cmd *cobra.Command, a *app, out string, elapsed time.Duration) {
	var size int64
	if fi, err := os.Stat(out); err == nil {
		size = fi.Size()
	}
	a.log.Info("built EROFS image", "output", out, "bytes", size, "duration", elapsed)
	if stderr := cmd.ErrOrStderr(); isTerminal(stderr) {
		fmt.Fprintf(stderr, "%s: %s EROFS image built in %.2fs\n", out, humanBytes(size), elapsed.Seconds())
	}
}

// sourceKind tells what a build-erofs SOURCE is: "path" for "-" and
// anything that exists on disk (so a directory named like an image is
// still a directory), "image" otherwise.
func sourceKind(source string) string {
	if source == "-" {
		return "path"
	}
	if _, err := os.Lstat(source); err == nil {
		return "path"
	}
	return "image"
}

// buildFromImage writes the EROFS image of an image reference to out:
// from the cache, or converted straight into out when the writer options
// differ from the cache's.
func buildFromImage(cmd *cobra.Command, a *app, f *pullFlags, source, out string, opts image.BuildOptions, custom bool) error {
	if looksLikePath(source) {
		return fmt.Errorf("%s: no such file or directory", source)
	}
	ref, err := image.ParseReference(source)
	if err != nil {
		return fmt.Errorf("%s is neither a file, a directory nor an image: %w", source, err)
	}
	popts, err := f.options(cmd, a)
	if err != nil {
		return err
	}
	c, err := f.open()
	if err != nil {
		return err
	}
	if custom {
		return c.BuildImageEROFS(cmd.Context(), ref, out, popts, opts)
	}
	_, err = c.ExportEROFS(cmd.Context(), ref, out, popts)
	return err
}

// looksLikePath reports whether a source that does not exist was meant as
// a path rather than an image reference. A source naming its transport
// (docker-archive:PATH.tar, oci:PATH) is an image whatever its suffix.
func looksLikePath(s string) bool {
	for _, t := range []image.Transport{image.TransportOCI, image.TransportDockerArchive} {
		if strings.HasPrefix(s, string(t)+":") {
			return false
		}
	}
	for _, p := range []string{"/", "./", "../", "~"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	for _, ext := range []string{".tar", ".tgz", ".gz", ".zst", ".xz"} {
		if strings.HasSuffix(s, ext) {
			return true
		}
	}
	return false
}

// buildImport writes a tarball laid over a base image to out.
func buildImport(cmd *cobra.Command, a *app, f *pullFlags, imp *importFlags, out string, opts image.BuildOptions) error {
	iopts, err := imp.options(cmd, a, f)
	if err != nil {
		return err
	}
	c, err := f.open()
	if err != nil {
		return err
	}
	return c.BuildImportEROFS(cmd.Context(), out, iopts, opts)
}

// parseMtime parses a --mtime value: an RFC 3339 time, or seconds since the
// unix epoch, with or without a leading "@".
func parseMtime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("empty time")
	}
	digits := strings.TrimPrefix(s, "@")
	if sec, err := strconv.ParseInt(digits, 10, 64); err == nil {
		return time.Unix(sec, 0).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2024-01-01T00:00:00Z) nor unix seconds (@1700000000)", s)
}

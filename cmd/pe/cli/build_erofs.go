package cli

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/image"
)

// newBuildEROFSCmd returns "pe image build-erofs".
func newBuildEROFSCmd(a *app) *cobra.Command {
	var (
		out       string
		mtime     string
		blockSize int
		f         pullFlags
		imp       importFlags
		zf        compressFlags
	)
	cmd := &cobra.Command{
		Use:   "build-erofs SOURCE -o OUT.erofs",
		Short: "Build an EROFS image from a directory, a tar file or an image",
		Long: `Build an EROFS image from SOURCE:

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
Explorer's compiler builds are: --tar FILE [--strip-components N] [--prefix DIR]
[--base IMAGE] streams the base's layers and the tarball straight into OUT.
Only the base's layers go through the cache.

Everything is kept: file types, permissions with setuid, setgid and sticky bits,
owners, modification times to the nanosecond, extended attributes, symbolic
links, devices, FIFOs, sockets and hard links; image layers are flattened with
docker's rules (whiteouts, opaque directories). The output file appears only
once the image is complete; on failure nothing is left behind.

For reproducible images, --mtime sets every modification time. Without it, a
SOURCE_DATE_EPOCH environment variable clamps modification times to that
moment.`,
		Example: `  pe image build-erofs ./rootfs -o rootfs.erofs
  pe image build-erofs layer.tar.gz -o layer.erofs --mtime 2024-01-01T00:00:00Z
  tar -C ./rootfs -c . | pe image build-erofs - -o rootfs.erofs
  pe image build-erofs busybox -o busybox.erofs --compress lz4hc --pcluster-size 16K
  pe image build-erofs oci:./layout:v1 -o image.erofs
  pe image build-erofs --tar clang.tar.xz --strip-components 1 --prefix /usr --base ubuntu:22.04 -o clang.erofs`,
		Args: usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			source := ""
			if len(args) == 1 {
				source = args[0]
			}
			switch {
			case imp.tar != "" && source != "":
				return usageErrorf(cmd, "give either SOURCE or --tar, not both")
			case imp.tar == "" && source == "":
				return usageErrorf(cmd, "SOURCE (a directory, tar file or image) or --tar is required")
			case out == "":
				return usageErrorf(cmd, "the output file (-o, --output) is required")
			}
			opts := image.BuildOptions{
				Writer: erofs.WriterOptions{BlockSize: blockSize},
				Stdin:  cmd.InOrStdin(),
			}
			custom := cmd.Flags().Changed("block-size") || zf.changed(cmd)
			if err := zf.apply(cmd, &opts.Writer); err != nil {
				return err
			}
			if cmd.Flags().Changed("mtime") {
				t, err := parseMtime(mtime)
				if err != nil {
					return usageErrorf(cmd, "--mtime: %v", err)
				}
				opts.Writer.ModTime = &t
				custom = true
			} else if v, ok := a.lookupEnv("SOURCE_DATE_EPOCH"); ok && v != "" {
				sec, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a whole number of seconds", v)
				}
				t := time.Unix(sec, 0).UTC()
				opts.Writer.ClampModTime = &t
				custom = true
			}
			if (source == "-" || imp.tar == "-") && isTerminal(opts.Stdin) {
				return usageErrorf(cmd, "refusing to read a tar stream from a terminal")
			}
			start := time.Now()
			a.log.Debug("building EROFS image", "source", source, "tar", imp.tar, "output", out, "block_size", blockSize,
				"mtime", opts.Writer.ModTime, "clamp_mtime", opts.Writer.ClampModTime)
			var err error
			switch kind := sourceKind(source); {
			case imp.tar != "":
				err = buildImport(cmd, a, &f, &imp, out, opts)
			case kind == "path":
				if opts.Limits, err = f.limits(cmd); err == nil {
					err = image.BuildEROFS(cmd.Context(), source, out, opts)
				}
			default:
				err = buildFromImage(cmd, a, &f, source, out, opts, custom)
			}
			if err != nil {
				return err
			}
			elapsed := time.Since(start)
			var size int64
			if fi, err := os.Stat(out); err == nil {
				size = fi.Size()
			}
			a.log.Info("built EROFS image", "output", out, "bytes", size, "duration", elapsed)
			if stderr := cmd.ErrOrStderr(); isTerminal(stderr) {
				fmt.Fprintf(stderr, "%s: %s EROFS image built in %.2fs\n", out, humanBytes(size), elapsed.Seconds())
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&out, "output", "o", "", "the image file to write (required)")
	fs.StringVar(&mtime, "mtime", "", "set every modification time: RFC 3339 (2024-01-01T00:00:00Z) or unix seconds (@1700000000)")
	fs.IntVar(&blockSize, "block-size", 4096, "file system block size: 4096, or 512, 1024, 2048")
	f.register(fs, true)
	imp.register(fs)
	zf.register(fs)
	return cmd
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

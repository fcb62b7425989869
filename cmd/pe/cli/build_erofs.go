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
	)
	cmd := &cobra.Command{
		Use:   "build-erofs SOURCE -o OUT.erofs",
		Short: "Build an EROFS image from a directory or a tar file",
		Long: `Build an EROFS image from SOURCE: a directory, a tar file (plain or compressed
with gzip, zstd or xz, recognised by its contents) or '-' for a tar stream on
standard input.

Everything is kept: file types, permissions with setuid, setgid and sticky bits,
owners, modification times to the nanosecond, extended attributes, symbolic
links, devices, FIFOs, sockets and hard links. The output file appears only once
the image is complete; on failure nothing is left behind.

For reproducible images, --mtime sets every modification time. Without it, a
SOURCE_DATE_EPOCH environment variable clamps modification times to that
moment.`,
		Example: `  pe image build-erofs ./rootfs -o rootfs.erofs
  pe image build-erofs layer.tar.gz -o layer.erofs --mtime 2024-01-01T00:00:00Z
  tar -C ./rootfs -c . | pe image build-erofs - -o rootfs.erofs`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			source := args[0]
			if out == "" {
				return usageErrorf(cmd, "the output file (-o, --output) is required")
			}
			opts := image.BuildOptions{
				Writer: erofs.WriterOptions{BlockSize: blockSize},
				Stdin:  cmd.InOrStdin(),
			}
			if cmd.Flags().Changed("mtime") {
				t, err := parseMtime(mtime)
				if err != nil {
					return usageErrorf(cmd, "--mtime: %v", err)
				}
				opts.Writer.ModTime = &t
			} else if v, ok := a.lookupEnv("SOURCE_DATE_EPOCH"); ok && v != "" {
				sec, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a whole number of seconds", v)
				}
				t := time.Unix(sec, 0).UTC()
				opts.Writer.ClampModTime = &t
			}
			if source == "-" && isTerminal(opts.Stdin) {
				return usageErrorf(cmd, "refusing to read a tar stream from a terminal")
			}
			start := time.Now()
			a.log.Debug("building EROFS image", "source", source, "output", out, "block_size", blockSize,
				"mtime", opts.Writer.ModTime, "clamp_mtime", opts.Writer.ClampModTime)
			if err := image.BuildEROFS(cmd.Context(), source, out, opts); err != nil {
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
	f := cmd.Flags()
	f.StringVarP(&out, "output", "o", "", "the image file to write (required)")
	f.StringVar(&mtime, "mtime", "", "set every modification time: RFC 3339 (2024-01-01T00:00:00Z) or unix seconds (@1700000000)")
	f.IntVar(&blockSize, "block-size", 4096, "file system block size: 4096, or 512, 1024, 2048")
	return cmd
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

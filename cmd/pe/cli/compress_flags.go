package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/internal/units"
)

// compressFlags are the EROFS compression flags of pe image build-erofs.
type compressFlags struct {
	compress string // lz4, lz4hc or lz4hc:LEVEL
	pcluster string // bytes, with an optional K/KiB/M/MiB suffix
	index    string // compact or full
}

func (z *compressFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&z.compress, "compress", "", "compress file data: lz4, or lz4hc[:LEVEL] (levels 1-12, default 9); files that do not shrink stay uncompressed")
	fs.StringVar(&z.pcluster, "pcluster-size", "", "largest compressed cluster: a multiple of the block size up to 1MiB, e.g. 16K or 65536 (default: one block); larger compresses better")
	fs.StringVar(&z.index, "compress-index", "", "index layout of compressed files: compact (default) or full")
}

// compressFlagNames are the flags compressFlags registers.
var compressFlagNames = []string{"compress", "pcluster-size", "compress-index"}

// changed reports whether any compression flag was given.
func (z *compressFlags) changed(cmd *cobra.Command) bool {
	for _, n := range compressFlagNames {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

// apply checks the flags and sets the writer's compression options. An
// unset flag is the empty string; a flag given with an empty value
// (--compress "") was rejected before, by checkEmptyCompressFlags.
// The pcluster size is checked against the writer's block size here, so
// that its error names the flag.
func (z *compressFlags) apply(cmd *cobra.Command, w *erofs.WriterOptions) error {
	if z.compress == "" {
		if z.pcluster != "" || z.index != "" {
			return usageErrorf(cmd, "--pcluster-size and --compress-index need --compress")
		}
		return nil
	}
	if err := parseCompression(z.compress, w); err != nil {
		return usageErrorf(cmd, "--compress: %v", err)
	}
	if z.pcluster != "" {
		n, err := parsePclusterSize(z.pcluster, w.BlockSize)
		if err != nil {
			return usageErrorf(cmd, "--pcluster-size: %v", err)
		}
		w.PclusterSize = n
	}
	switch z.index {
	case "", erofs.IndexCompact, erofs.IndexFull:
		w.CompressIndex = z.index
	default:
		return usageErrorf(cmd, "--compress-index: %q is not compact or full", z.index)
	}
	return nil
}

// parsePclusterSize parses a --pcluster-size value and checks that it is
// a multiple of the block size (0 means the default, 4096) no larger than
// erofs.MaxPclusterSize.
func parsePclusterSize(s string, blockSize int) (int, error) {
	if blockSize == 0 {
		blockSize = 4096
	}
	n, err := units.ParseSize(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size such as 65536, 16K or 1MiB", s)
	}
	if n%int64(blockSize) != 0 || n > erofs.MaxPclusterSize {
		if strconv.FormatInt(n, 10) != s {
			s = fmt.Sprintf("%s (%d bytes)", s, n)
		}
		return 0, fmt.Errorf("%s: want a multiple of the block size %d, at most 1MiB (%d)", s, blockSize, erofs.MaxPclusterSize)
	}
	return int(n), nil
}

// emptyValueFlags are the flags whose empty value means "not given", so
// that giving one explicitly empty (--compress "", often an unset shell
// variable) is refused rather than silently ignored.
var emptyValueFlags = map[string]string{
	"compress":       "lz4 or lz4hc[:LEVEL]; leave the flag out for no compression",
	"pcluster-size":  "a size such as 16K; leave the flag out for one block",
	"compress-index": "compact or full; leave the flag out for compact",
	"image-compress": "lz4 or lz4hc[:LEVEL]; leave the flag out for uncompressed images",
}

// checkEmptyCompressFlags refuses compression flags given on the command
// line with an empty value. Values from PE_* variables and the config file
// do not count as given (applyConfig sets them without marking them
// changed), so an empty setting there still means the default.
func checkEmptyCompressFlags(cmd *cobra.Command) error {
	var err error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if want, ok := emptyValueFlags[f.Name]; ok && err == nil && f.Value.String() == "" {
			err = usageErrorf(cmd, "--%s: empty value (want %s)", f.Name, want)
		}
	})
	return err
}

// parseCompression sets w's Compression and CompressionLevel from "lz4",
// "lz4hc" or "lz4hc:LEVEL".
func parseCompression(s string, w *erofs.WriterOptions) error {
	alg, level, hasLevel := strings.Cut(s, ":")
	switch alg {
	case erofs.CompressionLZ4:
		if hasLevel {
			return fmt.Errorf("lz4 takes no level; use lz4hc:LEVEL")
		}
	case erofs.CompressionLZ4HC:
		if hasLevel {
			n, err := strconv.Atoi(level)
			if err != nil || n < 1 || n > 12 {
				return fmt.Errorf("lz4hc level %q is not a number from 1 to 12", level)
			}
			w.CompressionLevel = n
		}
	default:
		return fmt.Errorf("%q is not lz4 or lz4hc[:LEVEL]", s)
	}
	w.Compression = alg
	return nil
}

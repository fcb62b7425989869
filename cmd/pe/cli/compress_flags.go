package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pe-project/pe/erofs"
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

// changed reports whether any compression flag was given.
func (z *compressFlags) changed(cmd *cobra.Command) bool {
	for _, n := range []string{"compress", "pcluster-size", "compress-index"} {
		if cmd.Flags().Changed(n) {
			return true
		}
	}
	return false
}

// apply checks the flags and sets the writer's compression options.
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
		n, err := parseSize(z.pcluster)
		if err != nil || n <= 0 || n > 1<<30 {
			return usageErrorf(cmd, "--pcluster-size: %q is not a size such as 65536, 16K or 1MiB", z.pcluster)
		}
		w.PclusterSize = int(n)
	}
	switch z.index {
	case "", erofs.IndexCompact, erofs.IndexFull:
		w.CompressIndex = z.index
	default:
		return usageErrorf(cmd, "--compress-index: %q is not compact or full", z.index)
	}
	return nil
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

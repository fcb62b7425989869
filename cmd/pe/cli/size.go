package cli

import "github.com/pe-project/pe/gist"

// parseSize parses a size in bytes: a number, optionally followed by a
// unit (KB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB and K, M, G,
// T powers of 1024). It is pe.toml's size syntax (gist.ParseSize), so a
// memory size reads the same in a flag and in a pe.toml.
func parseSize(s string) (int64, error) { return gist.ParseSize(s) }

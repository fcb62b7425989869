package cli

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSize parses a size in bytes: a number, optionally followed by a
// unit. KB, MB, GB and TB are powers of 1000; KiB, MiB, GiB, TiB and the
// single letters K, M, G, T (as in docker's --memory 512m) are powers of
// 1024. Units are case-insensitive; "B" is bytes.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	}
	mult, ok := map[string]float64{
		"": 1, "b": 1,
		"k": 1 << 10, "kib": 1 << 10, "kb": 1e3,
		"m": 1 << 20, "mib": 1 << 20, "mb": 1e6,
		"g": 1 << 30, "gib": 1 << 30, "gb": 1e9,
		"t": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	}[unit]
	f, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || num == "" || f < 0 || f*mult > 1<<62 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit, such as 500MB or 2GiB", s)
	}
	return int64(f * mult), nil
}

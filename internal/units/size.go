// Package units is the one home of pe's size syntax: how a size is
// written in a flag (--memory 512M, --max-image-size 2GiB), in pe's
// config file and in a pe.toml (memory = "1GiB"), so that a size reads
// the same everywhere. It sits below every other folder (see
// internal/archtest) so that gist, image, server and the commands may all
// import it; it imports nothing of pe's.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a size in bytes: a number, optionally followed by a
// unit. KB, MB, GB and TB are powers of 1000; KiB, MiB, GiB, TiB and the
// single letters K, M, G, T (as in docker's --memory 512m) are powers of
// 1024; units are case-insensitive. Negative sizes and sizes over 2⁶²
// bytes are errors.
func ParseSize(s string) (int64, error) {
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
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit, such as 512M or 1GiB", s)
	}
	return int64(f * mult), nil
}

// FormatSize writes a size exactly, the way ParseSize reads it: in the
// largest binary unit that divides it ("3GiB", "64KiB"), else in bytes
// ("1000").
func FormatSize(n int64) string {
	for _, u := range []struct {
		name  string
		shift uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// HumanSize formats a size for people to read, in binary units with one
// decimal: 512 B, 1.5 KiB, 12.0 MiB (listings, pe doctor). FormatSize is
// the exact form flags take.
func HumanSize(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n)/1024, 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

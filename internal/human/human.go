// Package human formats quantities for people to read: the CLI's listings
// and the engine's description of the host (pe doctor) share it.
package human

import "fmt"

// Bytes formats a size with binary units: 512 B, 1.5 KiB, 12.0 MiB.
func Bytes(n int64) string {
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

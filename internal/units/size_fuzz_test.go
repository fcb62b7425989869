package units

import "testing"

// FuzzParseSize checks that ParseSize never panics on what a user may
// type and that what it accepts is a size in range that FormatSize
// writes back to the same number of bytes.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "512M", "1.5 KiB", "2GB", "1e30GB", "-1", "lots", " 3 tib ", ".", "9999999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 0 || n > 1<<62 {
			t.Fatalf("ParseSize(%q) = %d, out of range", s, n)
		}
		if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
			t.Fatalf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, FormatSize(n), back, err)
		}
	})
}

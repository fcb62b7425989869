package units

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0}, {"1024", 1024}, {"2GiB", 2 << 30}, {"500MB", 500e6}, {"512m", 512 << 20}, {"1.5 KiB", 1536}, {"10b", 10},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "lots", "-1", "5XB", "1e30GB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q): no error", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0"}, {1000, "1000"}, {1024, "1KiB"}, {64 << 30, "64GiB"}, {3 << 30, "3GiB"}, {1536, "1536"}, {2 << 40, "2TiB"},
	} {
		got := FormatSize(tc.in)
		if got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
		if n, err := ParseSize(got); err != nil || n != tc.in {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", tc.in, got, n, err)
		}
	}
}

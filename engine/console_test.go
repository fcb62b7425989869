package engine

import (
	"bytes"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLineWatch(t *testing.T) {
	const line = "pe-init: result ready"
	tests := []struct {
		name   string
		writes []string
		seen   bool
	}{
		{"one write", []string{"boot\n" + line + "\n"}, true},
		{"split in the line", []string{"boot\npe-init: res", "ult ready\n"}, true},
		{"split at every byte", splitBytes("x\n" + line + "\nmore"), true},
		{"newline in its own write", []string{"boot\n", line, "\n"}, true},
		{"not alone on its line", []string{"[ 1.0] " + line + "\n"}, false},
		{"no end of line yet", []string{"boot\n" + line}, false},
		{"another line", []string{"boot\npe-init: result ready soon\n"}, false},
		{"twice", []string{"\n" + line + "\n", "\n" + line + "\n"}, true},
		// A serial console's terminal (ONLCR) ends lines in "\r\n".
		{"terminal line ends", []string{"boot\r\n" + line + "\r\n[ 3.9] reboot"}, true},
		{"terminal line ends split", splitBytes("\r\n" + line + "\r\n"), true},
		{"carriage return alone", []string{"\r\n" + line + "\rx"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got bytes.Buffer
			w := newLineWatch(&got, line)
			for _, s := range tt.writes {
				n, err := w.Write([]byte(s))
				if err != nil || n != len(s) {
					t.Fatalf("Write(%q) = %d, %v", s, n, err)
				}
			}
			seen := false
			select {
			case <-w.seen:
				seen = true
			default:
			}
			if seen != tt.seen {
				t.Errorf("seen = %v, want %v", seen, tt.seen)
			}
			var all string
			for _, s := range tt.writes {
				all += s
			}
			if diff := cmp.Diff(all, got.String()); diff != "" {
				t.Errorf("console passed on (-want +got):\n%s", diff)
			}
		})
	}
}

func splitBytes(s string) []string {
	var out []string
	for i := range len(s) {
		out = append(out, s[i:i+1])
	}
	return out
}

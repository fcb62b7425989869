package vmm

import "testing"

func TestMarkerWriter(t *testing.T) {
	seen := func(w *MarkerWriter) bool {
		select {
		case <-w.Seen():
			return true
		default:
			return false
		}
	}
	for _, c := range []struct {
		name   string
		writes []string
		want   bool
	}{
		{"one write", []string{"boot\nREADY\n"}, true},
		{"split", []string{"boot RE", "A", "DY"}, true},
		{"byte by byte", []string{"R", "E", "A", "D", "Y"}, true},
		{"prefix only", []string{"READ", "\nY"}, false},
		{"nothing", nil, false},
		{"then more", []string{"READY", "READY", "more"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := NewMarkerWriter([]byte("READY"))
			for _, s := range c.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if got := seen(w); got != c.want {
				t.Errorf("seen %v, want %v", got, c.want)
			}
		})
	}
}

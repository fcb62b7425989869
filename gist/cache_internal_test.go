package gist

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestEvictLRU checks eviction against what other processes do between
// the scan and the removals: evict the same entries, or use them.
func TestEvictLRU(t *testing.T) {
	base := time.Now().Add(-time.Hour)
	for _, tt := range []struct {
		name string
		// vanish are removed, touch used, after the scan.
		vanish, touch []string
		keep          string
		target        int64
		want          []string // left on disk
		wantTotal     int64
	}{
		{name: "least recently used first", target: 20, want: []string{"c", "d"}, wantTotal: 20},
		{name: "nothing to evict", target: 40, want: []string{"a", "b", "c", "d"}, wantTotal: 40},
		{name: "removed by another process", vanish: []string{"a"}, target: 20, want: []string{"c", "d"}, wantTotal: 20},
		{name: "all removed by another process", vanish: []string{"a", "b", "c", "d"}, target: 0, wantTotal: 0},
		{name: "used since the scan", touch: []string{"b"}, target: 20, want: []string{"b", "d"}, wantTotal: 20},
		{name: "the entry being replaced", keep: "a", target: 10, want: []string{"a", "d"}, wantTotal: 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var files []cacheFile
			var total int64
			// Listed out of order: evictLRU sorts by use.
			for _, name := range []string{"c", "a", "d", "b"} {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, make([]byte, 10), 0o644); err != nil {
					t.Fatal(err)
				}
				used := base.Add(time.Duration(name[0]-'a') * time.Minute)
				if err := os.Chtimes(p, used, used); err != nil {
					t.Fatal(err)
				}
				files = append(files, cacheFile{path: p, size: 10, used: used})
				if name != tt.keep {
					total += 10
				}
			}
			for _, name := range tt.vanish {
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
			for _, name := range tt.touch {
				now := time.Now()
				if err := os.Chtimes(filepath.Join(dir, name), now, now); err != nil {
					t.Fatal(err)
				}
			}
			keep := ""
			if tt.keep != "" {
				keep = filepath.Join(dir, tt.keep)
			}
			gotTotal := evictLRU(files, total, tt.target, keep)
			ents, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			slices.Sort(got)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("left on disk (-want +got):\n%s", diff)
			}
			if gotTotal != tt.wantTotal {
				t.Errorf("total %d, want %d", gotTotal, tt.wantTotal)
			}
		})
	}
}

package fusedisk

import (
	"strings"
	"testing"
)

// FuzzMountinfo feeds arbitrary bytes to the mountinfo parser: it must
// never panic, and a directory it finds must be one the text names.
func FuzzMountinfo(f *testing.F) {
	f.Add([]byte("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"), "/")
	f.Add([]byte("91 90 0:51 / /m\\040x rw - fuse.pe pe-lazy ro\n"), "/m x")
	f.Add([]byte("1 2 3 4 /a\\13\n5 6 7 8 /b - -\n"), "/a")
	f.Fuzz(func(t *testing.T, info []byte, dir string) {
		typ, ok := fsTypeIn(info, dir)
		if ok != MountedIn(info, dir) {
			t.Fatal("fsTypeIn and MountedIn disagree")
		}
		if !ok && typ != "" {
			t.Fatalf("type %q for a directory not mounted", typ)
		}
		if ok && typ != "" && !strings.Contains(string(info), typ) {
			t.Fatalf("type %q not in the input", typ)
		}
		if u := unescapeMountinfo(dir); len(u) > len(dir) {
			t.Fatalf("unescaping %q grew it to %q", dir, u)
		}
	})
}

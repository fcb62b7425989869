package guestinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// warmTree makes an image-like tree: a shell reached through links, files
// in PATH and library directories, others elsewhere, a hard link and links
// that point out of the root.
func warmTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"usr/bin/busybox":           "0123456789",
		"usr/bin/env":               "env",
		"usr/sbin/init":             "init",
		"lib/x86_64-linux-gnu/libc": "libc",
		"etc/passwd":                "root:x:0:0::/root:/bin/sh\n",
		"srv/data/big":              strings.Repeat("b", 100),
		"home/a/.profile":           "p",
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Merged /usr: /bin is a link, and the shell a link to busybox.
	must(os.Symlink("usr/bin", filepath.Join(root, "bin")))
	must(os.Symlink("busybox", filepath.Join(root, "usr/bin/sh")))
	// The same file under a second name is read once.
	must(os.Link(filepath.Join(root, "usr/bin/env"), filepath.Join(root, "usr/bin/printenv")))
	// Links out of the root resolve inside it, here to nothing.
	outside := filepath.Join(t.TempDir(), "secret")
	must(os.WriteFile(outside, []byte("must not be read"), 0o644))
	must(os.Symlink(outside, filepath.Join(root, "usr/bin/abs")))
	must(os.Symlink("../../../../../../../../"+outside, filepath.Join(root, "usr/bin/rel")))
	return root
}

func TestWarmImage(t *testing.T) {
	root := warmTree(t)
	for _, tc := range []struct {
		name     string
		budget   int64
		deadline time.Duration
		want     []string
		bytes    int64
		cut      bool
	}{
		{
			name:   "all of it, likely files first",
			budget: 1 << 20, deadline: time.Minute,
			want: []string{
				"bin/sh",                                        // the shell first, through its links
				"usr/bin/env",                                   // then the PATH directories, printenv being env
				"usr/sbin/init",                                 //
				"lib/x86_64-linux-gnu/libc",                     // the library directories
				"etc/passwd", "home/a/.profile", "srv/data/big", // the rest, in walk order
			},
			bytes: 10 + 3 + 4 + 4 + 26 + 1 + 100,
		},
		{
			name:   "the budget cuts it short",
			budget: 12, deadline: time.Minute,
			want:  []string{"bin/sh", "usr/bin/env"},
			bytes: 12,
			cut:   true,
		},
		{
			name:   "a deadline already past reads nothing",
			budget: 1 << 20, deadline: -time.Second,
			cut: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ws, err := warmImage(root, tc.budget, time.Now().Add(tc.deadline))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, ws.Paths); diff != "" {
				t.Errorf("files read (-want +got):\n%s", diff)
			}
			if ws.Bytes != tc.bytes || ws.Cut != tc.cut {
				t.Errorf("read %d bytes, cut %v; want %d, %v", ws.Bytes, ws.Cut, tc.bytes, tc.cut)
			}
		})
	}
}

func TestWarmImageNoRoot(t *testing.T) {
	if _, err := warmImage(filepath.Join(t.TempDir(), "missing"), 1<<20, time.Now().Add(time.Minute)); err == nil {
		t.Error("warming a missing root gave no error")
	}
}

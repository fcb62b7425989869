package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pe-project/pe/erofs"
)

func TestBuildCompressed(t *testing.T) {
	src := makeTree(t)
	if err := os.WriteFile(filepath.Join(src, "text"), []byte(strings.Repeat("compress me, again and again\n", 5000)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--compress", "lz4"},
		{"--compress", "lz4hc:12", "--pcluster-size", "64K", "--compress-index", "full"},
		{"--compress", "lz4hc", "--pcluster-size", "16384"},
	} {
		img := filepath.Join(t.TempDir(), "out.erofs")
		if _, _, err := run(t, "", append([]string{"image", "build-erofs", src, "-o", img}, args...)...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		f, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		fsys, err := erofs.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := fsys.Stat("text")
		if err != nil {
			t.Fatal(err)
		}
		if l := fi.Sys().(*erofs.Stat).Layout; l != 1 && l != 3 {
			t.Errorf("%v: text has layout %d, want a compressed one", args, l)
		}
		if b, err := fsys.ReadFile("text"); err != nil || len(b) != 5000*29 {
			t.Errorf("%v: ReadFile(text): %d bytes, %v", args, len(b), err)
		}
		f.Close()
	}
}

func TestBuildCompressedUsage(t *testing.T) {
	src := makeTree(t)
	img := filepath.Join(t.TempDir(), "out.erofs")
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--compress", "zstd"}, "not lz4 or lz4hc"},
		{[]string{"--compress", "lz4:3"}, "lz4 takes no level"},
		{[]string{"--compress", "lz4hc:13"}, "1 to 12"},
		{[]string{"--compress", "lz4", "--pcluster-size", "lots"}, "not a size"},
		{[]string{"--compress", "lz4", "--compress-index", "tiny"}, "not compact or full"},
		{[]string{"--pcluster-size", "16K"}, "need --compress"},
		{[]string{"--compress", "lz4", "--pcluster-size", "5000"}, "multiple of the block size"},
	} {
		_, _, err := run(t, "", append([]string{"image", "build-erofs", src, "-o", img}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: error %v, want one saying %q", tc.args, err, tc.msg)
		}
	}
	if _, err := os.Stat(img); err == nil {
		t.Errorf("a failed build left %s behind", img)
	}
}

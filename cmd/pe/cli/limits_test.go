package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pe-project/pe/erofs"
)

// TestBuildEROFSDockerArchiveTar builds from docker-archive:PATH.tar: the
// .tar suffix once made build-erofs take the reference for a missing file.
func TestBuildEROFSDockerArchiveTar(t *testing.T) {
	isolate(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "img.tar")
	tag, err := name.NewTag("local/hello:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(archive, tag, filesImage(t, map[string]string{"hello.txt": "hello from an archive\n"})); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.erofs")
	if _, stderr, err := run(t, "", "image", "build-erofs", "--cache-dir", t.TempDir(), "docker-archive:"+archive, "-o", out); err != nil {
		t.Fatalf("build-erofs docker-archive:%s: %v (stderr %q)", archive, err, stderr)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := erofs.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := fsys.ReadFile("hello.txt"); err != nil || string(b) != "hello from an archive\n" {
		t.Errorf("hello.txt: %q, %v", b, err)
	}
	// A missing archive is reported as such, not as a missing file.
	_, _, err = run(t, "", "image", "build-erofs", "--cache-dir", t.TempDir(), "docker-archive:"+filepath.Join(dir, "none.tar"), "-o", out)
	if err == nil || strings.HasPrefix(err.Error(), "docker-archive:") {
		t.Errorf("missing archive: %v", err)
	}
}

// TestImageLimitFlags checks the limit flags reach the conversion: a tar
// file of 100 KiB is refused under --max-image-unpacked 64KiB, with the
// flag named, and nothing is left beside the output.
func TestImageLimitFlags(t *testing.T) {
	isolate(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "big.tar")
	if err := os.WriteFile(src, tarOf(t, map[string]string{"big": strings.Repeat("x", 100<<10)}, true), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.erofs")
	for _, c := range []struct {
		args []string
		want string // "" for success
	}{
		{[]string{"--max-image-unpacked", "64KiB"}, "image exceeds --max-image-unpacked 64KiB"},
		{[]string{"--max-image-entries", "1"}, ""},
		{[]string{"--max-image-depth", "1"}, ""},
		{[]string{"--max-image-unpacked", "lots"}, "--max-image-unpacked \"lots\""},
		{nil, ""},
	} {
		_, _, err := run(t, "", append([]string{"image", "build-erofs", src, "-o", out}, c.args...)...)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%v: %v, want an error with %q", c.args, err, c.want)
		}
		des, _ := os.ReadDir(dir)
		if len(des) > 2 {
			t.Errorf("%v: %d files in %s, want big.tar and out.erofs at most", c.args, len(des), dir)
		}
		os.Remove(out)
	}
}

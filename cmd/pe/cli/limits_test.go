package cli

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

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

// rawTarHeader is a ustar header block, written by hand: archive/tar
// refuses to write GNU sparse records.
func rawTarHeader(name string, typ byte, size int64) []byte {
	b := make([]byte, 512)
	copy(b, name)
	copy(b[100:], "0000644\x000000000\x000000000\x00")
	copy(b[124:], fmt.Sprintf("%011o\x0014616100731\x00        ", size))
	b[156] = typ
	copy(b[257:], "ustar\x0000")
	sum := 0
	for _, c := range b {
		sum += int(c)
	}
	copy(b[148:], fmt.Sprintf("%06o\x00 ", sum))
	return b
}

func padBlocks(b []byte) []byte { return append(b, make([]byte, (512-len(b)%512)%512)...) }

// hostileLayers are layers a hostile image may hold, as compressed blobs.
func hostileLayers(t *testing.T) map[string][]byte {
	t.Helper()
	gz := func(write func(w io.Writer)) []byte {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		write(zw)
		zw.Close()
		return buf.Bytes()
	}
	pax := ""
	for _, kv := range [][2]string{{"GNU.sparse.major", "1"}, {"GNU.sparse.minor", "0"}, {"GNU.sparse.name", "big"}, {"GNU.sparse.realsize", "1099511627776"}} {
		rec := " " + kv[0] + "=" + kv[1] + "\n"
		n := len(rec) + 2 // two-digit lengths
		pax += strconv.Itoa(n) + rec
	}
	data := append(padBlocks([]byte("1\n0\n4\n")), "data"...)
	sparse := slices.Concat(rawTarHeader("PaxHeaders/big", 'x', int64(len(pax))), padBlocks([]byte(pax)),
		rawTarHeader("GNUSparseFile.0/big", '0', int64(len(data))), padBlocks(data), make([]byte, 1024))
	return map[string][]byte{
		"sparse": gz(func(w io.Writer) { w.Write(sparse) }),
		"gzip": gz(func(w io.Writer) {
			w.Write(rawTarHeader("zeros", '0', 256<<20))
			for range 257 {
				w.Write(make([]byte, 1<<20))
			}
		}),
		"entries": gz(func(w io.Writer) {
			for i := range 1_000_000 {
				w.Write(rawTarHeader(fmt.Sprintf("d%x/%x", i/1000, i%1000), '0', 0))
			}
			w.Write(make([]byte, 1024))
		}),
	}
}

// TestRunHostileImages runs images with a sparse bomb (1 TiB declared in
// a few KiB), a gzip bomb (256 MiB of zeros) and a million empty files
// from a registry: pe run fails before any VM boots, with the limit
// named, and the cache holds no image and nothing half-written.
func TestRunHostileImages(t *testing.T) {
	vmSetup(t)
	host := testRegistry(t)
	for repo, blob := range hostileLayers(t) {
		layer := static.NewLayer(blob, types.DockerLayer)
		img, err := mutate.AppendLayers(filesImage(t, map[string]string{"etc/hello": "hi\n"}), layer)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(host+"/hostile/"+repo+":1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		image string
		flags []string
		want  string
	}{
		{"sparse", nil, `image exceeds --max-image-unpacked 64GiB at layer sha256:`},
		{"gzip", []string{"--max-image-unpacked", "64MiB"}, `image exceeds --max-image-unpacked 64MiB at layer sha256:`},
		{"entries", []string{"--max-image-entries", "100000"}, `image exceeds --max-image-entries 100000 at layer sha256:`},
	} {
		t.Run(c.image, func(t *testing.T) {
			cache := t.TempDir()
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			start := time.Now()
			args := append([]string{"run", "--accel", "tcg", "--cache-dir", cache}, c.flags...)
			_, _, err := run(t, "", append(args, host+"/hostile/"+c.image+":1", "true")...)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("pe run: %v, want an error with %q", err, c.want)
			}
			t.Logf("%v after %v", err, time.Since(start))
			des, _ := os.ReadDir(filepath.Join(cache, "images", "sha256"))
			for _, de := range des {
				t.Errorf("left in the cache: images/sha256/%s", de.Name())
			}
			des, _ = os.ReadDir(tmp)
			for _, de := range des {
				t.Errorf("left in TMPDIR: %s", de.Name())
			}
		})
	}
}

// TestImageLimitDefaults checks each command's defaults: finite entries
// and depth everywhere, the original's limits for pe serve.
func TestImageLimitDefaults(t *testing.T) {
	got := map[string][]string{}
	for _, path := range [][]string{{"serve"}, {"run"}, {"image", "pull"}, {"image", "build-erofs"}} {
		cmd, _, err := New().Find(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"max-image-size", "max-image-unpacked", "max-image-entries", "max-image-depth"} {
			got[strings.Join(path, " ")] = append(got[strings.Join(path, " ")], cmd.Flags().Lookup(f).DefValue)
		}
	}
	cli := []string{"0", "64GiB", "2000000", "256"}
	want := map[string][]string{"serve": {"2GB", "3GiB", "500000", "256"}, "run": cli, "image pull": cli, "image build-erofs": cli}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults of --max-image-size, -unpacked, -entries, -depth (-want +got):\n%s", diff)
	}
}

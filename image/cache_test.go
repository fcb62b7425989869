package image

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/ulikunitz/xz"

	"github.com/pe-project/pe/erofs"
)

func TestParseReference(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for _, p := range []string{"layout", "odd:name", "img.tar"} {
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		in, want  string
		transport Transport
		wantErr   string
	}{
		{in: "busybox", want: "index.docker.io/library/busybox:latest", transport: TransportRegistry},
		{in: "docker://busybox:1.36", want: "index.docker.io/library/busybox:1.36", transport: TransportRegistry},
		{in: "docker.io/library/gcc:14", want: "index.docker.io/library/gcc:14", transport: TransportRegistry},
		{in: "ghcr.io/o/x", want: "ghcr.io/o/x:latest", transport: TransportRegistry},
		{in: "localhost:5000/x:tag", want: "localhost:5000/x:tag", transport: TransportRegistry},
		{in: "busybox@" + digest, want: "index.docker.io/library/busybox@" + digest, transport: TransportRegistry},
		{in: "oci:layout", want: "oci:" + dir + "/layout", transport: TransportOCI},
		{in: "oci:layout:v1", want: "oci:" + dir + "/layout:v1", transport: TransportOCI},
		{in: "oci:layout@" + digest, want: "oci:" + dir + "/layout@" + digest, transport: TransportOCI},
		{in: "oci:odd:name", want: "oci:" + dir + "/odd:name", transport: TransportOCI},
		{in: "oci:odd:name:v2", want: "oci:" + dir + "/odd:name:v2", transport: TransportOCI},
		{in: "oci:/abs/dir", want: "oci:/abs/dir", transport: TransportOCI},
		{in: "docker-archive:img.tar", want: "docker-archive:" + dir + "/img.tar", transport: TransportDockerArchive},
		{in: "docker-archive:img.tar:busybox:1", want: "docker-archive:" + dir + "/img.tar:index.docker.io/library/busybox:1", transport: TransportDockerArchive},
		{in: "docker-archive:missing.tar:x", want: "docker-archive:" + dir + "/missing.tar:index.docker.io/library/x:latest", transport: TransportDockerArchive},
		{in: "", wantErr: "empty reference"},
		{in: "Busybox", wantErr: "lowercase"},
		{in: "https://ghcr.io/x", wantErr: "URL scheme"},
		{in: "busybox:bad tag", wantErr: "invalid image reference"},
		{in: "busybox@sha256:123", wantErr: "invalid image reference"},
		{in: "oci:", wantErr: "oci: needs the path"},
		{in: "./layout", wantErr: "use oci:PATH"},
		{in: "oci:layout@sha256:xyz", wantErr: "digest"},
		{in: "docker-archive:", wantErr: "needs the path"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			r, err := ParseReference(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.String() != tc.want || r.Transport() != tc.transport {
				t.Errorf("got %q (%s), want %q (%s)", r, r.Transport(), tc.want, tc.transport)
			}
			again, err := ParseReference(r.String())
			if err != nil || again.String() != r.String() {
				t.Errorf("reparsing %q: %q, %v", r, again, err)
			}
		})
	}
	if got := mustRef(t, "busybox").Familiar(); got != "busybox:latest" {
		t.Errorf("Familiar: %q", got)
	}
}

func TestOCILayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout:with:colons")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	img := baseImage(t)
	other := fakeImage(t, DefaultPlatform(), fakeLayer(t, false, fakeEntry{name: "other", body: "x"}))
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: "v1"})); err != nil {
		t.Fatal(err)
	}
	c := testCache(t)
	// One image: no tag needed.
	got, err := c.Get(t.Context(), mustRef(t, "oci:"+dir), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, img) {
		t.Errorf("digest %s, want %s", got.Digest, digestOf(t, img))
	}
	if diff := cmp.Diff(baseFiles, readImageFiles(t, got.EROFSPath)); diff != "" {
		t.Errorf("image files (-want +got):\n%s", diff)
	}

	if err := p.AppendImage(other, layout.WithAnnotations(map[string]string{refNameAnnotation: "v2"})); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ref     string
		want    v1.Hash
		wantErr string
	}{
		{ref: "oci:" + dir + ":v1", want: digestOf(t, img)},
		{ref: "oci:" + dir + ":v2", want: digestOf(t, other)},
		{ref: "oci:" + dir + "@" + digestOf(t, other).String(), want: digestOf(t, other)},
		{ref: "oci:" + dir, wantErr: "holds 2 images: choose one"},
		{ref: "oci:" + dir + ":v3", wantErr: `no image tagged "v3" (tags: v1, v2)`},
		{ref: "oci:" + dir + "@sha256:" + strings.Repeat("0", 64), wantErr: "missing from the layout"},
		{ref: "oci:" + filepath.Dir(dir), wantErr: "not an OCI image layout"},
		{ref: "oci:/nonexistent/layout", wantErr: "not found"},
	} {
		t.Run(tc.ref, func(t *testing.T) {
			got, err := c.Get(t.Context(), mustRef(t, tc.ref), PullOptions{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != tc.want {
				t.Errorf("digest %s, want %s", got.Digest, tc.want)
			}
		})
	}

	// A layout blob that does not match its digest is refused, and
	// nothing is cached for it.
	c2 := testCache(t)
	h := layerDigests(t, img)[0]
	blob := filepath.Join(dir, "blobs", "sha256", h.Hex)
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = c2.Get(t.Context(), mustRef(t, "oci:"+dir+":v1"), PullOptions{})
	if !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("corrupt layout blob: %v, want ErrDigestMismatch", err)
	}
	if files := cacheFiles(t, c2); len(files) != 0 {
		t.Errorf("cache holds %v after a failed conversion", files)
	}
}

func TestDockerArchive(t *testing.T) {
	dir := t.TempDir()
	img := baseImage(t)
	other := fakeImage(t, DefaultPlatform(), fakeLayer(t, false, fakeEntry{name: "other", body: "x"}))
	single := filepath.Join(dir, "single.tar")
	if err := tarball.WriteToFile(single, name.MustParseReference("base:1"), img); err != nil {
		t.Fatal(err)
	}
	multi := filepath.Join(dir, "multi.tar")
	err := tarball.MultiWriteToFile(multi, map[name.Tag]v1.Image{
		name.MustParseReference("base:1").(name.Tag):  img,
		name.MustParseReference("other:2").(name.Tag): other,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := testCache(t)
	configName := func(img v1.Image) v1.Hash {
		h, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, tc := range []struct {
		ref     string
		want    v1.Hash
		wantErr string
	}{
		{ref: "docker-archive:" + single, want: configName(img)},
		{ref: "docker-archive:" + single + ":base:1", want: configName(img)},
		{ref: "docker-archive:" + multi + ":other:2", want: configName(other)},
		{ref: "docker-archive:" + multi + ":docker.io/library/base:1", want: configName(img)},
		{ref: "docker-archive:" + multi, wantErr: "holds 2 images"},
		{ref: "docker-archive:" + multi + ":nope:1", wantErr: "no image tagged"},
		{ref: "docker-archive:" + dir + "/missing.tar", wantErr: "not found"},
	} {
		t.Run(filepath.Base(tc.ref), func(t *testing.T) {
			got, err := c.Get(t.Context(), mustRef(t, tc.ref), PullOptions{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != tc.want {
				t.Errorf("digest %s, want %s", got.Digest, tc.want)
			}
			if got.Digest == configName(img) {
				if diff := cmp.Diff(baseFiles, readImageFiles(t, got.EROFSPath)); diff != "" {
					t.Errorf("image files (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// xzTar returns entries as a .tar.xz.
func xzTar(t *testing.T, entries ...fakeEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(fakeTar(t, entries...)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestImport(t *testing.T) {
	fr := newFakeRegistry(t)
	base := fr.push(t, "ubuntu:22.04", baseImage(t))
	tarPath := filepath.Join(t.TempDir(), "clang-20.tar.xz")
	err := os.WriteFile(tarPath, xzTar(t,
		fakeEntry{name: "clang-20/"},
		fakeEntry{name: "clang-20/bin/"},
		fakeEntry{name: "clang-20/bin/clang", body: "ELF clang"},
		fakeEntry{name: "clang-20/bin/.wh.sh", body: "not a whiteout in a tarball"},
		fakeEntry{name: "clang-20/lib/"},
		fakeEntry{name: "clang-20/lib/libc++.so", body: "ELF lib"},
	), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	c := testCache(t)
	log, converted := countingLog(t)
	opts := ImportOptions{Tar: tarPath, StripComponents: 1, Prefix: "/usr", Base: base, Tag: "clang:20", Pull: PullOptions{Log: log}}
	got, err := c.Import(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"usr/":              "",
		"usr/bin/":          "",
		"usr/bin/clang":     "ELF clang",
		"usr/bin/.wh.sh":    "not a whiteout in a tarball",
		"usr/lib/":          "",
		"usr/lib/libc++.so": "ELF lib",
	}
	for k, v := range baseFiles {
		want[k] = v
	}
	if diff := cmp.Diff(want, readImageFiles(t, got.EROFSPath)); diff != "" {
		t.Errorf("image files (-want +got):\n%s", diff)
	}
	if got.Reference != "index.docker.io/library/clang:20" || !got.Local {
		t.Errorf("reference %q local %v", got.Reference, got.Local)
	}
	// /usr/bin is on the base's PATH already.
	if diff := cmp.Diff([]string{"PATH=/usr/bin:/bin"}, got.Config.Config.Env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}

	// The same import again: same digest, no conversion.
	again, err := c.Import(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != got.Digest || converted() != 1 { // the base is not converted, only its blobs fetched
		t.Errorf("second import: digest %s (first %s), %d conversions", again.Digest, got.Digest, converted())
	}

	// Run by its name: from the cache, never from a registry.
	fr.reset()
	byName, err := c.Get(t.Context(), mustRef(t, "clang:20"), PullOptions{Policy: PullMissing})
	if err != nil {
		t.Fatal(err)
	}
	if byName.Digest != got.Digest || fr.count("", "") != 0 {
		t.Errorf("Get clang:20: digest %s, %d requests", byName.Digest, fr.count("", ""))
	}
	if _, err := c.Pull(t.Context(), mustRef(t, "clang:20"), PullOptions{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Pull of an imported image: %v, want ErrUnsupported", err)
	}

	// Another prefix goes first in PATH; no base gives a minimal config.
	opt2 := ImportOptions{Tar: tarPath, StripComponents: 1, Prefix: "opt/clang", Tag: "local/clang:bare"}
	bare, err := c.Import(t.Context(), opt2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"PATH=/opt/clang/bin:" + defaultPath}, bare.Config.Config.Env); diff != "" {
		t.Errorf("env (-want +got):\n%s", diff)
	}
	if files := readImageFiles(t, bare.EROFSPath); files["opt/clang/bin/clang"] != "ELF clang" || files["bin/sh"] != "" {
		t.Errorf("bare import files: %v", files)
	}

	// The tarball form of build-erofs writes the same tree to a file.
	out := filepath.Join(t.TempDir(), "clang.erofs")
	opts.Tag = ""
	if err := c.BuildImportEROFS(t.Context(), out, opts, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, readImageFiles(t, out)); diff != "" {
		t.Errorf("BuildImportEROFS files (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		desc    string
		opts    ImportOptions
		wantErr string
	}{
		{"no tag", ImportOptions{Tar: tarPath}, "--tag"},
		{"digest tag", ImportOptions{Tar: tarPath, Tag: "x@sha256:" + strings.Repeat("0", 64)}, "want a name"},
		{"missing tarball", ImportOptions{Tar: tarPath + ".missing", Tag: "x:1"}, "no such file"},
		{"imported base", ImportOptions{Tar: tarPath, Tag: "x:1", Base: mustRef(t, "clang:20")}, "imported image"},
		{"negative strip", ImportOptions{Tar: tarPath, Tag: "x:1", StripComponents: -1}, "negative"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, err := c.Import(t.Context(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestExportAndBuildImage(t *testing.T) {
	fr := newFakeRegistry(t)
	ref := fr.push(t, "export:1", baseImage(t))
	c := testCache(t)
	out := filepath.Join(t.TempDir(), "out.erofs")
	img, err := c.ExportEROFS(t.Context(), ref, out, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(img.EROFSPath)
	if !bytes.Equal(a, b) {
		t.Error("exported image differs from the cached one")
	}
	mtime := time.Unix(1, 0)
	out2 := filepath.Join(t.TempDir(), "out2.erofs")
	if err := c.BuildImageEROFS(t.Context(), ref, out2, PullOptions{}, BuildOptions{Writer: erofs.WriterOptions{ModTime: &mtime}}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(baseFiles, readImageFiles(t, out2)); diff != "" {
		t.Errorf("image files (-want +got):\n%s", diff)
	}
}

func TestRemoveAndPrune(t *testing.T) {
	fr := newFakeRegistry(t)
	imgs := make([]v1.Image, 3)
	refs := make([]Reference, 3)
	for i := range imgs {
		imgs[i] = fakeImage(t, DefaultPlatform(), fakeLayer(t, false, fakeEntry{name: "n", body: strings.Repeat("x", 1000*(i+1))}))
		refs[i] = fr.push(t, "img:"+string(rune('a'+i)), imgs[i])
	}
	c := testCache(t)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return clock }
	// Used in the order 1, 0, 2: image 1 is the least recently used.
	for _, i := range []int{1, 0, 2} {
		clock = clock.Add(time.Minute)
		if _, err := c.Get(t.Context(), refs[i], PullOptions{TagTTL: time.Hour * 1000}); err != nil {
			t.Fatal(err)
		}
	}
	// A second tag for image 0, used last: the LRU order is 1, 2, 0.
	alias := fr.push(t, "alias:1", imgs[0])
	clock = clock.Add(time.Minute)
	if _, err := c.Get(t.Context(), alias, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	listed := func() []string {
		list, err := c.List(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, img := range list {
			out = append(out, FamiliarName(img.Reference)+" "+img.Digest.Hex[:8])
		}
		return out
	}
	short := func(i int) string { return digestOf(t, imgs[i]).Hex[:8] }
	want := []string{
		fr.host + "/alias:1 " + short(0),
		fr.host + "/img:a " + short(0),
		fr.host + "/img:b " + short(1),
		fr.host + "/img:c " + short(2),
	}
	if diff := cmp.Diff(want, listed()); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}

	// Removing one of two tags keeps the image.
	rep, err := c.Remove(t.Context(), alias)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Deleted) != 0 || len(rep.Untagged) != 1 {
		t.Errorf("remove alias: %+v", rep)
	}
	if _, err := c.Remove(t.Context(), alias); !errors.Is(err, ErrNotFound) {
		t.Errorf("removing again: %v, want ErrNotFound", err)
	}

	// Prune to the size of the most recently used image alone: LRU order
	// evicts image 1, then image 2.
	entries, _, err := c.scanImages()
	if err != nil {
		t.Fatal(err)
	}
	limit := c.footprint([]*cachedEntry{entries[digestOf(t, imgs[0]).Hex]})
	rep, err = c.Prune(t.Context(), PruneOptions{MaxSize: limit})
	if err != nil {
		t.Fatal(err)
	}
	gotDeleted := []string{}
	for _, h := range rep.Deleted {
		gotDeleted = append(gotDeleted, h.Hex[:8])
	}
	wantDeleted := []string{short(1), short(2)}
	slices.Sort(wantDeleted)
	if diff := cmp.Diff(wantDeleted, gotDeleted); diff != "" {
		t.Errorf("pruned (-want +got):\n%s", diff)
	}
	if rep.Blobs != 2 || rep.Bytes == 0 {
		t.Errorf("prune report %+v, want 2 blobs and some bytes", rep)
	}
	if diff := cmp.Diff([]string{fr.host + "/img:a " + short(0)}, listed()); diff != "" {
		t.Errorf("List after prune (-want +got):\n%s", diff)
	}

	// Remove by ID prefix, then nothing is left.
	if _, err := c.RemoveID(t.Context(), short(0)); err != nil {
		t.Fatal(err)
	}
	if files := cacheFiles(t, c); len(files) != 0 {
		t.Errorf("cache holds %v after removing everything", files)
	}
	if l := listed(); len(l) != 0 {
		t.Errorf("List: %v", l)
	}
}

func TestPruneLeftovers(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "moving:1", img)
	c := testCache(t)
	if _, err := c.Get(t.Context(), ref, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	// What a killed pe leaves: a half-written image directory, a blob
	// being downloaded, and an image directory without its EROFS image.
	for _, p := range []string{imagesDir + "/.tmp-abc-1/rootfs.erofs", blobsDir + "/.tmp-def-2", imagesDir + "/" + strings.Repeat("1", 64) + "/config.json"} {
		if err := os.MkdirAll(filepath.Dir(c.path(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.path(p), []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The tag moves: the old image is dangling.
	fr.push(t, "moving:1", fakeImage(t, DefaultPlatform(), fakeLayer(t, false, fakeEntry{name: "new", body: "1"})))
	img2, err := c.Pull(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := c.Prune(t.Context(), PruneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]v1.Hash{digestOf(t, img)}, rep.Deleted); diff != "" {
		t.Errorf("pruned (-want +got):\n%s", diff)
	}
	want := []string{imagesDir + "/" + img2.Digest.Hex}
	for _, h := range cachedLayers(t, img2) {
		want = append(want, blobsDir+"/"+h.Hex)
	}
	got := cacheFiles(t, c)
	slices.Sort(want)
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cache after prune (-want +got):\n%s", diff)
	}
	// --all empties it.
	if _, err := c.Prune(t.Context(), PruneOptions{All: true}); err != nil {
		t.Fatal(err)
	}
	if files := cacheFiles(t, c); len(files) != 0 {
		t.Errorf("cache after prune --all: %v", files)
	}
}

// cachedLayers lists the layer digests in a cached image's manifest.json.
func cachedLayers(t *testing.T, img *CachedImage) []v1.Hash {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(filepath.Dir(img.EROFSPath), "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	var hs []v1.Hash
	for _, l := range m.Layers {
		hs = append(hs, l.Digest)
	}
	return hs
}

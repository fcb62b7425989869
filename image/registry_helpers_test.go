package image

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/compression"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/pe-project/pe/erofs"
)

func init() {
	// Registry retries in tests: milliseconds, not seconds.
	retryBackoff = remote.Backoff{Duration: time.Millisecond, Factor: 2, Steps: 4}
}

// fakeRegistry is ggcr's in-process registry behind an httptest server,
// recording every request; wrap, when set, sees each request first and
// answers it itself by returning true.
type fakeRegistry struct {
	host string
	srv  *httptest.Server

	mu       sync.Mutex
	requests []string // "GET /v2/…"
	wrap     func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
}

func newFakeRegistry(t *testing.T) *fakeRegistry {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	fr := &fakeRegistry{}
	fr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fr.mu.Lock()
		fr.requests = append(fr.requests, r.Method+" "+r.URL.Path)
		wrap := fr.wrap
		fr.mu.Unlock()
		if wrap != nil && wrap(w, r, reg) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(fr.srv.Close)
	fr.host = strings.TrimPrefix(fr.srv.URL, "http://")
	return fr
}

// setWrap replaces the request filter.
func (fr *fakeRegistry) setWrap(f func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) {
	fr.mu.Lock()
	fr.wrap = f
	fr.mu.Unlock()
}

// reset forgets the requests so far.
func (fr *fakeRegistry) reset() {
	fr.mu.Lock()
	fr.requests = nil
	fr.mu.Unlock()
}

// count returns how many requests so far start with prefix and contain
// substr ("", "" for all).
func (fr *fakeRegistry) count(prefix, substr string) int {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	n := 0
	for _, r := range fr.requests {
		if strings.HasPrefix(r, prefix) && strings.Contains(r, substr) {
			n++
		}
	}
	return n
}

// blobGets counts the GETs of the blobs of the layers of img.
func (fr *fakeRegistry) blobGets(t *testing.T, img v1.Image) int {
	t.Helper()
	n := 0
	for _, h := range layerDigests(t, img) {
		n += fr.count("GET /v2/", "/blobs/"+h.String())
	}
	return n
}

// push uploads img (or an index) as repo:tag and returns the reference.
func (fr *fakeRegistry) push(t *testing.T, repoTag string, img v1.Image) Reference {
	t.Helper()
	n, err := name.ParseReference(fr.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(n, img); err != nil {
		t.Fatalf("pushing %s: %v", n, err)
	}
	return mustRef(t, fr.host+"/"+repoTag)
}

func (fr *fakeRegistry) pushIndex(t *testing.T, repoTag string, idx v1.ImageIndex) Reference {
	t.Helper()
	n, err := name.ParseReference(fr.host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(n, idx); err != nil {
		t.Fatalf("pushing %s: %v", n, err)
	}
	return mustRef(t, fr.host+"/"+repoTag)
}

func mustRef(t *testing.T, s string) Reference {
	t.Helper()
	r, err := ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// fakeEntry is a tar entry of a test layer: a file (body), a directory
// (name ending in "/"), or a symlink (link set).
type fakeEntry struct {
	name, body, link string
}

// fakeTar returns a tar stream of entries.
func fakeTar(t *testing.T, entries ...fakeEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body)),
			ModTime: time.Unix(1700000000, 0)}
		switch {
		case strings.HasSuffix(e.name, "/"):
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeDir, 0o755, 0
		case e.link != "":
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, e.link, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// fakeLayer returns a gzip (or, with zstd, zstd) layer of entries.
func fakeLayer(t *testing.T, zstd bool, entries ...fakeEntry) v1.Layer {
	t.Helper()
	b := fakeTar(t, entries...)
	var opts []tarball.LayerOption
	if zstd {
		opts = append(opts, tarball.WithCompression(compression.ZStd))
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// fakeImage returns an image of layers for platform ("linux/amd64").
func fakeImage(t *testing.T, platform string, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Variant = p.OS, p.Architecture, p.Variant
	cfg.Config.Env = []string{"PATH=/usr/bin:/bin"}
	cfg.Config.Cmd = []string{"/bin/sh"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

// baseImage is a two-layer image whose second layer deletes and changes
// files of the first.
func baseImage(t *testing.T) v1.Image {
	t.Helper()
	return fakeImage(t, DefaultPlatform(),
		fakeLayer(t, false,
			fakeEntry{name: "etc/"}, fakeEntry{name: "etc/os-release", body: "NAME=fake\n"},
			fakeEntry{name: "bin/"}, fakeEntry{name: "bin/sh", body: "#!shell\n"},
			fakeEntry{name: "gone.txt", body: "deleted above\n"},
			fakeEntry{name: "hello.txt", body: "v1\n"}),
		fakeLayer(t, true,
			fakeEntry{name: ".wh.gone.txt"},
			fakeEntry{name: "hello.txt", body: "v2\n"},
			fakeEntry{name: "link", link: "hello.txt"}),
	)
}

// baseFiles is what baseImage flattens to.
var baseFiles = map[string]string{
	"bin/":           "",
	"bin/sh":         "#!shell\n",
	"etc/":           "",
	"etc/os-release": "NAME=fake\n",
	"hello.txt":      "v2\n",
	"link":           "-> hello.txt",
}

func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var hs []v1.Hash
	for _, l := range m.Layers {
		hs = append(hs, l.Digest)
	}
	return hs
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// readImageFiles reads an EROFS image back with pe's reader: files with
// their contents, directories with a trailing "/", symlinks as
// "-> target".
func readImageFiles(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := erofs.Open(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	files := map[string]string{}
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		switch {
		case d.IsDir():
			files[p+"/"] = ""
		case d.Type()&fs.ModeSymlink != 0:
			target, err := fs.ReadLink(fsys, p)
			if err != nil {
				return err
			}
			files[p] = "-> " + target
		default:
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			files[p] = string(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// testCache opens a cache in a temporary directory, with docker
// credentials isolated from the user's.
func testCache(t *testing.T) *Cache {
	t.Helper()
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	c, err := OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// countingLog returns a logger that counts "converted image" messages.
func countingLog(t *testing.T) (*slog.Logger, func() int) {
	h := &countHandler{Handler: slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})}
	return slog.New(h), func() int {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.converted
	}
}

type countHandler struct {
	slog.Handler
	mu        sync.Mutex
	converted int
}

func (h *countHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "converted image" {
		h.mu.Lock()
		h.converted++
		h.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

func (h *countHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &countHandler{Handler: h.Handler.WithAttrs(as)}
}

// cacheFiles lists what blobs/ and images/ of a cache hold.
func cacheFiles(t *testing.T, c *Cache) []string {
	t.Helper()
	var out []string
	for _, d := range []string{blobsDir, imagesDir} {
		des, err := os.ReadDir(c.path(d))
		if err != nil {
			t.Fatal(err)
		}
		for _, de := range des {
			out = append(out, d+"/"+de.Name())
		}
	}
	return out
}

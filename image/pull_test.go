package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/go-containerregistry/pkg/compression"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestPullByTagAndDigest(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "library/base:1", img)
	c := testCache(t)
	log, converted := countingLog(t)

	got, err := c.Pull(t.Context(), ref, PullOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if want := digestOf(t, img); got.Digest != want {
		t.Errorf("digest %s, want %s", got.Digest, want)
	}
	if diff := cmp.Diff(baseFiles, readImageFiles(t, got.EROFSPath)); diff != "" {
		t.Errorf("image files (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"/bin/sh"}, got.Config.Config.Cmd); diff != "" {
		t.Errorf("config cmd (-want +got):\n%s", diff)
	}
	// Blobs are readable by all, like the rest of the cache.
	for _, h := range layerDigests(t, img) {
		fi, err := os.Stat(c.blobPath(h))
		if err != nil {
			t.Fatal(err)
		}
		if perm := fi.Mode().Perm(); perm != 0o644 {
			t.Errorf("blob %s has mode %04o, want 0644", h, perm)
		}
	}
	if got.Platform != DefaultPlatform() {
		t.Errorf("platform %q, want %q", got.Platform, DefaultPlatform())
	}

	// By digest: the same cached image, no new conversion.
	byDigest := mustRef(t, fr.host+"/library/base@"+digestOf(t, img).String())
	got2, err := c.Get(t.Context(), byDigest, PullOptions{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if got2.EROFSPath != got.EROFSPath || got2.Reference != byDigest.String() {
		t.Errorf("by digest: got %s (%s), want %s", got2.EROFSPath, got2.Reference, got.EROFSPath)
	}
	if n := converted(); n != 1 {
		t.Errorf("%d conversions, want 1", n)
	}
	// Once recorded, a digest reference never goes to the network.
	fr.reset()
	if _, err := c.Pull(t.Context(), byDigest, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := fr.count("", ""); n != 0 {
		t.Errorf("pull by recorded digest made %d requests, want 0", n)
	}
}

func TestGetUsesCache(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "x/y:latest", img)
	c := testCache(t)
	if _, err := c.Get(t.Context(), ref, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	fr.reset()
	got, err := c.Get(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := fr.count("", ""); n != 0 {
		t.Errorf("second Get made %d requests, want 0", n)
	}
	if got.Digest != digestOf(t, img) {
		t.Errorf("digest %s, want %s", got.Digest, digestOf(t, img))
	}

	// A stale record is checked with one HEAD; the tag has not moved.
	c.now = func() time.Time { return time.Now().Add(2 * DefaultTagTTL) }
	if _, err := c.Get(t.Context(), ref, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if all, heads := fr.count("", ""), fr.count("HEAD /v2/x/y/manifests/", ""); heads != 1 || all > 2 {
		// ggcr may ping /v2/ first.
		t.Errorf("stale Get made %d requests with %d manifest HEADs, want one HEAD", all, heads)
	}

	// The tag moves: pull notices and converts the new image.
	img2 := fakeImage(t, DefaultPlatform(), fakeLayer(t, false, fakeEntry{name: "new.txt", body: "new\n"}))
	fr.push(t, "x/y:latest", img2)
	got, err = c.Pull(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != digestOf(t, img2) {
		t.Errorf("after the tag moved: digest %s, want %s", got.Digest, digestOf(t, img2))
	}

	// --pull never works offline, and fails for what is not cached.
	fr.srv.Close()
	if _, err := c.Get(t.Context(), ref, PullOptions{Policy: PullNever}); err != nil {
		t.Errorf("pull never: %v", err)
	}
	_, err = c.Get(t.Context(), mustRef(t, fr.host+"/other:1"), PullOptions{Policy: PullNever})
	if !errors.Is(err, ErrNotCached) {
		t.Errorf("pull never of an absent image: %v, want ErrNotCached", err)
	}
	// Registry gone, record stale: the cached image is used.
	if _, err := c.Get(t.Context(), ref, PullOptions{}); err != nil {
		t.Errorf("stale record, registry down: %v", err)
	}
}

func TestAuth(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "private/img:1", img)
	fr.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if u, p, ok := r.BasicAuth(); ok && u == "alice" && p == "s3cret" {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
		return true
	})

	c := testCache(t) // DOCKER_CONFIG: an empty directory
	_, err := c.Get(t.Context(), ref, PullOptions{})
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "docker login") {
		t.Fatalf("without credentials: %v, want ErrUnauthorized saying to log in", err)
	}

	dir := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	config := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, fr.host, auth)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
	got, err := c.Get(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	if diff := cmp.Diff(baseFiles, readImageFiles(t, got.EROFSPath)); diff != "" {
		t.Errorf("image files (-want +got):\n%s", diff)
	}
}

func TestPlatforms(t *testing.T) {
	fr := newFakeRegistry(t)
	amd := fakeImage(t, "linux/amd64", fakeLayer(t, false, fakeEntry{name: "arch", body: "amd64"}))
	arm := fakeImage(t, "linux/arm64/v8", fakeLayer(t, false, fakeEntry{name: "arch", body: "arm64"}))
	armv7 := fakeImage(t, "linux/arm/v7", fakeLayer(t, false, fakeEntry{name: "arch", body: "armv7"}))
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: armv7, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}}},
	)
	ref := fr.pushIndex(t, "multi:1", idx)
	c := testCache(t)
	for _, tc := range []struct {
		platform, want, wantPlatform string
	}{
		{"linux/amd64", "amd64", "linux/amd64"},
		{"linux/arm64", "arm64", "linux/arm64/v8"},
		{"linux/arm64/v8", "arm64", "linux/arm64/v8"},
		{"linux/arm/v7", "armv7", "linux/arm/v7"},
	} {
		t.Run(tc.platform, func(t *testing.T) {
			got, err := c.Get(t.Context(), ref, PullOptions{Platform: tc.platform})
			if err != nil {
				t.Fatal(err)
			}
			if files := readImageFiles(t, got.EROFSPath); files["arch"] != tc.want {
				t.Errorf("arch file %q, want %q", files["arch"], tc.want)
			}
			if got.Platform != tc.wantPlatform {
				t.Errorf("platform %q, want %q", got.Platform, tc.wantPlatform)
			}
		})
	}
	_, err := c.Get(t.Context(), ref, PullOptions{Platform: "linux/s390x"})
	if !errors.Is(err, ErrPlatformNotFound) || !strings.Contains(err.Error(), "linux/amd64, linux/arm64/v8, linux/arm/v7") {
		t.Errorf("missing platform: %v, want ErrPlatformNotFound listing the platforms", err)
	}
	// A single-platform image for another platform is refused too.
	single := fr.push(t, "single:1", arm)
	_, err = c.Get(t.Context(), single, PullOptions{Platform: "linux/amd64"})
	if !errors.Is(err, ErrPlatformNotFound) || !strings.Contains(err.Error(), "--platform linux/arm64/v8") {
		t.Errorf("single image of another platform: %v, want ErrPlatformNotFound", err)
	}
	if _, err := c.Get(t.Context(), ref, PullOptions{Platform: "linux"}); err == nil {
		t.Error("platform without architecture: no error")
	}
}

// serveBadBlob makes the registry answer GETs of blob h with body (and a
// Content-Length of declared, when not 0).
func serveBadBlob(fr *fakeRegistry, h v1.Hash, body []byte, declared int) {
	fr.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+h.String()) {
			return false
		}
		if declared == 0 {
			declared = len(body)
		}
		w.Header().Set("Content-Length", fmt.Sprint(declared))
		w.WriteHeader(http.StatusOK)
		w.Write(body)
		return true
	})
}

func TestCorruptBlobs(t *testing.T) {
	for _, tc := range []struct {
		desc string
		// corrupt returns the body served for a blob and the
		// Content-Length declared (0: the body's).
		corrupt func(b []byte) ([]byte, int)
	}{
		{"wrong digest", func(b []byte) ([]byte, int) {
			b = append([]byte(nil), b...)
			b[len(b)/2] ^= 0xff
			return b, 0
		}},
		{"truncated, short Content-Length", func(b []byte) ([]byte, int) { return b[:len(b)/2], 0 }},
		{"truncated, connection cut", func(b []byte) ([]byte, int) { return b[:len(b)/2], len(b) }},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			fr := newFakeRegistry(t)
			img := baseImage(t)
			ref := fr.push(t, "corrupt:1", img)
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			h, _ := layers[1].Digest()
			rc, _ := layers[1].Compressed()
			good, _ := io.ReadAll(rc)
			body, declared := tc.corrupt(good)
			serveBadBlob(fr, h, body, declared)
			c := testCache(t)
			_, err = c.Get(t.Context(), ref, PullOptions{})
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), h.String()) {
				t.Errorf("error %q does not name the layer %s", err, h)
			}
			if tc.desc == "wrong digest" && !errors.Is(err, ErrDigestMismatch) {
				t.Errorf("error %v is not ErrDigestMismatch", err)
			}
			if files := cacheFiles(t, c); len(files) > 1 {
				// The good layer may have been downloaded; the bad one,
				// no image, and no temporary file may be left.
				t.Errorf("cache holds %v, want at most the good blob", files)
			}
			for _, f := range cacheFiles(t, c) {
				if !strings.HasSuffix(f, layerDigests(t, img)[0].Hex) {
					t.Errorf("cache holds %s", f)
				}
			}
		})
	}
}

func TestRetryAndNotFound(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "flaky:1", img)
	var mu sync.Mutex
	failures := 0
	fr.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		mu.Lock()
		defer mu.Unlock()
		if strings.Contains(r.URL.Path, "/manifests/") && failures < 2 {
			failures++
			w.Header().Set("Retry-After", "0")
			http.Error(w, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`, http.StatusTooManyRequests)
			return true
		}
		return false
	})
	c := testCache(t)
	if _, err := c.Get(t.Context(), ref, PullOptions{}); err != nil {
		t.Fatalf("after two 429s: %v", err)
	}
	if failures != 2 {
		t.Errorf("%d 429 answers, want 2", failures)
	}

	_, err := c.Get(t.Context(), mustRef(t, fr.host+"/flaky:missing"), PullOptions{})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "flaky:missing not found") {
		t.Errorf("missing tag: %v, want ErrNotFound", err)
	}
	_, err = c.Get(t.Context(), mustRef(t, fr.host+"/nosuchrepo:1"), PullOptions{})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing repository: %v, want ErrNotFound", err)
	}

	// A registry that never stops answering 429.
	fr.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		http.Error(w, "", http.StatusTooManyRequests)
		return true
	})
	_, err = c.Pull(t.Context(), ref, PullOptions{})
	if !errors.Is(err, ErrRateLimited) {
		t.Errorf("always 429: %v, want ErrRateLimited", err)
	}
}

func TestMaxSize(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "big:1", img)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	for _, l := range m.Layers {
		size += l.Size
	}
	size-- // one byte too many
	c := testCache(t)
	fr.reset()
	_, err = c.Get(t.Context(), ref, PullOptions{MaxSize: size})
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "--max-image-size") {
		t.Errorf("over the limit: %v, want ErrTooLarge", err)
	}
	if n := fr.blobGets(t, img); n != 0 {
		t.Errorf("%d layer downloads before refusing, want 0", n)
	}
	if _, err := c.Get(t.Context(), ref, PullOptions{MaxSize: 1 << 30}); err != nil {
		t.Errorf("under the limit: %v", err)
	}
}

func TestConcurrentGet(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "shared:1", img)
	c := testCache(t)
	log, converted := countingLog(t)
	var wg sync.WaitGroup
	results := make([]*CachedImage, 4)
	errs := make([]error, 4)
	for i := range results {
		wg.Go(func() {
			// Separate Cache values, as separate processes would have.
			c2, err := OpenCache(c.Dir())
			if err != nil {
				errs[i] = err
				return
			}
			results[i], errs[i] = c2.Get(t.Context(), ref, PullOptions{Log: log})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Get %d: %v", i, err)
		}
		if results[i].Digest != digestOf(t, img) {
			t.Errorf("Get %d: digest %s", i, results[i].Digest)
		}
	}
	if n := converted(); n != 1 {
		t.Errorf("%d conversions, want 1", n)
	}
	if n, want := fr.blobGets(t, img), len(layerDigests(t, img)); n != want {
		t.Errorf("%d layer downloads, want %d", n, want)
	}
}

// TestCacheHelperProcess is not a test: TestTwoProcesses runs the test
// binary again to call Get from another process.
func TestCacheHelperProcess(t *testing.T) {
	if os.Getenv("PE_IMAGE_TEST_HELPER") != "get" {
		t.Skip("helper process for TestTwoProcesses")
	}
	c, err := OpenCache(os.Getenv("PE_IMAGE_TEST_CACHE"))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := ParseReference(os.Getenv("PE_IMAGE_TEST_REF"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.Get(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("digest", img.Digest)
}

func TestTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the test binary twice")
	}
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "twoproc:1", img)
	c := testCache(t)
	var wg sync.WaitGroup
	outs := make([][]byte, 2)
	errs := make([]error, 2)
	for i := range outs {
		wg.Go(func() {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestCacheHelperProcess$", "-test.v")
			cmd.Env = append(os.Environ(), "PE_IMAGE_TEST_HELPER=get", "PE_IMAGE_TEST_CACHE="+c.Dir(), "PE_IMAGE_TEST_REF="+ref.String())
			outs[i], errs[i] = cmd.CombinedOutput()
		})
	}
	wg.Wait()
	want := "digest " + digestOf(t, img).String()
	for i := range outs {
		if errs[i] != nil || !strings.Contains(string(outs[i]), want) {
			t.Errorf("process %d: %v\n%s", i, errs[i], outs[i])
		}
	}
	if n, want := fr.blobGets(t, img), len(layerDigests(t, img)); n != want {
		t.Errorf("%d layer downloads by two processes, want %d (one conversion)", n, want)
	}
	entries, _ := os.ReadDir(c.path(imagesDir))
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	if diff := cmp.Diff([]string{digestOf(t, img).Hex}, dirs); diff != "" {
		t.Errorf("image directories (-want +got):\n%s", diff)
	}
}

func TestCancelLeavesNothing(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "cancel:1", img)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := layers[1].Digest()
	rc, _ := layers[1].Compressed()
	blob, _ := io.ReadAll(rc)
	fr.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+bad.String()) {
			return false
		}
		// Half a blob, then pe is interrupted mid-download.
		w.Header().Set("Content-Length", fmt.Sprint(len(blob)))
		w.WriteHeader(http.StatusOK)
		w.Write(blob[:len(blob)/2])
		w.(http.Flusher).Flush()
		cancel()
		<-r.Context().Done()
		return true
	})
	c := testCache(t)
	_, err = c.Get(ctx, ref, PullOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted Get: %v, want context.Canceled", err)
	}
	for _, f := range cacheFiles(t, c) {
		if !strings.HasSuffix(f, layerDigests(t, img)[0].Hex) {
			t.Errorf("the cache holds %s after an interrupted pull", f)
		}
	}
	// The next Get finishes the job.
	fr.setWrap(nil)
	if _, err := c.Get(t.Context(), ref, PullOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestProgress(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "progress:1", img)
	var mu sync.Mutex
	last := map[Phase]Progress{}
	opts := PullOptions{Progress: func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := last[p.Phase]; ok && (prev.Done || p.Complete < prev.Complete) {
			t.Errorf("%s progress went from %+v to %+v", p.Phase, prev, p)
		}
		last[p.Phase] = p
	}}
	if _, err := testCache(t).Get(t.Context(), ref, opts); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, l := range mustManifest(t, img).Layers {
		total += l.Size
	}
	for _, phase := range []Phase{PhaseDownload, PhaseConvert} {
		want := Progress{Reference: ref.Familiar(), Phase: phase, Complete: total, Total: total, Done: true}
		if diff := cmp.Diff(want, last[phase]); diff != "" {
			t.Errorf("last %s report (-want +got):\n%s", phase, diff)
		}
	}
}

func mustManifest(t *testing.T, img v1.Image) *v1.Manifest {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestCorruptCachedBlob checks that a cached layer blob damaged on disk
// after it was verified fails the conversion with ErrDigestMismatch, is
// removed, and is downloaded again by the next pull.
func TestCorruptCachedBlob(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "rot:1", img)
	c := testCache(t)
	got, err := c.Get(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Flip a byte of a blob, and lose the image (as if another image had
	// kept the blob while this one was removed).
	blob := c.blobPath(layerDigests(t, img)[1])
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(blob, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(c.imageDir(got.Digest)); err != nil {
		t.Fatal(err)
	}
	_, err = c.Pull(t.Context(), ref, PullOptions{})
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "pull again") {
		t.Fatalf("pull with a corrupt cached blob: %v, want ErrDigestMismatch saying to pull again", err)
	}
	if _, err := os.Stat(blob); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the corrupt blob is still cached: %v", err)
	}
	got, err = c.Pull(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatalf("second pull: %v", err)
	}
	if diff := cmp.Diff(baseFiles, readImageFiles(t, got.EROFSPath)); diff != "" {
		t.Errorf("image files (-want +got):\n%s", diff)
	}
}

// TestRegistryAnswers checks the registry behaviours TestAuth and
// TestRetryAndNotFound leave out: a 403, server errors that stop, docker
// Hub's anonymous bearer token dance, and an uncompressed layer.
func TestRegistryAnswers(t *testing.T) {
	plain := static.NewLayer(fakeTar(t, fakeEntry{name: "plain.txt", body: "uncompressed\n"}), types.OCIUncompressedLayer)
	gz := fakeLayer(t, false, fakeEntry{name: "gz.txt", body: "gzip\n"})
	img := fakeImage(t, DefaultPlatform(), gz, plain)
	wantFiles := map[string]string{"gz.txt": "gzip\n", "plain.txt": "uncompressed\n"}
	tests := []struct {
		name string
		// wrap filters the registry's requests; n counts the requests
		// it has seen.
		wrap    func(host string, n int, w http.ResponseWriter, r *http.Request) bool
		wantErr error  // nil: the pull succeeds
		wantMsg string // in the error
	}{
		{
			name: "403 denied",
			wrap: func(_ string, _ int, w http.ResponseWriter, r *http.Request) bool {
				if !strings.Contains(r.URL.Path, "/manifests/") {
					return false
				}
				http.Error(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`, http.StatusForbidden)
				return true
			},
			wantErr: ErrUnauthorized,
			wantMsg: "docker login",
		},
		{
			name: "503 twice, then 200",
			wrap: func(_ string, n int, w http.ResponseWriter, r *http.Request) bool {
				if n >= 2 || r.URL.Path == "/v2/" {
					return false
				}
				http.Error(w, "try later", http.StatusServiceUnavailable)
				return true
			},
		},
		{
			name: "anonymous bearer token",
			wrap: func(host string, _ int, w http.ResponseWriter, r *http.Request) bool {
				switch {
				case r.URL.Path == "/token":
					if r.URL.Query().Get("service") != "fake" || !strings.Contains(r.URL.Query().Get("scope"), ":pull") {
						http.Error(w, "bad token request "+r.URL.RawQuery, http.StatusBadRequest)
						return true
					}
					w.Header().Set("Content-Type", "application/json")
					w.Write([]byte(`{"token":"anon","expires_in":300}`))
					return true
				case r.Header.Get("Authorization") == "Bearer anon":
					return false
				}
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="fake"`, host))
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"token required"}]}`, http.StatusUnauthorized)
				return true
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr := newFakeRegistry(t)
			ref := fr.push(t, "answers:1", img)
			var mu sync.Mutex
			n := 0
			fr.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				mu.Lock()
				i := n
				n++
				mu.Unlock()
				return tt.wrap(fr.host, i, w, r)
			})
			got, err := testCache(t).Get(t.Context(), ref, PullOptions{})
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("Get: %v, want %v containing %q", err, tt.wantErr, tt.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantFiles, readImageFiles(t, got.EROFSPath)); diff != "" {
				t.Errorf("image files (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRegistryErrorMessages checks the errors of failed registry requests
// name what failed once, say what to do, and keep their kind.
func TestRegistryErrorMessages(t *testing.T) {
	fr := newFakeRegistry(t)
	img := baseImage(t)
	ref := fr.push(t, "errs/img:1", img)
	layer := layerDigests(t, img)[1]
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}})
	multi := fr.pushIndex(t, "errs/multi:1", idx)
	// A registry name ggcr talks HTTPS to, dialled to the plain HTTP
	// fake registry.
	tlsRef := mustRef(t, "registry.example:5000/errs/img:1")
	toFake := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, fr.host)
	}}
	answer := func(status int, body string) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Basic realm="fake"`)
			}
			http.Error(w, body, status)
			return true
		}
	}
	tests := []struct {
		name      string
		ref       Reference
		transport http.RoundTripper
		// wrap answers the requests it wants to; nil: the registry does.
		wrap     func(w http.ResponseWriter, r *http.Request) bool
		wantKind error // nil: no particular kind
		wantMsg  string
	}{
		{
			name:     "unknown tag",
			ref:      mustRef(t, fr.host+"/errs/img:nope"),
			wantKind: ErrNotFound,
			wantMsg:  fr.host + "/errs/img:nope not found: HTTP 404: MANIFEST_UNKNOWN: Unknown manifest",
		},
		{
			name:     "401",
			ref:      ref,
			wrap:     answer(http.StatusUnauthorized, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`),
			wantKind: ErrUnauthorized,
			wantMsg: "authentication required or denied for " + ref.String() +
				": log in with docker login: HTTP 401: UNAUTHORIZED: authentication required",
		},
		{
			name:     "429 after the retries",
			ref:      ref,
			wrap:     answer(http.StatusTooManyRequests, `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`),
			wantKind: ErrRateLimited,
			wantMsg:  "the registry rate-limits requests for " + ref.String() + "; try again later: HTTP 429: TOOMANYREQUESTS: slow down",
		},
		{
			name: "missing layer",
			ref:  ref,
			wrap: func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/blobs/"+layer.String()) {
					return false
				}
				http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`, http.StatusNotFound)
				return true
			},
			wantKind: ErrNotFound,
			wantMsg:  "layer " + layer.String() + " of " + ref.String() + " not found: HTTP 404: BLOB_UNKNOWN: blob unknown",
		},
		{
			name: "missing platform manifest of an index",
			ref:  multi,
			wrap: func(w http.ResponseWriter, r *http.Request) bool {
				if !strings.HasSuffix(r.URL.Path, "/manifests/"+digestOf(t, img).String()) {
					return false
				}
				http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"gone"}]}`, http.StatusNotFound)
				return true
			},
			wantKind: ErrNotFound,
			wantMsg:  multi.String() + " (linux/amd64) not found: HTTP 404: MANIFEST_UNKNOWN: gone",
		},
		{
			name:      "plain HTTP registry without --insecure",
			ref:       tlsRef,
			transport: toFake,
			wantMsg: `resolving ` + tlsRef.String() + `: Get "https://registry.example:5000/v2/": ` +
				`http: server gave HTTP response to HTTPS client (the registry speaks plain HTTP, not HTTPS: use --insecure to allow that)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fr.setWrap(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				return tt.wrap != nil && tt.wrap(w, r)
			})
			t.Cleanup(func() { fr.setWrap(nil) })
			_, err := testCache(t).Get(t.Context(), tt.ref, PullOptions{Transport: tt.transport})
			if err == nil {
				t.Fatal("Get succeeded, want an error")
			}
			if tt.wantKind != nil && !errors.Is(err, tt.wantKind) {
				t.Errorf("Get: %v, want %v", err, tt.wantKind)
			}
			if diff := cmp.Diff(tt.wantMsg, err.Error()); diff != "" {
				t.Errorf("message (-want +got):\n%s", diff)
			}
		})
	}
}

// registryLayer returns a test layer as an image layer compressed as
// tl.compress says: "" (uncompressed), "gzip" or "zstd".
func registryLayer(t *testing.T, tl testLayer) v1.Layer {
	t.Helper()
	b := layerTar(t, tl.ents)
	if tl.compress == "" {
		return static.NewLayer(b, types.OCIUncompressedLayer)
	}
	var opts []tarball.LayerOption
	switch tl.compress {
	case "gzip":
	case "zstd":
		opts = append(opts, tarball.WithCompression(compression.ZStd))
	default:
		t.Fatalf("registryLayer: compression %q", tl.compress)
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestPullFlattenCases pushes a multi-layer image with the hard flattening
// cases (hard links across layers, also to a file an upper layer replaces,
// an opaque directory, PAX and GNU long names, non-UTF-8 names, whiteouts
// with new entries below them, xattrs) to the registry, pulls it through
// the cache, and compares the cached EROFS image with the reference model
// and with Flatten run on the same layers directly.
func TestPullFlattenCases(t *testing.T) {
	pax := func(e lent) lent { e.format = tar.FormatPAX; return e }
	gnu := func(e lent) lent { e.format = tar.FormatGNU; return e }
	layers := []testLayer{
		{compress: "gzip", ents: []lent{
			tDir("usr/"), tDir("usr/bin/"), tFile("usr/bin/tool", "TOOL v1").with(0o755, 0), tHard("usr/bin/tool-alias", "usr/bin/tool"),
			pax(tFile(longName, "pax long name")), tFile("caf\xe9", "latin1"),
			tDir("opt/").with(0o750, 1000), tFile("opt/old", "old"), tDir("opt/sub/"), tFile("opt/sub/deep", "deep"), tFile("opt/z", "z"),
			tFile("doomed", "doomed"), xattr1(tFile("cap", "c"), "user.note", "hi"),
		}},
		{compress: "zstd", ents: []lent{
			tHard("bin-link", "usr/bin/tool"), tHard("keeps-doomed", "doomed"),
			tFile("opt/a", "a"), tFile("opt/.wh..wh..opq", ""), tFile("opt/sub/new", "new"),
			gnu(tFile(longName+"-gnu", "gnu long name")), gnu(tHard(longName+"-link", longName)),
			tDir("\xff\xfe/"), tFile("\xff\xfe/\xe9t\xe9", "non-UTF-8 all along"),
		}},
		{ents: []lent{
			tFile(".wh.doomed", ""), tHard("usr/bin/third", "bin-link"), tFile("usr/bin/tool", "TOOL v2").with(0o755, 0),
			tFile(".wh.caf\xe9", ""), tFile("caf\xe9/now-a-dir", "d"),
			pax(tFile(refParent(longName)+"/.wh."+refBase(longName)+"-gnu", "")),
		}},
	}
	var vls []v1.Layer
	for _, tl := range layers {
		vls = append(vls, registryLayer(t, tl))
	}
	img := fakeImage(t, DefaultPlatform(), vls...)
	fr := newFakeRegistry(t)
	ref := fr.push(t, "flatten/cases:1", img)

	got, err := testCache(t).Pull(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(got.EROFSPath)
	if err != nil {
		t.Fatal(err)
	}
	gotTree, gotGroups := snapshot(t, b)

	model, err := refFlatten(layers)
	if err != nil {
		t.Fatalf("reference model: %v", err)
	}
	wantTree, wantGroups := model.view()
	if diff := cmp.Diff(wantTree, gotTree, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("pulled image vs reference model (-model +image):\n%s", diff)
	}
	if diff := cmp.Diff(wantGroups, gotGroups, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("hard link groups (-model +image):\n%s", diff)
	}
	// Spot checks, in case model and Flatten share a mistake.
	for p, want := range map[string]node{
		"usr/bin/tool":       {Mode: 0o755, Size: 7, Data: "TOOL v2", Nlink: 1},
		"usr/bin/tool-alias": {Mode: 0o755, Size: 7, Data: "TOOL v1", Nlink: 3},
		"keeps-doomed":       nFile("doomed"),
		"opt":                nDirM(0o750, 1000),
		"opt/sub/new":        nFile("new"),
		longName:             nLinks("pax long name", 2),
		"\xff\xfe/\xe9t\xe9": nFile("non-UTF-8 all along"),
		"caf\xe9/now-a-dir":  nFile("d"),
	} {
		if diff := cmp.Diff(want, gotTree[p], cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%q (-want +got):\n%s", p, diff)
		}
	}
	for _, p := range []string{"doomed", "opt/old", "opt/z", "opt/sub/deep", longName + "-gnu"} {
		if _, ok := gotTree[p]; ok {
			t.Errorf("%q is in the image, want it hidden", p)
		}
	}

	var o opener
	direct, err := flattenBytes(t, o.layers(t, layers))
	if err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	directTree, directGroups := snapshot(t, direct)
	if diff := cmp.Diff(directTree, gotTree, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("pulled image vs Flatten (-Flatten +pulled):\n%s", diff)
	}
	if diff := cmp.Diff(directGroups, gotGroups, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("hard link groups (-Flatten +pulled):\n%s", diff)
	}
}

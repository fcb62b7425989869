package engine

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pe-project/pe/image"
)

// stallRegistry is ggcr's in-process registry whose blob downloads for
// repositories named "slow…" wait until release is closed (or the client
// gives up); stalled receives one value per stalled request.
type stallRegistry struct {
	host    string
	release chan struct{}
	stalled chan struct{}
}

func newStallRegistry(t *testing.T) *stallRegistry {
	t.Helper()
	sr := &stallRegistry{release: make(chan struct{}), stalled: make(chan struct{}, 100)}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, config := configDigests.Load(r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]); r.Method == http.MethodGet &&
			strings.HasPrefix(r.URL.Path, "/v2/slow") && strings.Contains(r.URL.Path, "/blobs/") && !config {
			sr.stalled <- struct{}{}
			select {
			case <-sr.release:
			case <-r.Context().Done():
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-sr.release:
		default:
			close(sr.release)
		}
	})
	sr.host = strings.TrimPrefix(srv.URL, "http://")
	return sr
}

// configDigests are the config blobs of pushed images, which resolving
// fetches before any conversion: they are never stalled.
var configDigests sync.Map

// push pushes a random linux/amd64 image of about size bytes as repo:1.
func (sr *stallRegistry) push(t *testing.T, repo string, size int64) string {
	t.Helper()
	img, err := random.Image(size, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	configDigests.Store(cf.String(), true)
	ref := sr.host + "/" + repo + ":1"
	n, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(n, img); err != nil {
		t.Fatal(err)
	}
	return ref
}

func TestConverter(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	sr := newStallRegistry(t)
	cache, err := image.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fast := sr.push(t, "fast", 4096)
	slow := sr.push(t, "slow", 4096)
	other := sr.push(t, "other", 4096)
	c := &Converter{Cache: cache, Options: image.PullOptions{Platform: "linux/amd64"}, MaxConversions: 1, Timeout: 2 * time.Second}

	img, err := c.Resolve(t.Context(), fast)
	if err != nil {
		t.Fatal(err)
	}
	if !img.Converted || img.Release == nil {
		t.Errorf("first resolve: converted %v, release %v", img.Converted, img.Release != nil)
	}
	img.Release()

	// A slow pull takes the only conversion slot...
	slowErr := make(chan error, 1)
	go func() {
		_, err := c.Resolve(t.Context(), slow)
		slowErr <- err
	}()
	<-sr.stalled
	// ... a cached image still resolves at once ...
	start := time.Now()
	img, err = c.Resolve(t.Context(), fast)
	if err != nil || img.Converted {
		t.Fatalf("cached image during a slow pull: %v (converted %v)", err, img != nil && img.Converted)
	}
	img.Release()
	if d := time.Since(start); d > time.Second {
		t.Errorf("a cached image took %v during a slow pull", d)
	}
	// ... another image to convert is refused at once ...
	if _, err := c.Resolve(t.Context(), other); !errors.Is(err, ErrConversionsBusy) {
		t.Errorf("a second conversion: %v, want ErrConversionsBusy", err)
	}
	// ... and the slow pull ends at the deadline.
	if err := <-slowErr; !errors.Is(err, ErrPullTimeout) || !strings.Contains(err.Error(), "slow") {
		t.Errorf("slow pull: %v, want ErrPullTimeout", err)
	}
	// The slot is free again.
	if img, err := c.Resolve(t.Context(), other); err != nil {
		t.Errorf("after the timeout: %v", err)
	} else {
		img.Release()
	}
}

// TestConverterEvicts converts three images into a cache bounded to
// about one: each conversion evicts the least recently used images, never
// one still held.
func TestConverterEvicts(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	sr := newStallRegistry(t)
	cache, err := image.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &Converter{Cache: cache, Options: image.PullOptions{Platform: "linux/amd64"}, CacheMaxSize: 1}
	var held []*ResolvedImage
	for i := range 3 {
		img, err := c.Resolve(t.Context(), sr.push(t, fmt.Sprintf("img%d", i), 64<<10))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, img)
	}
	c.Wait()
	if got := cachedDigests(t, cache); len(got) != 3 {
		t.Errorf("all three held: the cache has %v", got)
	}
	// Runs of the first two end; the third is still held.
	held[0].Release()
	held[1].Release()
	img, err := c.Resolve(t.Context(), sr.push(t, "img3", 64<<10))
	if err != nil {
		t.Fatal(err)
	}
	c.Wait()
	want := []string{held[2].Digest, img.Digest}
	if got := cachedDigests(t, cache); !sameSet(got, want) {
		t.Errorf("after eviction the cache has %v, want %v", got, want)
	}
	img.Release()
	held[2].Release()
}

func cachedDigests(t *testing.T, c *image.Cache) []string {
	t.Helper()
	list, err := c.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, img := range list {
		out = append(out, img.Digest.String())
	}
	return out
}

func sameSet(a, b []string) bool {
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

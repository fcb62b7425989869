package server

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/image"
)

// TestRunPullsOutsideSlots gives the server an engine.Converter with one
// conversion slot, a 2 s pull deadline and one VM slot, over an
// in-process registry whose "slow" image never finishes downloading: the
// slow pull holds no VM slot (a run of a cached image goes through
// meanwhile), a second image to convert is refused with 503 and
// Retry-After, the slow one ends with 504 at the deadline, and nothing of
// it stays in the cache.
func TestRunPullsOutsideSlots(t *testing.T) {
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	stalled := make(chan struct{}, 10)
	var configs sync.Map // config digests: resolving fetches them, never stalled
	rs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		last := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/slow/blobs/") && !isConfig(&configs, last) {
			stalled <- struct{}{}
			<-r.Context().Done()
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(rs.Close)
	host := strings.TrimPrefix(rs.URL, "http://")
	push := func(repo string) {
		img, err := random.Image(4096, 1)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigName()
		configs.Store(cf.String(), true)
		n, err := name.ParseReference(host+"/"+repo+":1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(n, img); err != nil {
			t.Fatal(err)
		}
	}
	for _, repo := range []string{"fast", "slow", "other"} {
		push(repo)
	}
	cache, err := image.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	conv := &engine.Converter{Cache: cache, MaxConversions: 1, Timeout: 2 * time.Second}
	img, err := conv.Resolve(t.Context(), host+"/fast:1")
	if err != nil {
		t.Fatal(err)
	}
	img.Release()
	fake := newFakeRunner()
	_, url := testServer(t, Config{Runner: fake, Images: conv, Slots: 1, MaxQueue: 1, AllowedImages: []string{host + "/"}})
	runURL := func(repo string) string { return url + "/api/v2/runi/amd64/linux/" + host + "/" + repo + ":1" }
	body := []byte(`{"cmd": ["echo", "hi"]}`)

	slow := make(chan *http.Response, 1)
	go func() {
		resp, _ := post(t, runURL("slow"), "application/json", body)
		slow <- resp
	}()
	<-stalled
	start := time.Now()
	resp, b := post(t, runURL("fast"), "application/json", body)
	if resp.StatusCode != http.StatusOK || time.Since(start) > time.Second {
		t.Errorf("a cached image during a slow pull: %d %s after %v", resp.StatusCode, b, time.Since(start))
	}
	resp, b = post(t, runURL("other"), "application/json", body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "ConversionsBusy") {
		t.Errorf("a second conversion: %d %s (Retry-After %q), want 503 ConversionsBusy", resp.StatusCode, b, resp.Header.Get("Retry-After"))
	}
	resp = <-slow
	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("the slow pull: %d, want 504", resp.StatusCode)
	}
	// The run of the cached image got it resolved, and held it no more
	// after: an eviction may take it now.
	reqs := fake.recorded()
	if len(reqs) != 1 || reqs[0].Resolved == nil || !strings.HasSuffix(reqs[0].Image, "/fast:1") {
		t.Fatalf("runs: %+v", reqs)
	}
	rep, err := cache.Prune(t.Context(), image.PruneOptions{All: true})
	if err != nil || len(rep.InUse) != 0 || len(rep.Deleted) != 1 {
		t.Errorf("prune after the runs: %+v, %v; want the fast image deleted, none in use", rep, err)
	}
	for _, d := range []string{"images/sha256", "blobs/sha256"} {
		des, _ := os.ReadDir(cache.Dir() + "/" + d)
		for _, de := range des {
			t.Errorf("left in the cache: %s/%s", d, de.Name())
		}
	}
}

func isConfig(configs *sync.Map, digest string) bool {
	_, ok := configs.Load(digest)
	return ok
}

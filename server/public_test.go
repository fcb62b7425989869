package server

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/image"
)

// cachedEverything stands for an image cache that holds every image a
// run may name, private ones included (the operator pulled them with
// credentials): it resolves anything without asking a registry.
type cachedEverything struct{ calls atomic.Int32 }

func (c *cachedEverything) Resolve(ctx context.Context, ref string) (*engine.ResolvedImage, error) {
	c.calls.Add(1)
	return &engine.ResolvedImage{Reference: ref, Digest: "sha256:cached"}, nil
}

// TestPublicOnly runs PublicOnly against ggcr's registry in-process, with
// a private repository that answers anonymous clients 401: a visitor
// gets a public image, not the private one the cache holds, unless the
// operator made it a preset; a public answer is remembered.
func TestPublicOnly(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var mu sync.Mutex
	var heads []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			mu.Lock()
			heads = append(heads, r.URL.Path)
			mu.Unlock()
		}
		if strings.HasPrefix(r.URL.Path, "/v2/teapot/") {
			http.Error(w, "no", http.StatusTeapot)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/v2/private/") {
			if u, p, ok := r.BasicAuth(); !ok || u != "op" || p != "secret" {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	for _, repo := range []string{"public/img", "private/img", "private/preset"} {
		img, err := random.Image(64, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := name.ParseReference(host+"/"+repo+":1", name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "op", Password: "secret"})); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	heads = nil // the pushes' own
	mu.Unlock()
	next := &cachedEverything{}
	p := &PublicOnly{Next: next, Exempt: map[string]bool{host + "/private/preset:1": true}}
	for _, c := range []struct {
		ref     string
		wantErr error
	}{
		{host + "/public/img:1", nil},
		{host + "/public/img:1", nil}, // remembered: no second HEAD
		{host + "/private/img:1", image.ErrUnauthorized},
		{host + "/public/nothing:1", image.ErrNotFound},
		{host + "/private/preset:1", nil},
		{host + "/teapot/img:1", errRegistryUnreachable},
	} {
		_, err := p.Resolve(t.Context(), c.ref)
		if !errors.Is(err, c.wantErr) || (err == nil) != (c.wantErr == nil) {
			t.Errorf("%s: error %v, want %v", c.ref, err, c.wantErr)
		}
	}
	if n := next.calls.Load(); n != 3 {
		t.Errorf("the cache was asked %d times, want 3 (the public image twice, the preset)", n)
	}
	want := []string{"/v2/public/img/manifests/1", "/v2/private/img/manifests/1", "/v2/public/nothing/manifests/1", "/v2/teapot/img/manifests/1"}
	if diff := cmp.Diff(want, heads); diff != "" {
		t.Errorf("HEAD requests (-want +got):\n%s", diff)
	}

	// Through the server: a 404 naming no credentials.
	_, url := testServer(t, Config{Runner: &sourceRunner{src: p}, AllowedImages: []string{host + "/"}})
	resp, b := post(t, url+"/api/v2/runi/amd64/linux/"+host+"/private/img:1", "application/json", []byte(`{"cmd":["echo"]}`))
	if resp.StatusCode != 404 || !strings.Contains(string(b), "ImageNotFound") || strings.Contains(string(b), "docker login") {
		t.Errorf("a private image through the server: %d %s, want 404 ImageNotFound", resp.StatusCode, b)
	}
}

// sourceRunner resolves the image as the engine does first, then runs
// nothing.
type sourceRunner struct{ src engine.ImageSource }

func (s *sourceRunner) Run(ctx context.Context, r *engine.RunRequest) (*engine.RunResult, error) {
	if _, err := s.src.Resolve(ctx, r.Image); err != nil {
		return nil, err
	}
	return &engine.RunResult{}, nil
}

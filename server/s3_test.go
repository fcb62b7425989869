package server

import (
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestS3Allowed checks which s3:// references a visitor may name when the
// operator opens s3://images/ce/ (--allow-image) and offers a preset
// from another prefix: those under the prefix, percent-encoded in the
// path, go to the runner in canonical form; every other s3:// reference,
// every escape from the prefix and every other "://" reference is
// refused. s3 images are read with the operator's credentials.
func TestS3Allowed(t *testing.T) {
	fake := newFakeRunner()
	_, url := testServer(t, Config{Runner: fake,
		AllowedImages: []string{"docker.io/", "s3://images/ce"}, // no trailing "/": whole segments anyway
		Presets:       []Preset{{Name: "s3demo", Source: "s3://images/private/x:1"}}})
	digest := "sha256:" + strings.Repeat("ab", 32)
	type result struct {
		Status int
		Image  string // what the runner got
	}
	for _, c := range []struct {
		desc, ref string
		want      result
	}{
		{"slashes encoded", "s3:%2F%2Fimages/ce/tree:v1", result{200, "s3://images/ce/tree:v1"}},
		{"encodeURIComponent", "s3%3A%2F%2Fimages%2Fce%2Ftree%3Av1", result{200, "s3://images/ce/tree:v1"}},
		{"no tag", "s3:%2F%2Fimages/ce/tree", result{200, "s3://images/ce/tree:latest"}},
		{"digest", "s3:%2F%2Fimages/ce/tree@" + digest, result{200, "s3://images/ce/tree@" + digest}},
		{"below the prefix", "s3:%2F%2Fimages/ce/sub/tree:v1", result{200, "s3://images/ce/sub/tree:v1"}},
		{"preset by name", "s3demo", result{200, "s3://images/private/x:1"}},
		{"preset by source", "s3:%2F%2Fimages/private/x:1", result{200, "s3://images/private/x:1"}},
		{"registry still allowed", "docker.io/library/busybox:1", result{200, "index.docker.io/library/busybox:1"}},

		{"raw slashes", "s3://images/ce/tree:v1", result{400, ""}},
		{"other prefix", "s3:%2F%2Fimages/private/x:2", result{403, ""}},
		{"other bucket", "s3:%2F%2Fother/ce/tree:v1", result{403, ""}},
		{"prefix as a name's start", "s3:%2F%2Fimages/cex/tree:v1", result{403, ""}},
		{"the prefix's own name", "s3:%2F%2Fimages/ce:v1", result{403, ""}},
		{"dot-dot", "s3:%2F%2Fimages/ce/../private/x:1", result{400, ""}},
		{"encoded dot-dot", "s3:%2F%2Fimages%2Fce%2F..%2Fprivate%2Fx:1", result{400, ""}},
		{"encoded dot-dot dots", "s3:%2F%2Fimages%2Fce%2F%2E%2E%2Fprivate%2Fx:1", result{400, ""}},
		{"empty segment", "s3:%2F%2Fimages%2Fce%2F%2Fx:1", result{400, ""}},
		{"upper-case scheme", "S3:%2F%2Fimages/ce/tree:v1", result{400, ""}},
		{"bad bucket", "s3:%2F%2FImages/ce/tree:v1", result{400, ""}},
		{"https", "https:%2F%2Fimages/ce/tree:v1", result{400, ""}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			before := len(fake.recorded())
			resp, b := post(t, url+"/api/v2/runi/amd64/linux/"+c.ref, "application/json", []byte(`{"cmd":["echo","x"]}`))
			got := result{Status: resp.StatusCode}
			if reqs := fake.recorded(); len(reqs) > before {
				got.Image = reqs[len(reqs)-1].Image
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("POST %s (-want +got):\n%s\n%s", c.ref, diff, b)
			}
		})
	}
}

// TestS3ImageSource checks the reference as the handler gets it
// (decoded): a ".." segment never matches the prefix, and a registry
// prefix never opens s3.
func TestS3ImageSource(t *testing.T) {
	for _, c := range []struct {
		desc    string
		allowed []string
		ref     string
		want    int // 0: accepted
	}{
		{"under the prefix", []string{"s3://images/ce/"}, "s3://images/ce/x", 0},
		{"dot-dot", []string{"s3://images/ce/"}, "s3://images/ce/../private/x", 400},
		{"dot", []string{"s3://images/ce/"}, "s3://images/ce/./x", 400},
		{"sibling prefix", []string{"s3://images/ce/"}, "s3://images/cex/x", 403},
		{"a registry prefix s", []string{"s"}, "s3://images/ce/x", 403},
		{"an empty registry prefix", []string{""}, "s3://images/ce/x", 403},
		{"the bucket", []string{"s3://images/"}, "s3://images/ce/x", 0},
		{"s3 prefix, registry reference", []string{"s3://images/"}, "docker.io/library/busybox", 403},
	} {
		s, err := New(Config{Runner: newFakeRunner(), AllowedImages: c.allowed})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		if _, _, err := s.imageSource(c.ref); err != nil {
			ae, ok := err.(*apiError)
			if !ok {
				t.Fatalf("%s: %v", c.desc, err)
			}
			got = ae.status
		}
		if got != c.want {
			t.Errorf("%s: %q under %q: status %d, want %d", c.desc, c.ref, c.allowed, got, c.want)
		}
	}
}

// TestS3AllowedPrefixChecked checks New refuses allowed prefixes that
// are no s3:// prefix a reference could keep, and URL-like ones of
// other kinds.
func TestS3AllowedPrefixChecked(t *testing.T) {
	for _, p := range []string{"s3://", "s3://Images/", "s3://images/ce/../x/", "s3://images//x/", "https://example.com/", "oci://x/"} {
		if _, err := New(Config{Runner: newFakeRunner(), AllowedImages: []string{p}}); err == nil {
			t.Errorf("allowed prefix %q: accepted", p)
		}
	}
	for _, p := range []string{"s3://images/", "s3://images/ce/", "s3://images/ce/sub"} {
		if _, err := New(Config{Runner: newFakeRunner(), AllowedImages: []string{p}}); err != nil {
			t.Errorf("allowed prefix %q: %v", p, err)
		}
	}
}

// FuzzRunPath sends any reference, as escaped in the path, to a server
// that opens only s3://images/ce/ besides its preset: the answer is a
// run, 400 or 403, and a run's image is the preset or an s3:// reference
// under the prefix with no "." or ".." segment.
func FuzzRunPath(f *testing.F) {
	for _, s := range []string{"demo", "s3:%2F%2Fimages/ce/tree:v1", "s3%3A%2F%2Fimages%2Fce%2Ftree%3Av1",
		"s3:%2F%2Fimages/ce/../x", "s3:%2F%2Fimages%2Fce%2F%2E%2E%2Fx", "s3:%2F%2Fimages/cex/y", "docker.io/library/busybox",
		"s3://images/ce/x", "%2Fetc%2Fpasswd", "s3:%2F%2Fimages/ce/x@sha256:" + strings.Repeat("0", 64)} {
		f.Add(s)
	}
	fake := newFakeRunner()
	s, err := New(Config{Runner: fake, Presets: []Preset{{Name: "demo"}}, RatePerSecond: -1, AllowedImages: []string{"s3://images/ce/"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		u, err := url.Parse("/api/v2/runi/amd64/linux/" + ref)
		if err != nil || u.RawQuery != "" || u.Fragment != "" || !strings.HasPrefix(u.Path, "/api/v2/runi/amd64/linux/") {
			return
		}
		req := httptest.NewRequestWithContext(t.Context(), "POST", "/", strings.NewReader(`{"cmd":["echo","x"]}`))
		req.URL = u
		req.Header.Set("Content-Type", "application/json")
		before := len(fake.recorded())
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		switch rec.Code {
		case 200:
			reqs := fake.recorded()
			if len(reqs) != before+1 {
				t.Fatalf("200 without a run")
			}
			img := reqs[len(reqs)-1].Image
			if img != "demo" && (!strings.HasPrefix(img, "s3://images/ce/") || strings.Contains(img, "/./") || strings.Contains(img, "/../") || strings.Contains(img[len("s3://"):], "//")) {
				t.Fatalf("%q ran image %q", ref, img)
			}
		case 400, 403:
		default:
			t.Fatalf("%q: status %d: %s", ref, rec.Code, rec.Body.Bytes())
		}
	})
}

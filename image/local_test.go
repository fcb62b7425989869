package image

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestIsLocal(t *testing.T) {
	for ref, want := range map[string]bool{
		"busybox": false, "docker.io/library/gcc:14": false, "localhost:5000/x@sha256:ab": false, "ghcr.io/o/r:v1.erofsx": false,
		"x.erofs": true, "/tmp/x": true, "./x": true, "../x": true, "oci:./layout": true, "docker-archive:img.tar": true,
		"erofs:/dev/sda": true, "~/img": true,
	} {
		if got := IsLocal(ref); got != want {
			t.Errorf("IsLocal(%q) = %v, want %v", ref, got, want)
		}
	}
}

func TestEROFSFile(t *testing.T) {
	type result struct {
		Path string
		OK   bool
	}
	for _, tt := range []struct {
		ref  string
		want result
	}{
		{"erofs:/srv/x", result{"/srv/x", true}},
		{"erofs:rel/x.img", result{"rel/x.img", true}},
		{"./rootfs.erofs", result{"./rootfs.erofs", true}},
		{"docker.io/x.erofs", result{"docker.io/x.erofs", true}},
		{"busybox", result{}},
		{"oci:./layout", result{}},
		{"ghcr.io/o/r:v1.erofsx", result{}},
	} {
		p, ok := EROFSFile(tt.ref)
		if diff := cmp.Diff(tt.want, result{p, ok}); diff != "" {
			t.Errorf("EROFSFile(%q) (-want +got):\n%s", tt.ref, diff)
		}
	}
}

func TestReferenceIsLocal(t *testing.T) {
	for _, tt := range []struct {
		ref  string
		want bool
	}{
		{"busybox", false},
		{"ghcr.io/o/r:v1", false},
		{"localhost:5000/x.erofs:v1", false},
		{"oci:./layout", true},
		{"docker-archive:img.tar", true},
		// A registry host named erofs: the canonical form starts with
		// "erofs:", which the engine would open as a file.
		{"docker://erofs:5000/x", true},
		{"erofs:5000/x", true},
	} {
		r, err := ParseReference(tt.ref)
		if err != nil {
			t.Errorf("ParseReference(%q): %v", tt.ref, err)
			continue
		}
		if got := r.IsLocal(); got != tt.want {
			t.Errorf("ParseReference(%q).IsLocal() = %v, want %v (canonical %q)", tt.ref, got, tt.want, r)
		}
	}
}

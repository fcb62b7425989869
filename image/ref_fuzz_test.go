package image

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseReference checks that ParseReference never panics on what a
// user may type, and that what it accepts prints in a canonical form that
// parses back to itself.
func FuzzParseReference(f *testing.F) {
	for _, s := range []string{
		"busybox", "busybox:1.36", "docker.io/library/gcc:14", "ghcr.io/o/x@sha256:" + strings.Repeat("ab", 32),
		"localhost:5000/x:tag", "docker://alpine", "oci:./layout", "oci:dir:v1", "oci:a:b:c",
		"oci:dir@sha256:" + strings.Repeat("0", 64), "docker-archive:img.tar", "docker-archive:img.tar:busybox:1",
		"Busybox", "https://x/y", "a@b", ":", "oci:", "docker-archive:", "x:y:z", "[::1]:5000/x",
		"s3://bucket/name", "s3://bucket/a/b/name:v1", "s3://bucket/n@sha256:" + strings.Repeat("cd", 32), "s3://b", "s3://bucket/x.erofs",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseReference(s)
		if err != nil {
			if r != (Reference{}) {
				t.Errorf("ParseReference(%q) failed but returned %v", s, r)
			}
			return
		}
		if r.IsZero() {
			t.Fatalf("ParseReference(%q) returned the zero Reference", s)
		}
		canon := r.String()
		again, err := ParseReference(canon)
		if err != nil {
			t.Fatalf("ParseReference(%q) = %q, which does not parse: %v", s, canon, err)
		}
		if again.String() != canon && utf8.ValidString(s) {
			t.Errorf("ParseReference(%q) = %q, which parses to %q", s, canon, again)
		}
	})
}

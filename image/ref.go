package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Transport says where an image reference points.
type Transport string

// The transports ParseReference knows.
const (
	// TransportRegistry is an image in an OCI distribution registry
	// (docker.io, ghcr.io, a local registry), or an image imported into
	// pe's cache under a registry-style name.
	TransportRegistry Transport = "registry"
	// TransportOCI is an image in an OCI image layout directory.
	TransportOCI Transport = "oci"
	// TransportDockerArchive is an image in a tarball written by
	// "docker save".
	TransportDockerArchive Transport = "docker-archive"
	// TransportS3 is an image pushed to an S3 bucket by pe image push
	// (see s3.go for the layout of its objects).
	TransportS3 Transport = "s3"
)

// Reference names an image. The zero Reference names nothing; see IsZero.
// Build one with ParseReference.
type Reference struct {
	transport Transport
	// name is the registry reference (TransportRegistry), or the tag
	// chosen inside a docker archive (nil: the archive's only image).
	name name.Reference
	// path is the absolute path of the layout directory or archive.
	path string
	// tag and digest select an image inside an OCI layout: the
	// org.opencontainers.image.ref.name annotation, or a descriptor's
	// digest. Both empty: the layout's only image.
	tag    string
	digest string
	// s3 is where an s3:// reference points; tag or digest (one is
	// set) select the image.
	s3 s3Location
}

// ociTag is what an OCI layout tag (and a registry tag) may look like.
var ociTag = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// ParseReference parses an image reference given by a user:
//
//   - a registry reference with docker's defaults: "busybox" is
//     index.docker.io/library/busybox:latest, "ghcr.io/o/x:1",
//     "localhost:5000/x", "name@sha256:…"; a "docker://" prefix is allowed;
//   - "oci:PATH[:TAG|@DIGEST]", an OCI image layout directory. TAG matches
//     a manifest's org.opencontainers.image.ref.name annotation; without a
//     TAG or DIGEST the layout must hold exactly one image. As PATH may
//     contain ':', the text after the last ':' is taken as a TAG only when
//     it is a valid tag and the whole of PATH:TAG is not an existing path;
//   - "docker-archive:PATH[:TAG]", a "docker save" tarball, where TAG is one
//     of the archive's repository tags (such as busybox:latest); without it
//     the archive must hold exactly one image. When the whole text is not
//     an existing file, PATH is the longest existing prefix followed by
//     ':' and a valid tag, or else the part before the first ':'.
//   - "s3://BUCKET/[PREFIX/]NAME[:TAG|@sha256:…]", an image pushed to an S3
//     bucket by pe image push (TAG defaults to latest).
//
// Relative paths are made absolute, so the reference keeps its meaning when
// recorded in the cache.
func ParseReference(s string) (Reference, error) {
	r, err := parseReference(s)
	if err != nil {
		return Reference{}, fmt.Errorf("invalid image reference %q: %w", s, err)
	}
	return r, nil
}

func parseReference(s string) (Reference, error) {
	if s == "" {
		return Reference{}, errors.New("empty reference")
	}
	if strings.ContainsAny(s, "\x00\n") {
		return Reference{}, errors.New("contains a NUL or newline character")
	}
	switch {
	case strings.HasPrefix(s, s3Scheme):
		return parseS3(strings.TrimPrefix(s, s3Scheme))
	case strings.HasPrefix(s, "oci:"):
		return parseOCI(strings.TrimPrefix(s, "oci:"))
	case strings.HasPrefix(s, "docker-archive:"):
		return parseDockerArchive(strings.TrimPrefix(s, "docker-archive:"))
	}
	s = strings.TrimPrefix(s, "docker://")
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") {
		return Reference{}, errors.New("a registry reference does not start with '/' or '.' (for a layout or archive on disk, use oci:PATH or docker-archive:PATH)")
	}
	if strings.Contains(s, "://") {
		return Reference{}, errors.New("a reference has no URL scheme (use --insecure for a plain-HTTP registry)")
	}
	if s != strings.ToLower(s) {
		// ggcr's message for this lists the allowed characters; say it plainly.
		if repo, _, _ := strings.Cut(s, "@"); strings.ContainsFunc(repoPart(repo), isUpper) {
			return Reference{}, errors.New("repository names must be lowercase")
		}
	}
	n, err := name.ParseReference(s)
	if err != nil {
		return Reference{}, err
	}
	return Reference{transport: TransportRegistry, name: n}, nil
}

// repoPart returns a registry reference without its tag: "Host:5000/a/b:t"
// → "Host:5000/a/b". The registry host may hold upper-case letters.
func repoPart(s string) string {
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		s = s[:i]
	}
	if i := strings.Index(s, "/"); i >= 0 && strings.ContainsAny(s[:i], ".:") {
		s = s[i+1:]
	}
	return s
}

func isUpper(r rune) bool { return 'A' <= r && r <= 'Z' }

func parseOCI(s string) (Reference, error) {
	r := Reference{transport: TransportOCI}
	if i := strings.LastIndex(s, "@"); i >= 0 {
		h, err := v1.NewHash(s[i+1:])
		if err != nil {
			return Reference{}, fmt.Errorf("digest %q: %w", s[i+1:], err)
		}
		if h.Algorithm != "sha256" {
			return Reference{}, fmt.Errorf("digest %q: only sha256 digests are supported", s[i+1:])
		}
		r.digest = h.String()
		s = s[:i]
	}
	if s == "" {
		return Reference{}, errors.New("oci: needs the path of an OCI image layout directory")
	}
	p, err := filepath.Abs(s)
	if err != nil {
		return Reference{}, err
	}
	if i := strings.LastIndex(p, ":"); r.digest == "" && i >= 0 && ociTag.MatchString(p[i+1:]) && !exists(p) {
		r.tag = p[i+1:]
		p = filepath.Clean(p[:i])
	}
	r.path = p
	return r, nil
}

func parseDockerArchive(s string) (Reference, error) {
	r := Reference{transport: TransportDockerArchive}
	if s == "" {
		return Reference{}, errors.New("docker-archive: needs the path of a docker save tarball")
	}
	p, err := filepath.Abs(s)
	if err != nil {
		return Reference{}, err
	}
	path, tag, split := p, "", false
	if !exists(p) {
		// The longest existing file followed by a tag, else what is
		// before the first ':'.
		found := false
		for i := len(p) - 1; i > 0; i-- {
			if p[i] == ':' && exists(p[:i]) {
				if _, err := name.NewTag(p[i+1:]); err == nil {
					path, tag, found, split = p[:i], p[i+1:], true, true
					break
				}
			}
		}
		if i := strings.IndexByte(p, ':'); !found && i >= 0 {
			path, tag, split = p[:i], p[i+1:], true
		}
	}
	if split {
		t, err := name.NewTag(tag)
		if err != nil {
			return Reference{}, fmt.Errorf("tag %q: %w", tag, err)
		}
		r.name = t
	}
	r.path = filepath.Clean(path)
	return r, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// IsZero reports whether r is the zero Reference, which names no image.
func (r Reference) IsZero() bool { return r.transport == "" }

// Transport returns where the image is: a registry, an OCI layout or a
// docker archive.
func (r Reference) Transport() Transport { return r.transport }

// Path returns the layout directory or archive file of an oci: or
// docker-archive: reference, and "" for a registry reference.
func (r Reference) Path() string { return r.path }

// IsDigest reports whether r pins a manifest digest, so what it names never
// changes.
func (r Reference) IsDigest() bool {
	if r.transport == TransportOCI || r.transport == TransportS3 {
		return r.digest != ""
	}
	_, ok := r.name.(name.Digest)
	return r.transport == TransportRegistry && ok
}

// String returns the canonical form of r: registry references in full
// ("index.docker.io/library/busybox:latest"), layouts and archives with
// absolute paths ("oci:/srv/layout:v1"). ParseReference(r.String()) gives
// r back.
func (r Reference) String() string {
	switch r.transport {
	case TransportRegistry:
		return r.name.Name()
	case TransportOCI:
		switch {
		case r.digest != "":
			return "oci:" + r.path + "@" + r.digest
		case r.tag != "":
			return "oci:" + r.path + ":" + r.tag
		}
		return "oci:" + r.path
	case TransportS3:
		if r.digest != "" {
			return r.s3.String() + "@" + r.digest
		}
		return r.s3.String() + ":" + r.tag
	case TransportDockerArchive:
		if r.name != nil {
			return "docker-archive:" + r.path + ":" + r.name.Name()
		}
		return "docker-archive:" + r.path
	}
	return ""
}

// Familiar returns r the way docker shows it: without the default registry
// and "library/" namespace ("busybox:latest"). Other references are as
// String returns them.
func (r Reference) Familiar() string {
	return FamiliarName(r.String())
}

// FamiliarName shortens a canonical reference string the way docker shows
// it: "index.docker.io/library/busybox:latest" → "busybox:latest".
func FamiliarName(s string) string {
	for _, p := range []string{"index.docker.io/", "docker.io/"} {
		if rest, ok := strings.CutPrefix(s, p); ok {
			return strings.TrimPrefix(rest, "library/")
		}
	}
	return s
}

// registryName returns r's registry reference, marked insecure (plain
// HTTP) when asked.
func (r Reference) registryName(insecure bool) (name.Reference, error) {
	if !insecure {
		return r.name, nil
	}
	return name.ParseReference(r.name.Name(), name.Insecure)
}

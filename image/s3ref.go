package image

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// s3Scheme starts an s3:// reference.
const s3Scheme = "s3://"

// s3Location is the bucket, prefix and name of an s3:// reference.
type s3Location struct {
	bucket string
	// prefix is the path between the bucket and the name, without
	// leading or trailing '/'; "" when the name sits at the bucket's top.
	prefix string
	name   string
}

// String returns "s3://BUCKET/[PREFIX/]NAME".
func (l s3Location) String() string {
	if l.prefix == "" {
		return s3Scheme + l.bucket + "/" + l.name
	}
	return s3Scheme + l.bucket + "/" + l.prefix + "/" + l.name
}

// key returns the object key of elem under the location's prefix.
func (l s3Location) key(elem ...string) string {
	k := strings.Join(elem, "/")
	if l.prefix == "" {
		return k
	}
	return l.prefix + "/" + k
}

// s3Bucket is what S3 allows as a bucket name (lowercase letters, digits,
// dots and hyphens, 3 to 63 characters).
var s3Bucket = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// s3Segment is what pe allows as one segment of a prefix or a name: the
// characters S3 calls safe, so a key never needs escaping and never
// contains "." or ".." segments.
var s3Segment = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// parseS3 parses what follows "s3://": BUCKET/[PREFIX/]NAME[:TAG|@DIGEST].
func parseS3(s string) (Reference, error) {
	r := Reference{transport: TransportS3}
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
	} else if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		r.tag = s[i+1:]
		if !ociTag.MatchString(r.tag) {
			return Reference{}, fmt.Errorf("tag %q: want letters, digits, '_', '.' and '-', at most 128", r.tag)
		}
		s = s[:i]
	} else {
		r.tag = "latest"
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || parts[0] == "" {
		return Reference{}, errors.New("an s3:// reference is s3://BUCKET/[PREFIX/]NAME[:TAG|@sha256:…]")
	}
	if !s3Bucket.MatchString(parts[0]) {
		return Reference{}, fmt.Errorf("bucket %q: want 3 to 63 lowercase letters, digits, '.' and '-'", parts[0])
	}
	for _, p := range parts[1:] {
		if !s3Segment.MatchString(p) {
			return Reference{}, fmt.Errorf("path segment %q: want letters, digits, '_', '.' and '-' (not starting with '.' or '-', no empty segment)", p)
		}
	}
	n := len(parts)
	if strings.HasSuffix(parts[n-1], ".erofs") {
		// pe takes any reference ending in .erofs for a local file
		// (EROFSFile): such a name could never be run.
		return Reference{}, fmt.Errorf("image name %q: must not end in .erofs", parts[n-1])
	}
	if parts[n-1] == "blobs" || parts[n-1] == "indexes" || parts[n-1] == "traces" {
		// Those names hold the content-addressed objects of the prefix.
		return Reference{}, fmt.Errorf("image name %q is reserved", parts[n-1])
	}
	r.s3 = s3Location{bucket: parts[0], prefix: strings.Join(parts[1:n-1], "/"), name: parts[n-1]}
	return r, nil
}

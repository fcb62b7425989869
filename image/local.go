package image

import "strings"

// This file is the one home of the rule "does this reference name
// something on this machine?". It is a security rule: pe run refuses a
// local image from a gist (someone else's pe.toml must not choose which
// local files pe opens), and pe serve refuses one from a client. Whoever
// needs the rule calls IsLocal, Reference.IsLocal or EROFSFile rather
// than matching prefixes itself, so that a new local form (a transport, a
// file kind) is added here once and every guard learns it.

// erofsPrefix marks a reference that is the path of an EROFS file.
const erofsPrefix = "erofs:"

// EROFSFile reports whether ref names an EROFS file on this machine rather
// than an image to resolve: "erofs:PATH", or any reference ending in
// ".erofs" ("./rootfs.erofs", "docker.io/x.erofs" alike). It returns the
// file's path. engine.FileSource opens exactly these.
func EROFSFile(ref string) (path string, ok bool) {
	if p, ok := strings.CutPrefix(ref, erofsPrefix); ok {
		return p, true
	}
	if strings.HasSuffix(ref, ".erofs") {
		return ref, true
	}
	return "", false
}

// localPrefixes start the references that name something on this
// machine: an EROFS file, an OCI layout, a docker archive, a path.
var localPrefixes = []string{erofsPrefix, "oci:", "docker-archive:", "/", "./", "../", "~"}

// IsLocal reports whether ref names something on the machine that reads
// it (an EROFS file as EROFSFile takes it, oci:PATH, docker-archive:PATH,
// a path) rather than a registry image. It looks at the text only: ref
// need not parse.
func IsLocal(ref string) bool {
	for _, p := range localPrefixes {
		if strings.HasPrefix(ref, p) {
			return true
		}
	}
	_, file := EROFSFile(ref)
	return file || ref == "." || ref == ".."
}

// IsLocal reports whether r names something on this machine: an OCI
// layout or a docker archive, or a registry reference whose canonical
// form (String) pe would take for a local EROFS file ("docker://erofs:5000/x"
// is "erofs:5000/x:latest"), so that passing that form on would open a
// file.
//
// An s3:// reference is remote, like a registry's.
func (r Reference) IsLocal() bool {
	if r.transport == TransportS3 {
		return false
	}
	return r.transport != TransportRegistry || IsLocal(r.String())
}

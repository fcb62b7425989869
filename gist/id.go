package gist

import (
	"fmt"
	"net/url"
	"strings"
)

// ParseID finds the gist ID and revision ("" for the latest) in what a
// user may paste:
//
//	ID                                      aa5a315d61ae9438b18d
//	ID/REVISION                             aa5a315d61ae9438b18d/57a7f021a713b1c5a6a199b54cc514735d2d462f
//	USER/ID
//	https://gist.github.com/USER/ID         (also /ID, /USER/ID/REVISION, /USER/ID/raw/REVISION/FILE, .git)
//	https://api.github.com/gists/ID[/REVISION]
//	https://gist.githubusercontent.com/USER/ID/raw/REVISION/FILE
//	https://HOST/#gist=ID[/REVISION]        (pe's and the original's web page), or just #gist=...
//
// IDs are hexadecimal (old gists have decimal numbers, which are too);
// revisions are full 40-digit commit hashes, as GitHub's links have them,
// so that a revision names one version for ever. Both are returned in
// lower case.
func ParseID(s string) (id, revision string, err error) {
	s = strings.TrimSpace(s)
	id, revision, ok := parseID(s)
	if !ok {
		return "", "", fmt.Errorf("%q is not a gist: want ID, ID/REVISION (a 40-digit commit hash), a gist.github.com URL or a #gist=ID link", clipString(s, 100))
	}
	return strings.ToLower(id), strings.ToLower(revision), nil
}

func parseID(s string) (id, revision string, ok bool) {
	if s == "" || len(s) > 2048 {
		return "", "", false
	}
	// A link to pe's web page: the gist is in the fragment.
	if i := strings.IndexByte(s, '#'); i >= 0 {
		for part := range strings.SplitSeq(s[i+1:], "&") {
			if v, found := strings.CutPrefix(part, "gist="); found {
				if u, err := url.PathUnescape(v); err == nil {
					v = u
				}
				return parsePlain(v)
			}
		}
		// Other fragments (#file-main-c on gist.github.com) say nothing
		// of the gist.
		s = s[:i]
	}
	if strings.Contains(s, "://") || strings.HasPrefix(s, "gist.github") || strings.HasPrefix(s, "api.github") {
		if !strings.Contains(s, "://") {
			s = "https://" + s
		}
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return "", "", false
		}
		segs := splitPath(u.Path)
		// API URLs: .../gists/ID[/REVISION], under any prefix (GitHub
		// Enterprise's /api/v3).
		for i, seg := range segs {
			if seg == "gists" && i+1 < len(segs) {
				rest := segs[i+1:]
				switch {
				case len(rest) == 1 && isID(rest[0]):
					return rest[0], "", true
				case len(rest) == 2 && isID(rest[0]) && isRevision(rest[1]):
					return rest[0], rest[1], true
				}
				return "", "", false
			}
		}
		return parseWebPath(segs)
	}
	return parsePlain(s)
}

// parsePlain parses ID, ID/REVISION and USER/ID.
func parsePlain(s string) (id, revision string, ok bool) {
	segs := strings.Split(s, "/")
	switch {
	case len(segs) == 1 && isID(segs[0]):
		return segs[0], "", true
	case len(segs) == 2 && isID(segs[0]) && isRevision(segs[1]):
		return segs[0], segs[1], true
	case len(segs) == 2 && isUser(segs[0]) && !isHex(segs[0]) && isID(segs[1]):
		// USER/ID; a hex USER would read as an ID with a short revision,
		// a likelier mistake.
		return segs[1], "", true
	}
	return "", "", false
}

// parseWebPath parses the path of a gist.github.com or
// gist.githubusercontent.com URL.
func parseWebPath(segs []string) (id, revision string, ok bool) {
	if len(segs) > 0 {
		segs[len(segs)-1] = strings.TrimSuffix(segs[len(segs)-1], ".git")
	}
	switch {
	case len(segs) == 0:
		return "", "", false
	case len(segs) == 1:
		return segs[0], "", isID(segs[0])
	case isID(segs[0]) && isRevision(segs[1]) && len(segs) == 2:
		// gist.github.com/ID/REVISION
		return segs[0], segs[1], true
	case !isID(segs[1]):
		return "", "", false
	}
	// USER/ID[/...]
	id, rest := segs[1], segs[2:]
	switch {
	case len(rest) == 0, rest[0] == "revisions":
		return id, "", true
	case isRevision(rest[0]):
		return id, rest[0], true
	case rest[0] == "raw" && len(rest) >= 2 && isRevision(rest[1]):
		return id, rest[1], true
	case rest[0] == "raw":
		return id, "", true
	}
	return "", "", false
}

// splitPath splits a URL path into its non-empty segments.
func splitPath(p string) []string {
	var segs []string
	for seg := range strings.SplitSeq(p, "/") {
		if seg != "" {
			segs = append(segs, seg)
		}
	}
	return segs
}

// isID reports whether s looks like a gist ID: 1 to 64 hex digits.
func isID(s string) bool { return len(s) >= 1 && len(s) <= 64 && isHex(s) }

// isRevision reports whether s is a full commit hash.
func isRevision(s string) bool { return len(s) == 40 && isHex(s) }

// isUser reports whether s could be a GitHub user name: letters, digits
// and hyphens.
func isUser(s string) bool {
	if s == "" || len(s) > 39 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

func isHex(s string) bool {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

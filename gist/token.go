package gist

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// TokenFromEnv returns a GitHub token from the environment: $GITHUB_TOKEN,
// else $GH_TOKEN, else the github.com oauth_token of the GitHub CLI's
// hosts.yml ($GH_CONFIG_DIR, else $XDG_CONFIG_HOME/gh or ~/.config/gh).
// It returns "" when there is none. gh versions that keep the token in
// the system keyring leave no token in hosts.yml; then set GH_TOKEN, for
// example GH_TOKEN=$(gh auth token).
func TokenFromEnv() string {
	for _, name := range []string{"GITHUB_TOKEN", "GH_TOKEN"} {
		if t := strings.TrimSpace(os.Getenv(name)); t != "" {
			return t
		}
	}
	dir := os.Getenv("GH_CONFIG_DIR")
	if dir == "" {
		if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
			dir = filepath.Join(x, "gh")
		} else if home, err := os.UserHomeDir(); err == nil {
			dir = filepath.Join(home, ".config", "gh")
		}
	}
	if dir == "" {
		return ""
	}
	f, err := os.Open(filepath.Join(dir, "hosts.yml"))
	if err != nil {
		return ""
	}
	defer f.Close()
	return ghHostsToken(f, "github.com")
}

// ghHostsToken reads the oauth_token of host from gh's hosts.yml, a YAML
// map of hosts to maps of settings:
//
//	github.com:
//	    oauth_token: gho_...
//	    user: someone
//
// It reads only this much YAML (plain, single- and double-quoted scalars)
// and returns "" for anything else.
func ghHostsToken(f *os.File, host string) string {
	sc := bufio.NewScanner(f)
	in := false
	indent := -1
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		lead := len(line) - len(strings.TrimLeft(line, " \t"))
		if lead == 0 {
			key := strings.TrimSuffix(t, ":")
			key = strings.Trim(key, `"'`)
			in = key == host && strings.HasSuffix(t, ":")
			indent = -1
			continue
		}
		if !in {
			continue
		}
		if indent < 0 {
			indent = lead
		}
		if lead != indent {
			continue // nested maps (users:) hold no token pe reads
		}
		k, v, ok := strings.Cut(t, ":")
		if !ok || strings.TrimSpace(k) != "oauth_token" {
			continue
		}
		v = strings.TrimSpace(v)
		if i := strings.Index(v, " #"); i >= 0 {
			v = strings.TrimSpace(v[:i])
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		if strings.ContainsAny(v, " \t\"'") {
			return ""
		}
		return v
	}
	return ""
}

// maxTokenFile bounds a token file: a GitHub token is under 300 bytes.
const maxTokenFile = 4 << 10

// TokenFromFile reads a GitHub token from the file at path: its only
// content, surrounding white space ignored. pe serve takes its token
// only this way (--github-token-file), never from the environment, so
// that visitors spend no token the operator did not hand over.
func TokenFromFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("GitHub token file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("GitHub token file %s: %w", path, err)
	}
	if len(b) > maxTokenFile {
		return "", fmt.Errorf("GitHub token file %s: over %d bytes, not a token", path, maxTokenFile)
	}
	t := strings.TrimSpace(string(b))
	switch {
	case t == "":
		return "", fmt.Errorf("GitHub token file %s is empty", path)
	case strings.ContainsFunc(t, func(r rune) bool { return r <= ' ' || r == 0x7f || r > '~' }):
		return "", fmt.Errorf("GitHub token file %s: want the token alone, printable ASCII without spaces", path)
	}
	return t, nil
}

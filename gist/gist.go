package gist

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// ErrNoConfig means a gist (or directory) has no pe.toml.
var ErrNoConfig = errors.New("no " + ConfigName)

// Gist is one revision of a gist.
type Gist struct {
	// ID is the gist's ID; Revision the commit hash of this revision.
	ID, Revision string
	// Description is the gist's description; HTMLURL its page.
	Description, HTMLURL string
	// Revisions lists the gist's revisions, newest first.
	Revisions []string
	// Files holds the gist's files, sorted by name.
	Files []File
}

// File is a file of a gist.
type File struct {
	Name    string
	Content []byte
}

// File returns the file named name, or nil.
func (g *Gist) File(name string) *File {
	for i := range g.Files {
		if g.Files[i].Name == name {
			return &g.Files[i]
		}
	}
	return nil
}

// Config parses the gist's pe.toml, and checks that the stdin it names is
// one of the gist's files. It returns an error wrapping ErrNoConfig when
// the gist has none.
func (g *Gist) Config() (*Config, error) {
	f := g.File(ConfigName)
	if f == nil {
		return nil, fmt.Errorf("gist %s: %w", g.ID, ErrNoConfig)
	}
	c, err := ParseConfig(f.Content)
	if err != nil {
		return nil, err
	}
	if c.Stdin != "" && g.File(c.Stdin) == nil {
		return nil, &ConfigError{Key: "stdin", Line: keyLine(string(f.Content), []string{"stdin"}), Msg: fmt.Sprintf("%q is not a file of the gist", c.Stdin)}
	}
	return c, nil
}

// CheckName checks a gist file name before it is used as a path: a gist
// holds a flat list of files, so a name must be a single path element, not
// empty, "." or "..", without '/', '\\' or NUL and at most 255 bytes (a
// file name on Linux). GitHub refuses such names, so one means the answer
// did not come from GitHub, or was tampered with.
func CheckName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("file name %q is not allowed", name)
	case strings.ContainsAny(name, "/\\\x00"):
		return fmt.Errorf("file name %q has a slash, backslash or NUL byte", name)
	case len(name) > 255:
		return fmt.Errorf("file name %.40q... is longer than 255 bytes", name)
	case !utf8.ValidString(name):
		return fmt.Errorf("file name %q is not UTF-8", name)
	}
	return nil
}

// WriteDir writes the gist's files into dir, which must not exist or be an
// empty directory. The files are written into a new directory beside dir
// and renamed into place once all are written, so a failure leaves no
// half-written dir. Names are checked with CheckName and the files
// created through an os.Root, so nothing is written outside dir whatever
// the names say. Files are mode 0644, or 0755 when they start with "#!"
// (gists keep no modes; a script with a shebang line is meant to run).
func (g *Gist) WriteDir(dir string) error {
	seen := map[string]bool{}
	for _, f := range g.Files {
		if err := CheckName(f.Name); err != nil {
			return fmt.Errorf("gist %s: %w", g.ID, err)
		}
		if seen[f.Name] {
			return fmt.Errorf("gist %s: file %q appears twice", g.ID, f.Name)
		}
		seen[f.Name] = true
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("writing gist %s: %s is not empty", g.ID, dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("writing gist %s: %w", g.ID, err)
	}
	parent := filepath.Dir(filepath.Clean(dir))
	tmp, err := os.MkdirTemp(parent, ".tmp-gist-")
	if err != nil {
		return fmt.Errorf("writing gist %s: %w", g.ID, err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	root, err := os.OpenRoot(tmp)
	if err != nil {
		return fmt.Errorf("writing gist %s: %w", g.ID, err)
	}
	defer root.Close()
	for _, f := range g.Files {
		mode := os.FileMode(0o644)
		if bytes.HasPrefix(f.Content, []byte("#!")) {
			mode = 0o755
		}
		if err := writeRootFile(root, f.Name, f.Content, mode); err != nil {
			return fmt.Errorf("writing gist %s: %w", g.ID, err)
		}
	}
	// MkdirTemp makes the directory 0700; a fetched gist is an ordinary
	// directory.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("writing gist %s: %w", g.ID, err)
	}
	// os.Rename refuses to replace a directory, even an empty one: remove
	// it first. os.Remove fails on a directory filled meanwhile, which is
	// then not clobbered.
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("writing gist %s: %w", g.ID, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("writing gist %s: %w", g.ID, err)
	}
	ok = true
	return nil
}

// writeRootFile creates name under root with content and mode.
func writeRootFile(root *os.Root, name string, content []byte, mode os.FileMode) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// The umask may have cleared bits.
		err = root.Chmod(name, mode)
	}
	return err
}

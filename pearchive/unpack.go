package pearchive

import (
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// UnpackDir extracts the archive read from r into dir, which must exist,
// within lim. Files are created with mode 0644 and directories with 0755
// (before the umask). All access goes through an [os.Root] opened on dir, so
// no entry can be created outside dir, whether through a name or through a
// symbolic link already present in dir; and nothing that exists is
// overwritten or reused: an entry whose name is already taken (by a file, a
// directory or a symbolic link) is an error.
//
// On error UnpackDir returns an error naming the entry (a [*FormatError], in
// the chain, for malformed data) and leaves what it extracted so far in
// place: the caller should remove dir.
func UnpackDir(r io.Reader, dir string, lim Limits) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("pearchive: unpack: %w", err)
	}
	// roots[i] is the directory at depth i; roots[0] is dir.
	roots := []*os.Root{root}
	defer func() {
		for _, r := range roots {
			r.Close()
		}
	}()
	ar := NewReader(r, lim)
	for {
		e, err := ar.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("pearchive: unpack into %s: %w", dir, err)
		}
		depth := strings.Count(e.Path, "/")
		for len(roots) > depth+1 {
			roots[len(roots)-1].Close()
			roots = roots[:len(roots)-1]
		}
		parent, name := roots[depth], path.Base(e.Path)
		if e.Dir {
			if err := parent.Mkdir(name, 0o755); err != nil {
				return fmt.Errorf("pearchive: unpack %q into %s: %w", e.Path, dir, err)
			}
			sub, err := parent.OpenRoot(name)
			if err != nil {
				return fmt.Errorf("pearchive: unpack %q into %s: %w", e.Path, dir, err)
			}
			roots = append(roots, sub)
			continue
		}
		f, err := parent.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("pearchive: unpack %q into %s: %w", e.Path, dir, err)
		}
		_, err = io.Copy(f, ar)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("pearchive: unpack %q into %s: %w", e.Path, dir, err)
		}
	}
}

package pearchive

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// PackOptions bounds what [PackDir] and [Writer.AddDir] pack.
type PackOptions struct {
	// MaxDepth is the deepest directory nesting packed, counted like
	// [Limits.MaxDepth]; 0 means 32, a negative value no limit.
	MaxDepth int
	// MaxFiles is the largest number of entries (files and directories
	// together); 0 means no limit.
	MaxFiles int
	// MaxBytes is the largest total size of file contents; 0 means no limit.
	MaxBytes int64
}

// PackDir writes the tree under the directory dir to w as an archive. Only
// regular files and directories are packed; symbolic links, devices, named
// pipes and sockets are skipped silently (a symbolic link is never followed).
// Entries are written sorted by name (byte order), so the output depends only
// on the tree's names and contents. The error names the offending path when
// the tree is nested deeper than opts.MaxDepth, has more than opts.MaxFiles
// entries or more than opts.MaxBytes of content, or holds a file of 4 GiB or
// more. A file that shrinks while being packed is an error; one that grows is
// packed at its size when opened.
func PackDir(w io.Writer, dir string, opts PackOptions) error {
	aw := NewWriter(w)
	if err := aw.AddDir(dir, opts); err != nil {
		return err
	}
	if err := aw.Close(); err != nil {
		return fmt.Errorf("pearchive: pack %s: %w", dir, err)
	}
	return nil
}

// AddDir writes the tree under the directory dir into the Writer's current
// directory, as [PackDir] writes it at the top of an archive (the same
// entries, order, limits and errors); opts.MaxDepth counts from there. It
// lets an archive hold a host directory under a name of its own.
func (w *Writer) AddDir(dir string, opts PackOptions) error {
	opts.MaxDepth = pick(opts.MaxDepth, defaultMaxDepth)
	if opts.MaxFiles <= 0 {
		opts.MaxFiles = math.MaxInt
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = math.MaxInt64
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("pearchive: pack: %w", err)
	}
	defer root.Close()
	p := &packer{aw: w, opts: opts, base: dir}
	return p.dir(root, "", 0)
}

type packer struct {
	aw      *Writer
	opts    PackOptions
	base    string
	entries int
	bytes   int64
}

// errorf returns an error naming the path rel under the packed directory.
func (p *packer) errorf(rel string, format string, args ...any) error {
	return fmt.Errorf("pearchive: pack %s: %w", filepath.Join(p.base, filepath.FromSlash(rel)), fmt.Errorf(format, args...))
}

// dir packs the contents of the directory root, found at rel, depth
// directories below the top.
func (p *packer) dir(root *os.Root, rel string, depth int) error {
	d, err := root.Open(".")
	if err != nil {
		return p.errorf(rel, "%w", err)
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		return p.errorf(rel, "%w", err)
	}
	slices.SortFunc(ents, func(a, b os.DirEntry) int { return cmp.Compare(a.Name(), b.Name()) })
	for _, e := range ents {
		name := e.Name()
		crel := joinPath(rel, name)
		switch t := e.Type(); {
		case t.IsDir():
			if depth+1 > p.opts.MaxDepth {
				return p.errorf(crel, "directories nested more than %d deep", p.opts.MaxDepth)
			}
			if err := p.count(crel, 0); err != nil {
				return err
			}
			sub, err := root.OpenRoot(name)
			if err != nil {
				return p.errorf(crel, "%w", err)
			}
			err = p.aw.Dir(name)
			if err == nil {
				err = p.dir(sub, crel, depth+1)
			}
			sub.Close()
			if err != nil {
				return err
			}
			if err := p.aw.Pop(); err != nil {
				return p.errorf(crel, "%w", err)
			}
		case t.IsRegular():
			if err := p.file(root, name, crel); err != nil {
				return err
			}
		default:
			// Symbolic links, devices, named pipes, sockets: skipped.
		}
	}
	return nil
}

// count accounts for one more entry of size bytes.
func (p *packer) count(rel string, size int64) error {
	p.entries++
	if p.entries > p.opts.MaxFiles {
		return p.errorf(rel, "more than %d entries", p.opts.MaxFiles)
	}
	if size > p.opts.MaxBytes-p.bytes {
		return p.errorf(rel, "file of %d bytes takes the content over %d bytes", size, p.opts.MaxBytes)
	}
	p.bytes += size
	return nil
}

func (p *packer) file(root *os.Root, name, rel string) error {
	// O_NONBLOCK: a file swapped for a named pipe must not block the open.
	f, err := root.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return p.errorf(rel, "%w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return p.errorf(rel, "%w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil // replaced since the directory was listed
	}
	if fi.Size() > maxFileSize {
		return p.errorf(rel, "file of %d bytes is larger than the format's %d bytes", fi.Size(), int64(maxFileSize))
	}
	if err := p.count(rel, fi.Size()); err != nil {
		return err
	}
	if err := p.aw.File(name, fi.Size(), f); err != nil {
		return p.errorf(rel, "%w", err)
	}
	return nil
}

// MemFile is a file or directory held in memory, for [PackFiles] and
// [ReadAll].
type MemFile struct {
	// Path is the slash-separated path, such as "dir/a.txt". A trailing "/"
	// makes the entry a directory ("dir/"), whose Data is ignored.
	Path string
	// Data is a file's content.
	Data []byte
}

// memNode is a node of the tree PackFiles builds.
type memNode struct {
	name     string
	dir      bool
	explicit bool // a directory named by its own MemFile
	data     []byte
	children []*memNode
	index    map[string]*memNode
}

// PackFiles writes files to w as an archive. Directories named in several
// paths are written once, at their first appearance; entries keep the order
// in which they first appear. Parent directories need not be listed. It
// refuses an empty path, a path that is absolute or has an empty, "." or ".."
// component or an otherwise invalid name, the same path given twice, and a
// path used both as a file and as a directory.
func PackFiles(w io.Writer, files []MemFile) error {
	top := &memNode{dir: true}
	for _, f := range files {
		if err := top.add(f); err != nil {
			return err
		}
	}
	aw := NewWriter(w)
	if err := top.write(aw); err != nil {
		return err
	}
	return aw.Close()
}

func (top *memNode) add(f MemFile) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("pearchive: path %q: %s", f.Path, fmt.Sprintf(format, args...))
	}
	p := f.Path
	if p == "" {
		return bad("empty path")
	}
	if p[0] == '/' {
		return bad("absolute path")
	}
	isDir := strings.HasSuffix(p, "/")
	if isDir {
		p = p[:len(p)-1]
	}
	parts := strings.Split(p, "/")
	for _, part := range parts {
		if msg := checkName(part); msg != "" {
			return bad("%s", msg)
		}
	}
	n := top
	for i, part := range parts {
		last := i == len(parts)-1
		c := n.index[part]
		switch {
		case c == nil:
			c = &memNode{name: part, dir: !last || isDir}
			if n.index == nil {
				n.index = map[string]*memNode{}
			}
			n.index[part] = c
			n.children = append(n.children, c)
			if last {
				c.explicit = isDir
				if !isDir {
					c.data = f.Data
					if int64(len(f.Data)) > maxFileSize {
						return bad("file of %d bytes is larger than the format's %d bytes", len(f.Data), int64(maxFileSize))
					}
				}
			}
		case !c.dir:
			if last && !isDir {
				return bad("duplicate path")
			}
			return bad("%q is a file and a directory", strings.Join(parts[:i+1], "/"))
		case last && !isDir:
			return bad("%q is a directory and a file", p)
		case last && c.explicit:
			return bad("duplicate path")
		case last:
			c.explicit = true
		}
		n = c
	}
	return nil
}

func (n *memNode) write(aw *Writer) error {
	for _, c := range n.children {
		if !c.dir {
			if err := aw.File(c.name, int64(len(c.data)), bytes.NewReader(c.data)); err != nil {
				return err
			}
			continue
		}
		if err := aw.Dir(c.name); err != nil {
			return err
		}
		if err := c.write(aw); err != nil {
			return err
		}
		if err := aw.Pop(); err != nil {
			return err
		}
	}
	return nil
}

// ReadAll reads a whole archive held in b, within lim. It returns every
// entry in archive order: a file as its path with its content (a non-nil
// slice, empty for an empty file, not sharing memory with b), a directory as
// its path followed by "/" with nil Data, before the entries inside it.
// [PackFiles] turns the result back into b.
func ReadAll(b []byte, lim Limits) ([]MemFile, error) {
	br := bytes.NewReader(b)
	r := NewReader(br, lim)
	var out []MemFile
	for {
		e, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if e.Dir {
			out = append(out, MemFile{Path: e.Path + "/"})
			continue
		}
		// Check the size against what is left before allocating it.
		if e.Size > int64(br.Len()) {
			_, err := io.Copy(io.Discard, r)
			return nil, cmp.Or(err, errors.New("pearchive: internal error: short content not detected"))
		}
		data := make([]byte, e.Size)
		if _, err := io.ReadFull(r, data); err != nil {
			return nil, err
		}
		out = append(out, MemFile{Path: e.Path, Data: data})
	}
}

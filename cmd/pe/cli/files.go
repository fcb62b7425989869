package cli

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/erofs"
)

// newFilesCmd returns "pe image files".
func newFilesCmd(a *app) *cobra.Command {
	var asJSON, xattrs bool
	cmd := &cobra.Command{
		Use:   "files IMAGE.erofs [PATH]",
		Short: "List the files in an EROFS image",
		Long: `List the files of an EROFS image, or of PATH inside it, recursively, with pe's
own reader. Each line shows, like ls -l: the mode, the link count, the owner's
uid and gid, the size (major, minor for devices), the modification time and the
path, with "-> target" for symbolic links. Names that are not valid UTF-8 or
hold control characters are printed quoted, Go style.

With --json, each file is one JSON object on its own line: path, type, mode
(octal), uid, gid, size, mtime, nlink, link, dev_major, dev_minor and xattrs
(values in base64). A path or link that is not valid UTF-8 comes in path_b64 or
link_b64 instead.`,
		Example: `  pe image files rootfs.erofs
  pe image files rootfs.erofs /etc --xattrs
  pe image files rootfs.erofs --json | jq -r 'select(.type == "symlink") | .path'`,
		Args: usageArgs(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := openImage(args[0])
			if err != nil {
				return err
			}
			defer img.Close()
			root := "."
			if len(args) == 2 {
				root = imagePath(args[1])
			}
			out := bufio.NewWriterSize(cmd.OutOrStdout(), 64<<10)
			var lister fileLister
			if asJSON {
				lister = &jsonLister{enc: json.NewEncoder(out)}
			} else {
				lister = &textLister{xattrs: xattrs}
			}
			if err := walkImage(img.FS, root, lister.add); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if err := lister.flush(out); err != nil {
				return err
			}
			return out.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per file")
	cmd.Flags().BoolVar(&xattrs, "xattrs", false, "show the names of extended attributes in brackets")
	return cmd
}

// imageEntry is one file found while walking an image.
type imageEntry struct {
	path string // io/fs path: "." for the root
	info fs.FileInfo
	stat *erofs.Stat
	link string // symlink target
}

// displayPath is the path as users see it: absolute inside the image.
func (e *imageEntry) displayPath() string {
	if e.path == "." {
		return "/"
	}
	return "/" + e.path
}

// walkImage calls fn for root and, when root is a directory, everything
// below it, parents before children and names in byte order. Symbolic links
// are not followed.
func walkImage(fsys *erofs.FS, root string, fn func(*imageEntry) error) error {
	fi, err := fsys.Lstat(root)
	if err != nil {
		return err
	}
	return walkEntry(fsys, root, fi, fn)
}

func walkEntry(fsys *erofs.FS, p string, fi fs.FileInfo, fn func(*imageEntry) error) error {
	e := &imageEntry{path: p, info: fi}
	e.stat, _ = fi.Sys().(*erofs.Stat)
	if e.stat == nil {
		return fmt.Errorf("%s: no EROFS inode information", p)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, err := fsys.ReadLink(p)
		if err != nil {
			return err
		}
		e.link = target
	}
	if err := fn(e); err != nil {
		return err
	}
	if !fi.IsDir() {
		return nil
	}
	entries, err := fsys.ReadDir(p)
	if err != nil {
		return err
	}
	for _, d := range entries {
		child := d.Name()
		if p != "." {
			child = p + "/" + child
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if err := walkEntry(fsys, child, info, fn); err != nil {
			return err
		}
	}
	return nil
}

// fileLister prints the entries of "pe image files".
type fileLister interface {
	add(*imageEntry) error
	flush(w io.Writer) error
}

// textLister prints ls -l style lines, with columns aligned over the whole
// listing.
type textLister struct {
	xattrs bool
	rows   [][5]string // nlink, uid, gid, size: right-aligned; mtime
	rest   []string    // mode before, path and link after
	modes  []string
	widths [5]int
}

func (l *textLister) add(e *imageEntry) error {
	m := e.info.Mode()
	size := strconv.FormatInt(e.info.Size(), 10)
	if m&fs.ModeDevice != 0 {
		size = fmt.Sprintf("%d, %d", e.stat.DevMajor, e.stat.DevMinor)
	}
	row := [5]string{
		strconv.FormatUint(uint64(e.stat.Nlink), 10),
		strconv.FormatUint(uint64(e.stat.UID), 10),
		strconv.FormatUint(uint64(e.stat.GID), 10),
		size,
		e.info.ModTime().UTC().Format(time.RFC3339Nano),
	}
	for i, cell := range row {
		l.widths[i] = max(l.widths[i], len(cell))
	}
	rest := displayName(e.displayPath())
	if m&fs.ModeSymlink != 0 {
		rest += " -> " + displayName(e.link)
	}
	if l.xattrs && len(e.stat.Xattrs) > 0 {
		names := make([]string, 0, len(e.stat.Xattrs))
		for name := range e.stat.Xattrs {
			names = append(names, displayName(name))
		}
		slices.Sort(names)
		rest += " [" + strings.Join(names, " ") + "]"
	}
	l.rows = append(l.rows, row)
	l.modes = append(l.modes, lsMode(m))
	l.rest = append(l.rest, rest)
	return nil
}

func (l *textLister) flush(w io.Writer) error {
	for i, row := range l.rows {
		_, err := fmt.Fprintf(w, "%s %*s %*s %*s %*s %-*s %s\n", l.modes[i],
			l.widths[0], row[0], l.widths[1], row[1], l.widths[2], row[2], l.widths[3], row[3],
			l.widths[4], row[4], l.rest[i])
		if err != nil {
			return err
		}
	}
	return nil
}

// jsonEntry is one line of "pe image files --json".
type jsonEntry struct {
	Path     string            `json:"path,omitempty"`
	PathB64  string            `json:"path_b64,omitempty"`
	Type     string            `json:"type"`
	Mode     string            `json:"mode"`
	UID      uint32            `json:"uid"`
	GID      uint32            `json:"gid"`
	Size     int64             `json:"size"`
	Mtime    string            `json:"mtime"`
	Nlink    uint32            `json:"nlink"`
	Link     string            `json:"link,omitempty"`
	LinkB64  string            `json:"link_b64,omitempty"`
	DevMajor *uint32           `json:"dev_major,omitempty"`
	DevMinor *uint32           `json:"dev_minor,omitempty"`
	Xattrs   map[string]string `json:"xattrs,omitempty"`
}

// jsonLister prints one JSON object per entry as it comes.
type jsonLister struct{ enc *json.Encoder }

func (l *jsonLister) add(e *imageEntry) error {
	m := e.info.Mode()
	j := jsonEntry{
		Type:  erofs.TypeName(m),
		Mode:  fmt.Sprintf("%04o", e.stat.Mode&0o7777),
		UID:   e.stat.UID,
		GID:   e.stat.GID,
		Size:  e.info.Size(),
		Mtime: e.info.ModTime().UTC().Format(time.RFC3339Nano),
		Nlink: e.stat.Nlink,
	}
	if p := e.displayPath(); utf8.ValidString(p) {
		j.Path = p
	} else {
		j.PathB64 = base64.StdEncoding.EncodeToString([]byte(p))
	}
	if m&fs.ModeSymlink != 0 {
		if utf8.ValidString(e.link) {
			j.Link = e.link
		} else {
			j.LinkB64 = base64.StdEncoding.EncodeToString([]byte(e.link))
		}
	}
	if m&fs.ModeDevice != 0 {
		j.DevMajor, j.DevMinor = &e.stat.DevMajor, &e.stat.DevMinor
	}
	for name, value := range e.stat.Xattrs {
		if j.Xattrs == nil {
			j.Xattrs = make(map[string]string, len(e.stat.Xattrs))
		}
		j.Xattrs[name] = base64.StdEncoding.EncodeToString(value)
	}
	return l.enc.Encode(j)
}

func (l *jsonLister) flush(io.Writer) error { return nil }

// lsMode formats a mode the way ls -l does: "-rwsr-xr-x", "drwxrwxrwt",
// "crw-rw-rw-".
func lsMode(m fs.FileMode) string {
	var b [10]byte
	switch {
	case m.IsDir():
		b[0] = 'd'
	case m&fs.ModeSymlink != 0:
		b[0] = 'l'
	case m&fs.ModeCharDevice != 0:
		b[0] = 'c'
	case m&fs.ModeDevice != 0:
		b[0] = 'b'
	case m&fs.ModeNamedPipe != 0:
		b[0] = 'p'
	case m&fs.ModeSocket != 0:
		b[0] = 's'
	case m.IsRegular():
		b[0] = '-'
	default:
		b[0] = '?'
	}
	const rwx = "rwxrwxrwx"
	for i := range 9 {
		if m&(1<<(8-i)) != 0 {
			b[1+i] = rwx[i]
		} else {
			b[1+i] = '-'
		}
	}
	special := func(i int, set bool, lower byte) {
		if !set {
			return
		}
		if b[i] == '-' {
			b[i] = lower - 'a' + 'A' // set without execute
		} else {
			b[i] = lower
		}
	}
	special(3, m&fs.ModeSetuid != 0, 's')
	special(6, m&fs.ModeSetgid != 0, 's')
	special(9, m&fs.ModeSticky != 0, 't')
	return string(b[:])
}

// displayName returns s as it is when it is valid UTF-8 made of printable
// characters, and quoted with Go escapes (strconv.Quote) otherwise, so that
// every entry stays on one line and odd bytes stay visible.
func displayName(s string) string {
	if !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

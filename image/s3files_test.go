package image

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/erofs"
)

// writeEROFSFiles writes an EROFS image holding files (path → content;
// parents made as directories) and returns its path.
func writeEROFSFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "files.erofs")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := erofs.NewWriter(f, erofs.WriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mt := time.Unix(1700000000, 0)
	dirs := map[string]bool{}
	for name, content := range files {
		for d := filepath.Dir(name); d != "."; d = filepath.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				if err := w.Add(erofs.Entry{Path: d, Mode: fs.ModeDir | 0o755, ModTime: mt}, nil); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := w.Add(erofs.Entry{Path: name, Mode: 0o644, ModTime: mt, Size: int64(len(content))}, strings.NewReader(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestIndexCarriesUserFiles: a pushed image's index carries /etc/passwd
// and /etc/group, and a lazy open hands them out as UserFiles (a file the
// image lacks is absent there too); an image whose file is too big to
// carry has none, so that runs read the image.
func TestIndexCarriesUserFiles(t *testing.T) {
	_, client := s3Env(t)
	ctx := t.Context()
	passwd := "root:x:0:0:root:/root:/bin/sh\nada:x:1000:1000::/home/ada:/bin/sh\n"
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  map[string]string // nil: no UserFiles; "" value: absent
	}{
		{"passwd and group", map[string]string{"etc/passwd": passwd, "etc/group": "root:x:0:\nstaff:x:50:ada\n"},
			map[string]string{"etc/passwd": passwd, "etc/group": "root:x:0:\nstaff:x:50:ada\n"}},
		{"no group file", map[string]string{"etc/passwd": passwd}, map[string]string{"etc/passwd": passwd, "etc/group": ""}},
		{"empty passwd", map[string]string{"etc/passwd": "", "bin/x": "x"}, map[string]string{"etc/passwd": "\x00empty", "etc/group": ""}},
		{"passwd too big to carry", map[string]string{"etc/passwd": strings.Repeat("u:x:1:1::/:/bin/sh\n", 4000)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeEROFSFiles(t, tc.files)
			dest, _ := ParseReference("s3://images/users/" + strings.ReplaceAll(tc.name, " ", "-") + ":1")
			if _, err := PushEROFS(ctx, file, DefaultEROFSConfig(), dest, PushOptions{PullOptions: PullOptions{S3: client}}); err != nil {
				t.Fatal(err)
			}
			c, _ := OpenCache(t.TempDir())
			store, err := c.ChunkStore(0)
			if err != nil {
				t.Fatal(err)
			}
			img, err := c.OpenS3(ctx, dest, PullOptions{S3: client}, store)
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if tc.want == nil {
				if img.UserFiles != nil {
					t.Fatalf("UserFiles of an image whose /etc/passwd is %d bytes: want none", len(tc.files["etc/passwd"]))
				}
				return
			}
			if img.UserFiles == nil {
				t.Fatal("no UserFiles")
			}
			got := map[string]string{}
			for name := range tc.want {
				b, err := fs.ReadFile(img.UserFiles, name)
				switch {
				case errors.Is(err, fs.ErrNotExist):
					got[name] = ""
				case err != nil:
					t.Fatalf("reading %s: %v", name, err)
				case len(b) == 0:
					got[name] = "\x00empty"
				default:
					got[name] = string(b)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("UserFiles (-want +got):\n%s", diff)
			}
			if _, err := img.UserFiles.Open("etc/shadow"); err == nil || errors.Is(err, fs.ErrNotExist) {
				t.Errorf("opening a file the index does not carry: %v; want an error that is not ErrNotExist", err)
			}
		})
	}
}

// TestTagCarriesIndex: the tag object carries the index, so that
// resolving a tag is one request; a carried index that does not match
// the tag's digest is ignored for the index object; a tag of the digest
// line alone (as pushes wrote before) still resolves.
func TestTagCarriesIndex(t *testing.T) {
	g, client := s3Env(t)
	ctx := t.Context()
	file := writeTestEROFS(t, t.TempDir())
	dest, _ := ParseReference("s3://images/carry/tool:1")
	res, err := PushEROFS(ctx, file, DefaultEROFSConfig(), dest, PushOptions{PullOptions: PullOptions{S3: client}})
	if err != nil {
		t.Fatal(err)
	}
	bucket := filepath.Join(g.Dir, "images")
	idx := filepath.Join(bucket, "carry/indexes/sha256", res.Digest.Hex+".json")
	tagFile := filepath.Join(bucket, "carry/tool/tags/1")
	good, err := os.ReadFile(idx)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := os.ReadFile(tagFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := append([]byte(res.Digest.String()+"\n"), good...); !bytes.Equal(tag, want) {
		t.Fatalf("tag object is %q...; want the digest line and the index", tag[:min(len(tag), 80)])
	}
	open := func(t *testing.T) error {
		t.Helper()
		c, _ := OpenCache(t.TempDir())
		store, err := c.ChunkStore(0)
		if err != nil {
			t.Fatal(err)
		}
		img, err := c.OpenS3(ctx, dest, PullOptions{S3: client}, store)
		if err != nil {
			return err
		}
		defer img.Close()
		if img.Digest != res.Digest {
			t.Errorf("digest %s, want %s", img.Digest, res.Digest)
		}
		if _, err := c.Pull(ctx, dest, PullOptions{S3: client}); err != nil {
			return err
		}
		return nil
	}
	restore := func() {
		os.WriteFile(idx, good, 0o644)
		os.WriteFile(tagFile, tag, 0o644)
	}
	defer restore()

	t.Run("no index object", func(t *testing.T) {
		defer restore()
		os.Remove(idx)
		if err := open(t); err != nil {
			t.Errorf("open and pull by a tag carrying the index, without the index object: %v", err)
		}
	})
	t.Run("carried index damaged", func(t *testing.T) {
		defer restore()
		bad := append([]byte(res.Digest.String()+"\n"), good[:len(good)-1]...)
		os.WriteFile(tagFile, append(bad, ' '), 0o644)
		if err := open(t); err != nil {
			t.Errorf("a damaged carried index with the index object there: %v; want the index object read", err)
		}
		os.Remove(idx)
		err := open(t)
		t.Logf("the error: %v", err)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "indexes/sha256/"+res.Digest.Hex) {
			t.Errorf("a damaged carried index and no index object: %v; want ErrNotFound naming the index object", err)
		}
	})
	t.Run("digest line only", func(t *testing.T) {
		defer restore()
		os.WriteFile(tagFile, []byte(res.Digest.String()+"\n"), 0o644)
		if err := open(t); err != nil {
			t.Errorf("a tag of the digest line alone: %v", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		defer restore()
		os.WriteFile(tagFile, []byte("hello\n"+string(good)), 0o644)
		err := open(t)
		if err == nil || !strings.Contains(err.Error(), "carry/tool/tags/1") {
			t.Errorf("a tag object that is not a digest: %v; want an error naming the tag object", err)
		}
	})
}

// FuzzTagObject: whatever a bucket holds as a tag object or as an index's
// carried files, parsing gives a digest or an error, and carried files
// hand out at most what they hold, never a panic.
func FuzzTagObject(f *testing.F) {
	d := "sha256:" + strings.Repeat("ab", 32)
	f.Add([]byte(d+"\n"), []byte(`{"etc/passwd":"cm9vdDp4OjA6MDo6LzovYmluL3NoCg==","etc/group":null}`))
	f.Add([]byte(d+"\n{\"version\":1}"), []byte(`{"etc/passwd":null}`))
	f.Add([]byte("sha256:zz\n"), []byte(`[]`))
	f.Add([]byte(d), []byte(`{"etc/passwd":"","etc/group":""}`))
	f.Fuzz(func(t *testing.T, tag, files []byte) {
		h, index, err := parseTagObject(tag)
		if err == nil && (h.Algorithm != "sha256" || len(h.Hex) != 64 || (index != nil && len(index) >= len(tag))) {
			t.Fatalf("parseTagObject(%q) = %v, %d index bytes", tag, h, len(index))
		}
		fsys := decodeCarried(files)
		if fsys == nil {
			return
		}
		for _, name := range append(carriedFiles, "etc/shadow", "../etc/passwd") {
			if b, err := fs.ReadFile(fsys, name); err == nil && len(b) > maxCarriedFile {
				t.Fatalf("%s: %d bytes carried", name, len(b))
			}
		}
	})
}

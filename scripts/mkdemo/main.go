// Command mkdemo writes the small image `make demo` runs: an OCI image
// layout holding one linux/amd64 image of one layer with a static busybox,
// its applet links, /etc/passwd and /etc/group (root, a user "demo"), and a
// config whose cmd is sh. The image is reproducible: same busybox, same
// bytes.
//
//	go run ./scripts/mkdemo -busybox ./busybox -o /tmp/pe-demo-oci [-tag demo]
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	busybox := flag.String("busybox", "", "a static busybox binary")
	out := flag.String("o", "", "the OCI layout directory to write (replaced if it exists)")
	tag := flag.String("tag", "demo", "the image's tag in the layout (org.opencontainers.image.ref.name)")
	flag.Parse()
	if err := run(*busybox, *out, *tag); err != nil {
		fmt.Fprintln(os.Stderr, "mkdemo:", err)
		os.Exit(1)
	}
}

// epoch is every file's modification time, for reproducible layers.
var epoch = time.Unix(0, 0)

// run writes the demo image of busybox to the OCI layout out, tagged tag.
func run(busybox, out, tag string) error {
	if busybox == "" || out == "" {
		return errors.New("usage: mkdemo -busybox BUSYBOX -o DIR [-tag TAG]")
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	applets, err := listApplets(busybox)
	if err != nil {
		return err
	}
	layer, err := buildLayer(bb, applets)
	if err != nil {
		return err
	}
	img, err := demoImage(layer)
	if err != nil {
		return err
	}
	if err := writeLayout(out, tag, img); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s:%s (%s, %d applets)\n", out, tag, d, len(applets)-1)
	return nil
}

// listApplets asks busybox which applets it has, sorted so that the layer's
// entries come in the same order every time.
func listApplets(busybox string) ([]string, error) {
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w (is it a static busybox for this machine?)", busybox, err)
	}
	applets := strings.Fields(string(list))
	sort.Strings(applets)
	return applets, nil
}

// layerWriter writes tar entries with the fixed time and format that make
// the layer reproducible.
type layerWriter struct{ tw *tar.Writer }

// add writes h, then data for a regular file.
func (w layerWriter) add(h *tar.Header, data []byte) error {
	h.ModTime, h.Format = epoch, tar.FormatPAX
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(data))
	}
	if err := w.tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := w.tw.Write(data)
	return err
}

// dir writes a directory owned by uid (user and group).
func (w layerWriter) dir(name string, mode int64, uid int) error {
	return w.add(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid}, nil)
}

// file writes a regular file owned by root.
func (w layerWriter) file(name, content string, mode int64) error {
	return w.add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, []byte(content))
}

// buildLayer returns the image's one layer, an uncompressed tar: the
// directories of a small root, busybox and a link to it per applet, and the
// files in /etc that name the users.
func buildLayer(bb []byte, applets []string) ([]byte, error) {
	var layer bytes.Buffer
	w := layerWriter{tar.NewWriter(&layer)}
	for _, d := range []struct {
		name string
		mode int64
		uid  int
	}{{"bin", 0o755, 0}, {"dev", 0o755, 0}, {"etc", 0o755, 0}, {"home", 0o755, 0}, {"home/demo", 0o755, 1000},
		{"proc", 0o555, 0}, {"root", 0o700, 0}, {"run", 0o755, 0}, {"sys", 0o555, 0}, {"tmp", 0o1777, 0},
		{"usr", 0o755, 0}, {"usr/bin", 0o755, 0}, {"var", 0o755, 0}} {
		if err := w.dir(d.name, d.mode, d.uid); err != nil {
			return nil, err
		}
	}
	if err := w.add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, bb); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if err := w.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct{ name, content string }{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000:pe demo user:/home/demo:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		{"etc/group", "root:x:0:\ndemo:x:1000:\nnogroup:x:65534:\n"},
		{"etc/hostname", "pe-demo\n"},
		{"etc/os-release", "NAME=\"pe demo\"\nID=pe-demo\nPRETTY_NAME=\"pe demo image (Debian's busybox-static)\"\n"},
	} {
		if err := w.file(f.name, f.content, 0o644); err != nil {
			return nil, err
		}
	}
	if err := w.tw.Close(); err != nil {
		return nil, err
	}
	return layer.Bytes(), nil
}

// demoImage makes the image of the one layer data, for this machine's
// architecture, with a config that runs sh, dated at epoch.
func demoImage(data []byte) (v1.Image, error) {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Cmd = []string{"sh"}
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.WorkingDir = "/"
	return mutate.ConfigFile(img, cfg)
}

// writeLayout replaces out with an OCI layout holding img, tagged tag.
func writeLayout(out, tag string, img v1.Image) error {
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img,
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
}

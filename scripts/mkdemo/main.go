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

func run(busybox, out, tag string) error {
	if busybox == "" || out == "" {
		return errors.New("usage: mkdemo -busybox BUSYBOX -o DIR [-tag TAG]")
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %w (is it a static busybox for this machine?)", busybox, err)
	}
	applets := strings.Fields(string(list))
	sort.Strings(applets)

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	add := func(h *tar.Header, data []byte) error {
		h.ModTime, h.Format = epoch, tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	dir := func(name string, mode int64, uid int) error {
		return add(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid}, nil)
	}
	file := func(name, content string, mode int64) error {
		return add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, []byte(content))
	}
	for _, d := range []struct {
		name string
		mode int64
		uid  int
	}{{"bin", 0o755, 0}, {"dev", 0o755, 0}, {"etc", 0o755, 0}, {"home", 0o755, 0}, {"home/demo", 0o755, 1000},
		{"proc", 0o555, 0}, {"root", 0o700, 0}, {"run", 0o755, 0}, {"sys", 0o555, 0}, {"tmp", 0o1777, 0},
		{"usr", 0o755, 0}, {"usr/bin", 0o755, 0}, {"var", 0o755, 0}} {
		if err := dir(d.name, d.mode, d.uid); err != nil {
			return err
		}
	}
	if err := add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755}, bb); err != nil {
		return err
	}
	for _, a := range applets {
		if a == "busybox" {
			continue
		}
		if err := add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}, nil); err != nil {
			return err
		}
	}
	for _, f := range []struct{ name, content string }{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000:pe demo user:/home/demo:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"},
		{"etc/group", "root:x:0:\ndemo:x:1000:\nnogroup:x:65534:\n"},
		{"etc/hostname", "pe-demo\n"},
		{"etc/os-release", "NAME=\"pe demo\"\nID=pe-demo\nPRETTY_NAME=\"pe demo image (Debian's busybox-static)\"\n"},
	} {
		if err := file(f.name, f.content, 0o644); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}

	data := layer.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Cmd = []string{"sh"}
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.WorkingDir = "/"
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img,
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s:%s (%s, %d applets)\n", out, tag, d, len(applets)-1)
	return nil
}

// Command mkimage writes an OCI image layout holding one linux image made
// of the given layer tarballs, base first, each gzip-compressed, tagged
// with -tag. The image benchmark (scripts/bench-image.sh) uses it to build
// a multi-layer image locally.
//
//	go run ./scripts/mkimage -o DIR [-tag bench] layer1.tar layer2.tar ...
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func main() {
	out := flag.String("o", "", "the OCI layout directory to write (must not exist)")
	tag := flag.String("tag", "bench", "the image's org.opencontainers.image.ref.name")
	flag.Parse()
	if err := run(*out, *tag, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(out, tag string, layers []string) error {
	if out == "" || len(layers) == 0 {
		return fmt.Errorf("usage: mkimage -o DIR [-tag TAG] LAYER.tar...")
	}
	img := empty.Image
	for _, p := range layers {
		l, err := tarball.LayerFromFile(p)
		if err != nil {
			return err
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			return err
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
}

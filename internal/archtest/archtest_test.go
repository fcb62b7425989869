package archtest

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/pe-project/pe"

// layers orders pe's top-level folders. A package may import packages of
// its own folder and of folders in lower layers, nothing else of pe's
// (DESIGN.md §1: cmd/pe, server → engine → image, guest, vmm → erofs,
// pearchive). Layer 0 imports nothing of ours but internal. cmd sits above server
// because pe serve, a thin command like the others, starts it. internal
// sits below everything: it holds the rules every part shares (the size
// syntax, atomic file writes) and imports nothing of ours. A new
// top-level folder with Go code must be placed here.
var layers = map[string]int{
	"internal":  -1,
	"erofs":     0,
	"pearchive": 0,
	"gist":      0,
	"image":     1,
	"guest":     1,
	"vmm":       1,
	"engine":    2,
	"server":    3,
	"cmd":       4,
	"scripts":   4, // benchmark helpers (scripts/mkimage), like commands
	"deploy":    5, // the fleet test: runs pe (a binary) behind HAProxy, above the commands

	"blockstore": 0, // lazily read images (chunk store, NBD server, S3 client; DESIGN.md §6), beside erofs; imports nothing of ours
}

// moduleRoot finds the directory holding go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil {
			if !strings.Contains(string(b), "module "+module+"\n") {
				t.Fatalf("%s/go.mod is not module %s", dir, module)
			}
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

// folderOf returns the top-level folder of a path relative to the module
// root: "vmm/qemu" → "vmm".
func folderOf(rel string) string {
	folder, _, _ := strings.Cut(rel, "/")
	return folder
}

// imports maps each package directory (relative to the module root) to the
// module packages its Go files, tests included, import.
func imports(t *testing.T, root string) map[string][]string {
	t.Helper()
	fset := token.NewFileSet()
	deps := map[string][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(p))
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		for _, spec := range f.Imports {
			path, err := strconv.Unquote(spec.Path.Value)
			if err != nil {
				return err
			}
			if dep, ok := strings.CutPrefix(path, module+"/"); ok {
				if !slices.Contains(deps[rel], dep) {
					deps[rel] = append(deps[rel], dep)
				}
			} else if path == module {
				deps[rel] = append(deps[rel], ".")
			}
		}
		if _, ok := deps[rel]; !ok {
			deps[rel] = nil
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return deps
}

func TestDependencyDirection(t *testing.T) {
	root := moduleRoot(t)
	deps := imports(t, root)
	if len(deps["erofs"]) != 0 {
		t.Errorf("erofs imports %q; it must import nothing of ours", deps["erofs"])
	}
	for pkg, pkgDeps := range deps {
		from := folderOf(pkg)
		if pkg == "." {
			t.Errorf("Go files at the module root: code belongs in the folders of DESIGN.md §1")
			continue
		}
		fromLayer, ok := layers[from]
		if !ok {
			t.Errorf("package %s is in folder %s, which has no layer: add it to layers in this test and to docs/architecture.md", pkg, from)
			continue
		}
		for _, dep := range pkgDeps {
			to := folderOf(dep)
			if to == from {
				continue
			}
			toLayer, ok := layers[to]
			if !ok || toLayer >= fromLayer {
				t.Errorf("%s imports %s: %s (layer %d) may only import folders of lower layers", pkg, dep, from, fromLayer)
			}
		}
	}
	// The packages this milestone has, so that the walk above cannot pass
	// by finding nothing.
	for _, pkg := range []string{"erofs", "image", "cmd/pe", "cmd/pe/cli"} {
		if _, ok := deps[pkg]; !ok {
			t.Errorf("package %s not found under %s", pkg, root)
		}
	}
}

func TestLayersCheck(t *testing.T) {
	// The rule itself: the imports DESIGN.md allows and some it forbids.
	allowed := func(from, to string) bool {
		f, t := folderOf(from), folderOf(to)
		return f == t || layers[t] < layers[f]
	}
	for _, tt := range []struct {
		from, to string
		want     bool
	}{
		{"image", "erofs", true},
		{"cmd/pe/cli", "image", true},
		{"cmd/pe/cli", "erofs", true},
		{"vmm/qemu", "vmm", true},
		{"engine", "vmm", true},
		{"erofs", "image", false},
		{"image", "cmd/pe/cli", false},
		{"image", "guest", false},
		{"engine", "server", false},
		{"pearchive", "erofs", false},
		{"blockstore", "image", false},
		{"blockstore/nbd", "blockstore", true},
		{"blockstore/fusedisk", "blockstore", true},
		{"blockstore/fusedisk", "vmm", false},
		{"vmm/qemu", "blockstore/fusedisk", true},
		{"engine", "blockstore/s3", true},
		{"gist", "internal/units", true},
		{"internal/units", "gist", false},
	} {
		if got := allowed(tt.from, tt.to); got != tt.want {
			t.Errorf("%s importing %s allowed = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}

// TestGuestInitStaysSmall keeps host-only code out of the guest init: every
// package pe-init links adds start-up time in the VM, paid twice per run
// (PID 1 and the sandbox's stage-2 child) and emulated under TCG.
func TestGuestInitStaysSmall(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH: cannot list pe-init's packages")
	}
	cmd := exec.CommandContext(t.Context(), goBin, "list", "-deps", "./guest/cmd/pe-init")
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./guest/cmd/pe-init: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, module+"/guest/guestinit") {
		t.Fatalf("go list found no guest/guestinit among pe-init's packages: %q", deps)
	}
	// The host's side of the guest (the initramfs builder) and what only
	// it needs: decompressors, the cpio writer, the ELF reader.
	forbidden := []string{
		module + "/guest/initramfs",
		"github.com/u-root/u-root/pkg/cpio",
		"github.com/klauspost/compress/zstd",
		"github.com/ulikunitz/xz",
		"debug/elf",
		"crypto/sha256",
	}
	for _, f := range forbidden {
		if slices.Contains(deps, f) {
			t.Errorf("pe-init links %s, a host-side package: keep it out of package guest and guest/guestinit", f)
		}
	}
}

// TestOneRegistrationOfBackends keeps the concrete VMM backends behind
// vmm/backends: the engine and the CLI choose, describe and start VMMs
// through vmm.BackendInfo, so only that list (and tests, and test-support
// packages such as engine/enginetest) may import a backend's package.
func TestOneRegistrationOfBackends(t *testing.T) {
	root := moduleRoot(t)
	backendPkgs := []string{"vmm/qemu", "vmm/cloudhypervisor"}
	allowed := append([]string{"vmm/backends"}, backendPkgs...)
	fset := token.NewFileSet()
	found := false
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(p))
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if slices.Contains(allowed, rel) || strings.HasSuffix(rel, "test") {
			found = found || rel == "vmm/backends"
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, spec := range f.Imports {
			path, _ := strconv.Unquote(spec.Path.Value)
			if dep, ok := strings.CutPrefix(path, module+"/"); ok && slices.Contains(backendPkgs, dep) {
				t.Errorf("%s/%s imports %s: reach backends through vmm/backends and vmm.BackendInfo", rel, name, dep)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Error("vmm/backends not found: the walk checked nothing")
	}
}

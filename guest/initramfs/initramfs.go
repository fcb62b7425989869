package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/internal/atomicfile"
)

// DefaultModules are the kernel modules the guest init needs, by module
// name: the virtio transports (MMIO for QEMU microvm, PCI for
// cloud-hypervisor), the virtio disk driver, the virtio console and serial
// driver (the data channel, see guest/stream.go) and the two file systems
// of the container root. Their dependencies are added by [Build]; modules
// the kernel has built in are skipped. The rest the init relies on (tmpfs,
// devtmpfs, cgroup v2 with memory and pids, user and PID namespaces, the
// 8250 serial console) is built into Debian's cloud kernel.
var DefaultModules = []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_console", "erofs", "overlay"}

// MMIOModules are DefaultModules without the PCI transport, for QEMU's
// microvm machine, whose devices are all virtio-mmio. Each module costs
// boot time (tens of milliseconds under TCG), so a guest loads only what
// its machine has.
var MMIOModules = []string{"virtio_mmio", "virtio_blk", "virtio_console", "erofs", "overlay"}

// RootModules are the file systems of the container root (the EROFS image
// under a tmpfs overlay): the modules every guest loads after those its
// machine's devices need (vmm.BackendInfo.GuestModules).
var RootModules = []string{"erofs", "overlay"}

// initramfsFormat changes whenever Build's output changes for the
// same inputs, so cached initramfs files from older builds are not reused.
const initramfsFormat = "pe-initramfs-2"

// ModuleError reports a module that cannot be resolved.
type ModuleError struct {
	Module   string // the module name
	NeededBy string // the module that depends on it, "" for a requested one
	Err      error
}

func (e *ModuleError) Error() string {
	if e.NeededBy != "" {
		return fmt.Sprintf("module %s (needed by %s): %v", e.Module, e.NeededBy, e.Err)
	}
	return fmt.Sprintf("module %s: %v", e.Module, e.Err)
}

func (e *ModuleError) Unwrap() error { return e.Err }

// ErrModuleNotFound is wrapped by a [ModuleError] for a module that is
// neither in the modules tree nor built into the kernel.
var ErrModuleNotFound = errors.New("not found in the modules tree nor built in")

// module is one kernel module to ship.
type module struct {
	name    string
	path    string
	depends []string
	content []byte
}

// moduleName turns a file name or module name into the kernel's module name:
// no directory, no .ko[.xz|.zst|.gz] suffix, '-' as '_'.
func moduleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

func isModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// indexModules maps module names to files under dir.
func indexModules(dir string) (map[string]string, error) {
	idx := map[string]string{}
	if dir == "" {
		return idx, nil
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && isModuleFile(d.Name()) {
			idx[moduleName(d.Name())] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index kernel modules: %w", err)
	}
	return idx, nil
}

// builtinModules reads modules.builtin from dir or its parent (where
// scripts/get-kernel.sh puts it beside modules/); absent means none known.
func builtinModules(dir string) (map[string]bool, error) {
	m := map[string]bool{}
	if dir == "" {
		return m, nil
	}
	for _, p := range []string{filepath.Join(dir, "modules.builtin"), filepath.Join(filepath.Dir(dir), "modules.builtin")} {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				m[moduleName(line)] = true
			}
		}
		break
	}
	return m, nil
}

// readModule reads a module file, decompressing .xz, .zst and .gz, because
// the init loads modules with finit_module and the kernel may lack
// in-kernel decompression.
func readModule(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(p, ".xz"):
		if r, err = xz.NewReader(f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	case strings.HasSuffix(p, ".zst"):
		d, err := zstd.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		defer d.Close()
		r = d
	case strings.HasSuffix(p, ".gz"):
		if r, err = gzip.NewReader(f); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return b, nil
}

// moduleSigMagic ends a module file with an appended signature, after
// the signature and its 12-byte struct module_signature, whose last four
// bytes are the signature's length (big-endian).
const moduleSigMagic = "~Module signature appended~\n"

// stripModuleSignature returns module without its appended signature, or
// module itself when it has none or the trailer does not add up.
func stripModuleSignature(module []byte) []byte {
	const infoLen = 12
	n := len(module) - len(moduleSigMagic)
	if n < infoLen || string(module[n:]) != moduleSigMagic {
		return module
	}
	sigLen := int64(binary.BigEndian.Uint32(module[n-4 : n]))
	end := int64(n-infoLen) - sigLen
	if end <= 0 {
		return module
	}
	return module[:end]
}

// unsignedModulesLoad reports whether the kernel whose module tree is
// modulesTree loads modules without a signature: its config (the file
// "config" beside the tree, as scripts/get-kernel.sh installs it) says
// signatures are not enforced and lockdown is not forced. pe boots its
// guests without Secure Boot and without module.sig_enforce or lockdown=
// on the command line, so nothing else enforces them. Without a config it
// answers false: the modules keep their signatures.
func unsignedModulesLoad(modulesTree string) bool {
	if modulesTree == "" {
		return false
	}
	config, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Clean(modulesTree)), "config"))
	if err != nil {
		return false
	}
	known := false
	for _, line := range strings.Split(string(config), "\n") {
		switch strings.TrimSpace(line) {
		case "CONFIG_MODULE_SIG_FORCE=y", "CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y", "CONFIG_LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY=y":
			return false
		case "# CONFIG_MODULE_SIG_FORCE is not set", "# CONFIG_MODULE_SIG is not set", "# CONFIG_MODULES is not set":
			known = true
		}
	}
	return known
}

// modinfoDepends returns the depends= list of a module's .modinfo section.
func modinfoDepends(content []byte) ([]string, error) {
	ef, err := elf.NewFile(bytes.NewReader(content))
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	defer ef.Close()
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf(".modinfo: %w", err)
	}
	var deps []string
	for _, kv := range bytes.Split(data, []byte{0}) {
		v, ok := bytes.CutPrefix(kv, []byte("depends="))
		if !ok {
			continue
		}
		for _, d := range strings.Split(string(v), ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, moduleName(d))
			}
		}
	}
	return deps, nil
}

// resolveModules returns the modules to load, dependencies first, in a
// stable order: requested modules in the order given, each preceded by its
// dependencies (depth first, in depends= order). Built-in modules are left
// out; a missing one or a cycle is an error.
func resolveModules(dir string, names []string) ([]*module, error) {
	idx, err := indexModules(dir)
	if err != nil {
		return nil, err
	}
	builtin, err := builtinModules(dir)
	if err != nil {
		return nil, err
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []*module
	var stack []string
	var visit func(name, neededBy string) error
	visit = func(name, neededBy string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			i := len(stack) - 1
			for stack[i] != name {
				i--
			}
			cycle := append(append([]string{}, stack[i:]...), name)
			return &ModuleError{Module: name, NeededBy: neededBy, Err: fmt.Errorf("dependency cycle %s", strings.Join(cycle, " -> "))}
		}
		p, ok := idx[name]
		if !ok {
			if builtin[name] {
				state[name] = done
				return nil
			}
			return &ModuleError{Module: name, NeededBy: neededBy, Err: ErrModuleNotFound}
		}
		state[name] = visiting
		stack = append(stack, name)
		content, err := readModule(p)
		if err != nil {
			return &ModuleError{Module: name, NeededBy: neededBy, Err: err}
		}
		deps, err := modinfoDepends(content)
		if err != nil {
			return &ModuleError{Module: name, NeededBy: neededBy, Err: fmt.Errorf("%s: %w", p, err)}
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[name] = done
		order = append(order, &module{name: name, path: p, depends: deps, content: content})
		return nil
	}
	for _, n := range names {
		if err := visit(moduleName(n), ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Build writes an uncompressed newc cpio archive to out holding
// the static guest init as /init, the requested kernel modules and their
// dependencies as /lib/modules/<name>.ko (decompressed), /lib/modules/order
// listing them in load order (dependencies first), /dev/console and
// /dev/null so the init has a console before it mounts devtmpfs, and the
// empty directories the init mounts on. modulesTree is a kernel's module tree
// (lib/modules/<release>/kernel, searched recursively; "" when every module
// is built in); modules nil means [DefaultModules]. Modules listed in
// modules.builtin (in modulesDir or beside it) need no file. Modules lose
// their appended signatures when the kernel loads unsigned ones (see
// unsignedModulesLoad): verifying them costs the guest a SHA-256 of every
// module under emulation, and the host, which checked the kernel package,
// is the one that builds this archive. The archive is reproducible: same
// inputs, same bytes. out appears only when complete.
func Build(out string, initBinary string, modulesTree string, modules []string) (err error) {
	if modules == nil {
		modules = DefaultModules
	}
	mods, err := resolveModules(modulesTree, modules)
	if err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	init, err := os.ReadFile(initBinary)
	if err != nil {
		return fmt.Errorf("build initramfs: guest init: %w", err)
	}
	if len(init) < 4 || string(init[:4]) != "\x7fELF" {
		return fmt.Errorf("build initramfs: guest init %s is not an ELF executable", initBinary)
	}

	// cpio names are relative to the archive's root.
	modulesDir := strings.TrimPrefix(guest.ModulesDir, "/")
	var recs []cpio.Record
	for _, d := range []string{"dev", "proc", "sys", "run", "mnt", "tmp", "lib", "lib/modules"} {
		recs = append(recs, cpio.Directory(d, 0o755))
	}
	recs = append(recs,
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.CharDev("dev/null", 0o666, 1, 3),
		cpio.StaticRecord(init, cpio.Info{Name: "init", Mode: cpio.S_IFREG | 0o755}),
	)
	var order strings.Builder
	strip := unsignedModulesLoad(modulesTree)
	for _, m := range mods {
		content := m.content
		if strip {
			content = stripModuleSignature(content)
		}
		recs = append(recs, cpio.StaticRecord(content, cpio.Info{Name: modulesDir + "/" + m.name + ".ko", Mode: cpio.S_IFREG | 0o644}))
		order.WriteString(m.name + "\n")
	}
	recs = append(recs, cpio.StaticFile(strings.TrimPrefix(guest.ModulesOrder, "/"), order.String(), 0o644))
	for i := range recs {
		recs[i].Ino = uint64(i + 1)
		recs[i].NLink = 1
	}

	tmp, err := atomicfile.Create(out, atomicfile.Options{Pattern: ".initramfs-*.tmp", Perm: 0o644})
	if err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	defer tmp.Abort()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	w := cpio.Newc.Writer(bw)
	if err := cpio.WriteRecords(w, recs); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	if err := tmp.Commit(); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	return nil
}

// Path returns an initramfs for the kernel identified by kernelID
// (its release, e.g. the version file of the kernel directory) with the
// guest init initBinary and modules (nil = [DefaultModules]) from
// modulesDir, building it into cacheDir when it is not there yet. The cache
// key covers the kernel, the module list and the init's contents, so a new
// pe build or kernel gets a new file; concurrent callers may both build,
// and the atomic rename makes either result the one kept. Building one
// removes the entries nobody used for two weeks.
func Path(cacheDir, kernelID, initBinary, modulesDir string, modules []string) (string, error) {
	if modules == nil {
		modules = DefaultModules
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", initramfsFormat, kernelID, strings.Join(modules, ","))
	f, err := os.Open(initBinary)
	if err != nil {
		return "", fmt.Errorf("initramfs: guest init: %w", err)
	}
	_, err = io.Copy(h, f)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("initramfs: guest init: %w", err)
	}
	p := filepath.Join(cacheDir, "initramfs-"+hex.EncodeToString(h.Sum(nil))[:32]+".cpio")
	if _, err := os.Stat(p); err == nil {
		// Its modification time says when it was last used: see prune.
		now := time.Now()
		os.Chtimes(p, now, now)
		return p, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if err := Build(p, initBinary, modulesDir, modules); err != nil {
		return "", err
	}
	prune(cacheDir, p, time.Now())
	return p, nil
}

// Unused cache entries older than these are removed when a new one is
// built: every pe build and kernel makes a new initramfs (3-4 MB), and
// those of builds no longer run would otherwise stay forever. An entry
// another pe still uses is touched at each use, so it stays.
const (
	unusedInitramfsAge = 14 * 24 * time.Hour
	abandonedTempAge   = time.Hour // a build killed half-way
)

// prune removes from cacheDir the initramfs files other than keep unused
// since unusedInitramfsAge, and the temporary files of builds abandoned
// for abandonedTempAge. Failures only leave files behind.
func prune(cacheDir, keep string, now time.Time) {
	entries, err := os.ReadDir(cacheDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		name := e.Name()
		var maxAge time.Duration
		switch {
		case strings.HasPrefix(name, "initramfs-") && strings.HasSuffix(name, ".cpio"):
			maxAge = unusedInitramfsAge
		case strings.HasPrefix(name, ".initramfs-") && strings.HasSuffix(name, ".tmp"):
			maxAge = abandonedTempAge
		default:
			continue
		}
		p := filepath.Join(cacheDir, name)
		if p == keep || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil && now.Sub(fi.ModTime()) > maxAge {
			os.Remove(p)
		}
	}
}

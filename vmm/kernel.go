package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Kernel is an installed guest kernel, laid out as scripts/get-kernel.sh
// installs it: DIR/vmlinuz, DIR/modules/ (the lib/modules/<release>/kernel
// tree), DIR/config and DIR/version.
type Kernel struct {
	// Dir is the kernel's directory.
	Dir string
	// Vmlinuz is the kernel image.
	Vmlinuz string
	// ModulesDir is the module tree, "" when there is none (every module
	// pe needs built in).
	ModulesDir string
	// Version is the kernel release ("6.1.0-56-cloud-amd64"), from the
	// version file, "" when unknown.
	Version string
	// Package names the Debian package it came from, "" when unknown.
	Package string
}

// ID identifies the kernel for caches: release and package, or the
// image's size and modification time when those are unknown.
func (k *Kernel) ID() string {
	id := k.Version
	if k.Package != "" {
		id += " " + k.Package
	}
	if id == "" {
		if fi, err := os.Stat(k.Vmlinuz); err == nil {
			id = fmt.Sprintf("%s %d %d", k.Vmlinuz, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return id
}

// KernelNotFoundError reports that no guest kernel is installed where pe
// looked.
type KernelNotFoundError struct {
	// Looked lists the places tried.
	Looked []string
	// Err is the last error met.
	Err error
}

func (e *KernelNotFoundError) Error() string {
	return fmt.Sprintf("no guest kernel in %s: run `make kernel` (scripts/get-kernel.sh) to install Debian's cloud kernel, or give one with --kernel DIR or PE_KERNEL",
		strings.Join(e.Looked, ", "))
}

func (e *KernelNotFoundError) Unwrap() error { return e.Err }

// DataDir returns pe's data directory: $PE_DATA_DIR, else
// $XDG_DATA_HOME/pe, else ~/.local/share/pe.
func DataDir() string {
	if d := os.Getenv("PE_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "pe")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "pe-data")
	}
	return filepath.Join(home, ".local", "share", "pe")
}

// CacheDir returns pe's cache directory: $PE_CACHE_DIR, else
// $XDG_CACHE_HOME/pe, else ~/.cache/pe.
func CacheDir() string {
	if d := os.Getenv("PE_CACHE_DIR"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "pe")
	}
	return filepath.Join(os.TempDir(), "pe-cache")
}

// FindKernel finds the guest kernel: in override when it is not empty (a
// kernel directory, or a kernel image file whose directory may hold
// modules/ and version), else in $PE_KERNEL, else in DataDir()/kernel. The
// error, a *KernelNotFoundError, tells the user how to install one.
func FindKernel(override string) (*Kernel, error) {
	dir := override
	if dir == "" {
		dir = os.Getenv("PE_KERNEL")
	}
	if dir == "" {
		dir = filepath.Join(DataDir(), "kernel")
	}
	k, err := loadKernel(dir)
	if err != nil {
		return nil, &KernelNotFoundError{Looked: []string{dir}, Err: err}
	}
	return k, nil
}

func loadKernel(path string) (*Kernel, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, err
	}
	k := &Kernel{Dir: abs, Vmlinuz: filepath.Join(abs, "vmlinuz")}
	if !fi.IsDir() {
		k.Dir, k.Vmlinuz = filepath.Dir(abs), abs
	} else if _, err := os.Stat(k.Vmlinuz); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(filepath.Join(k.Dir, "modules")); err == nil && fi.IsDir() {
		k.ModulesDir = filepath.Join(k.Dir, "modules")
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if b, err := os.ReadFile(filepath.Join(k.Dir, "version")); err == nil {
		k.Version = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(k.Dir, "package")); err == nil {
		k.Package = strings.TrimSpace(string(b))
	}
	return k, nil
}

package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/guest"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
)

// A snapshot is a directory: manifest.json, the guest's RAM (mem) and its
// device state (state), saved from a VM booted until the guest init was
// ready for a request (kernel booted, modules loaded, image mounted). A run
// from it restores a copy of that VM, hands it a fresh I/O disk and wakes
// it; everything else is a run like any other (see Engine.Run).

// SnapshotFormat is the version of the snapshot directory's layout.
const SnapshotFormat = 1

// SnapshotManifestFile is the manifest's name in a snapshot directory.
const SnapshotManifestFile = "manifest.json"

// SnapshotIOSize is the size of the I/O disk a snapshot's VM boots with (a
// sparse file, removed once the snapshot is made). The guest kernel keeps
// the disk's size it learnt then, so a restored VM takes I/O files of up to
// this size. Each gets its own I/O file at its own size, not this one:
// QEMU refuses what the guest writes past the end of the file, so a run's
// host disk stays bounded by its inputs and output areas.
const SnapshotIOSize = 16 << 30

// snapshotCreateLimit bounds the boot of a VM to be saved (TCG is slow).
const snapshotCreateLimit = 3 * time.Minute

// Errors callers of the snapshot functions may branch on.
var (
	// ErrSnapshotMismatch means a snapshot was made by another pe build,
	// kernel, VMM (or version of it), acceleration or image file than the
	// ones at hand, or a run asks for another machine (memory, vCPUs).
	ErrSnapshotMismatch = errors.New("the snapshot does not match")
	// ErrBadSnapshot means a snapshot directory is incomplete or damaged.
	ErrBadSnapshot = errors.New("bad snapshot")
	// ErrSnapshotExists means CreateSnapshot would overwrite a directory
	// without SnapshotRequest.Force.
	ErrSnapshotExists = errors.New("the snapshot directory exists")
	// ErrNoSnapshots means the VMM in use cannot save or restore VMs.
	ErrNoSnapshots = vmm.ErrNoSnapshots
)

// SnapshotRequest asks for a snapshot of a VM booted for Image.
type SnapshotRequest struct {
	// Image is the image reference, resolved by Options.Images.
	Image string
	// Dir is the snapshot directory to create.
	Dir string
	// Force replaces an existing Dir.
	Force bool
	// MemoryMiB and CPUs are the VM's (0: the defaults); every run from
	// the snapshot has them.
	MemoryMiB int
	CPUs      int
	// Debug turns on the guest init's verbose log, in every run from the
	// snapshot; Console receives the guest console of the boot.
	Debug   bool
	Console io.Writer
}

// SnapshotFile describes a file a snapshot depends on or holds.
type SnapshotFile struct {
	// Path is where the file is ("" for the snapshot's own files).
	Path string `json:"path,omitempty"`
	// Size is its size in bytes.
	Size int64 `json:"size"`
	// ModTime is its modification time (for files outside the snapshot,
	// which a rebuild would change).
	ModTime time.Time `json:"mtime,omitzero"`
	// SHA256 is its hex digest, when recorded.
	SHA256 string `json:"sha256,omitempty"`
}

// SnapshotS3Image is the s3:// image of a snapshot.
type SnapshotS3Image struct {
	// Reference is the image pinned to its digest
	// (s3://BUCKET/PREFIX/NAME@sha256:...).
	Reference string `json:"reference"`
	// Size is the EROFS image's size in bytes.
	Size int64 `json:"size"`
}

// SnapshotManifest is manifest.json: what the snapshot was made from and
// with. A snapshot is restored only where all of it still holds.
type SnapshotManifest struct {
	// Format is SnapshotFormat.
	Format int `json:"format"`
	// Boot marks a boot snapshot (see Options.BootSnapshots): made for no
	// image, it has no Image, ImageFile or ImageConfig, and each run
	// restored from it attaches its own image.
	Boot bool `json:"boot,omitempty"`
	// Created is when the snapshot was made.
	Created time.Time `json:"created"`
	// Image is the image booted; ImageFile its EROFS file, which restored
	// VMs attach again (the snapshot's guest has it mounted);
	// ImageConfig its config, merged with each run's overrides.
	Image       ImageInfo      `json:"image"`
	ImageFile   SnapshotFile   `json:"image_file"`
	ImageConfig *v1.ConfigFile `json:"image_config,omitempty"`
	// ImageS3, instead of ImageFile, is the s3:// image booted, read
	// lazily: each restored VM attaches it again, opened by its digest
	// (Image.Digest, which pins its bytes), lazily or from the cache's
	// whole copy.
	ImageS3 *SnapshotS3Image `json:"image_s3,omitempty"`
	// Kernel is the guest kernel's identity (vmm.Kernel.ID); KernelImage
	// the file booted.
	Kernel      string       `json:"kernel"`
	KernelImage SnapshotFile `json:"kernel_image"`
	// Initramfs is the initramfs file's name, which hashes the kernel, its
	// modules and the guest init.
	Initramfs string `json:"initramfs"`
	// PEBuild identifies the pe that made the snapshot (see PEBuild).
	PEBuild string `json:"pe_build"`
	// VMM, VMMVersion and Accel are the VMM, its version and the
	// acceleration the VM ran with.
	VMM        string `json:"vmm"`
	VMMVersion string `json:"vmm_version"`
	Accel      string `json:"accel"`
	// MemoryMiB and CPUs are the VM's.
	MemoryMiB int `json:"memory_mib"`
	CPUs      int `json:"cpus"`
	// Cmdline is the kernel command line it booted with.
	Cmdline string `json:"cmdline"`
	// IOSize is the size of its I/O disk (SnapshotIOSize).
	IOSize int64 `json:"io_size"`
	// Mem and State are the snapshot's RAM and device-state files.
	Mem   SnapshotFile `json:"mem"`
	State SnapshotFile `json:"state"`
}

// Snapshot is an opened, checked snapshot directory, ready for runs
// (RunRequest.Snapshot). It is safe for concurrent use: runs never change
// the directory.
type Snapshot struct {
	// Dir is the snapshot directory.
	Dir string
	// Manifest is its manifest.
	Manifest SnapshotManifest

	// pool, when set, is the SnapshotPool that keeps it, under name.
	pool *SnapshotPool
	name string
}

// snapshotImage returns the image a run from snap attaches: the
// snapshot's file, or its s3:// image opened again by its digest (lazily,
// or the cache's whole copy: the same bytes), which the caller releases.
func (e *Engine) snapshotImage(ctx context.Context, snap *Snapshot) (*ResolvedImage, error) {
	m := &snap.Manifest
	if m.ImageS3 == nil {
		return snap.Image(), nil
	}
	img, err := e.opts.Images.Resolve(ctx, m.ImageS3.Reference)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", snap.Dir, err)
	}
	size := int64(-1)
	if img.Lazy != nil {
		size = img.Lazy.Size()
	} else if fi, err := os.Stat(img.EROFSPath); err == nil {
		size = fi.Size()
	}
	if img.Digest != m.Image.Digest || size != m.ImageS3.Size {
		img.release()
		return nil, fmt.Errorf("%w: %s: %s resolved to %s (%d bytes), the snapshot has %s (%d bytes)", ErrSnapshotMismatch, snap.Dir, m.ImageS3.Reference, img.Digest, size, m.Image.Digest, m.ImageS3.Size)
	}
	// The names and config the snapshot was made with.
	img.Reference, img.Config = m.Image.Reference, m.ImageConfig
	return img, nil
}

// Image returns the image the snapshot's VMs run. For a snapshot of an
// s3:// image (Manifest.ImageS3) it has no file: a run opens the image
// again.
func (s *Snapshot) Image() *ResolvedImage {
	m := &s.Manifest
	return &ResolvedImage{Reference: m.Image.Reference, Digest: m.Image.Digest, EROFSPath: m.ImageFile.Path, Config: m.ImageConfig}
}

// PEBuild identifies this pe build: the snapshot format and guest protocol
// with the main module's version and VCS revision. (The guest init is
// covered by the initramfs name.)
func PEBuild() string {
	s := fmt.Sprintf("snapshot/%d", SnapshotFormat)
	if bi, ok := debug.ReadBuildInfo(); ok {
		s += " " + bi.Main.Path + "@" + bi.Main.Version
		for _, kv := range bi.Settings {
			switch kv.Key {
			case "vcs.revision", "vcs.modified":
				s += " " + kv.Key + "=" + kv.Value
			}
		}
		s += " " + bi.GoVersion
	}
	return s
}

// ReadSnapshotManifest reads and decodes dir/manifest.json, without
// checking it against anything.
func ReadSnapshotManifest(dir string) (*SnapshotManifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, SnapshotManifestFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s: no %s (create one with pe snapshot create)", ErrBadSnapshot, dir, SnapshotManifestFile)
		}
		return nil, fmt.Errorf("snapshot %s: %w", dir, err)
	}
	var m SnapshotManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %s: %s: %v", ErrBadSnapshot, dir, SnapshotManifestFile, err)
	}
	if m.Format != SnapshotFormat {
		return nil, fmt.Errorf("%w: %s: format %d, this pe reads format %d; create it again", ErrSnapshotMismatch, dir, m.Format, SnapshotFormat)
	}
	if m.MemoryMiB <= 0 || m.CPUs <= 0 || m.IOSize <= 0 || (m.ImageFile.Path == "" && m.ImageS3 == nil) != m.Boot || m.VMM == "" ||
		(m.ImageS3 != nil && (m.ImageFile.Path != "" || m.ImageS3.Reference == "" || m.ImageS3.Size <= 0)) {
		return nil, fmt.Errorf("%w: %s: incomplete manifest", ErrBadSnapshot, dir)
	}
	return &m, nil
}

// snapshotter returns the backend of choice as a Snapshotter.
func snapshotter(choice *Choice) (vmm.Snapshotter, error) {
	sb, ok := choice.Backend.(vmm.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("%s: %w", choice.VMM, ErrNoSnapshots)
	}
	return sb, nil
}

// snapshotEnv is what a snapshot must match: this engine's kernel, guest
// init, VMM and acceleration.
type snapshotEnv struct {
	backend    vmm.Snapshotter
	choice     *Choice
	vmmVersion string
	initramfs  string
}

func (e *Engine) snapshotEnv(ctx context.Context) (*snapshotEnv, error) {
	choice, err := e.Choice(ctx)
	if err != nil {
		return nil, err
	}
	sb, err := snapshotter(choice)
	if err != nil {
		return nil, err
	}
	ver, err := vmm.CachedVersion(ctx, e.opts.CacheDir, choice.Binary, sb.Version)
	if err != nil {
		return nil, err
	}
	initramfs, err := e.initramfs(choice)
	if err != nil {
		return nil, err
	}
	return &snapshotEnv{backend: sb, choice: choice, vmmVersion: ver, initramfs: initramfs}, nil
}

// CreateSnapshot boots a VM for r.Image until the guest is ready for a
// request, saves it into r.Dir and stops it. The directory is built next
// to r.Dir and renamed into place, so it is either complete or absent; an
// existing r.Dir is an error (ErrSnapshotExists) unless r.Force. The VM
// takes one of the engine's slots while it runs.
func (e *Engine) CreateSnapshot(ctx context.Context, r SnapshotRequest) (*SnapshotManifest, error) {
	if r.Dir == "" {
		return nil, errors.New("snapshot: no directory")
	}
	dir := filepath.Clean(r.Dir)
	if _, err := os.Lstat(dir); err == nil && !r.Force {
		return nil, fmt.Errorf("%w: %s (use --force to replace it)", ErrSnapshotExists, dir)
	}
	img, err := e.opts.Images.Resolve(ctx, r.Image)
	if err != nil {
		return nil, err
	}
	defer img.release()
	return e.createSnapshot(ctx, img, dir, r, snapshotCreateLimit)
}

// createSnapshot makes the snapshot of a VM booted for img (nil: a boot
// snapshot) in dir, as CreateSnapshot says; the VM must be ready within
// limit.
func (e *Engine) createSnapshot(ctx context.Context, img *ResolvedImage, dir string, r SnapshotRequest, limit time.Duration) (*SnapshotManifest, error) {
	m := &SnapshotManifest{Format: SnapshotFormat, Boot: img == nil}
	work, err := e.newWorkDir()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	what, mode := "the boot", guest.SnapshotBoot
	imagePath := filepath.Join(work, "image.img")
	if img != nil && img.Lazy != nil {
		pinned, err := image.PinS3(img.Reference, img.Digest)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Reference, err)
		}
		what, mode = img.Reference, guest.SnapshotImage
		m.Image, m.ImageConfig = ImageInfo{Reference: img.Reference, Digest: img.Digest}, img.Config
		m.ImageS3 = &SnapshotS3Image{Reference: pinned, Size: img.Lazy.Size()}
	} else if img != nil {
		imgFile, err := statFile(img.EROFSPath)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Reference, err)
		}
		what, mode, imagePath = img.Reference, guest.SnapshotImage, img.EROFSPath
		m.Image, m.ImageFile, m.ImageConfig = ImageInfo{Reference: img.Reference, Digest: img.Digest}, *imgFile, img.Config
	} else if err := makeSparse(imagePath, BootSnapshotImageSize); err != nil {
		// The guest kernel learns the image disk's size before the
		// snapshot: every image a restored VM attaches must fit in it.
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	env, err := e.snapshotEnv(ctx)
	if err != nil {
		return nil, err
	}
	kernelFile, err := statFile(e.bootKernel)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}

	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.sem }()

	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	// A pe killed while making this snapshot left its temporary
	// directory: remove it (its owner file says the pe is gone).
	sweepOwnedDirs(filepath.Join(filepath.Dir(dir), filepath.Base(dir)+".tmp-*"), e.log)
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := writeOwner(tmp); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	// The I/O disk of the boot stays empty: the guest must not read it
	// before it is woken, in a restored VM, with another file in its place.
	ioPath := filepath.Join(work, "io.img")
	if err := makeSparse(ioPath, SnapshotIOSize); err != nil {
		return nil, err
	}
	mem, cpus := machineOrDefaults(r.MemoryMiB, r.CPUs)
	vm := &machine{choice: env.choice, initramfs: env.initramfs, imagePath: imagePath, ioPath: ioPath,
		work: work, memMiB: mem, cpus: cpus, debug: r.Debug, console: r.Console}
	sctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var lazy *lazyDisk
	if img != nil && img.Lazy != nil {
		if lazy, err = e.startLazyDisk(sctx, img.Reference, img, env.choice.VMM, work, nil); err != nil {
			return nil, err
		}
		defer e.stopLazyDisk(lazy)
		detach, err := lazy.attach(vm)
		if err != nil {
			return nil, err
		}
		defer detach()
	}
	cfg := e.vmConfig(vm)
	cfg.Cmdline += " " + guest.CmdlineSnapshot + "=" + mode

	err = env.backend.SaveSnapshot(sctx, cfg, tmp, []byte(guest.SnapshotReady))
	if lazy != nil {
		e.stopLazyDisk(lazy)
		if rerr := lazy.r.readError(img.Reference); rerr != nil {
			// The cause, whatever the guest made of it.
			err = rerr
		}
	}
	cancel()
	if err != nil {
		return nil, fmt.Errorf("snapshot of %s: %w", what, err)
	}
	state, err := hashFile(filepath.Join(tmp, vmm.SnapshotStateFile))
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	memFile, err := statFile(filepath.Join(tmp, vmm.SnapshotMemFile))
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	memFile.Path, memFile.ModTime = "", time.Time{}
	m.Created = time.Now().UTC()
	m.Kernel, m.KernelImage = e.kernel.ID(), *kernelFile
	m.Initramfs, m.PEBuild = filepath.Base(env.initramfs), PEBuild()
	m.VMM, m.VMMVersion, m.Accel = env.choice.VMM, env.vmmVersion, env.choice.Accel
	m.MemoryMiB, m.CPUs, m.Cmdline, m.IOSize = mem, cpus, cfg.Cmdline, SnapshotIOSize
	m.Mem, m.State = *memFile, *state
	if err := writeManifest(tmp, m); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	if err := replaceDir(tmp, dir, r.Force); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	return m, nil
}

// writeManifest writes m into the snapshot directory tmp, made by
// createSnapshot, and flushes the directory to disk: a crash must not
// leave a snapshot whose manifest vouches for a RAM file the kernel never
// wrote.
func writeManifest(tmp string, m *SnapshotManifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, SnapshotManifestFile), append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(tmp, runDirOwner)); err != nil {
		return err
	}
	for _, name := range []string{vmm.SnapshotMemFile, vmm.SnapshotStateFile, SnapshotManifestFile, "."} {
		if err := syncFile(filepath.Join(tmp, name)); err != nil {
			return err
		}
	}
	return nil
}

// replaceDir renames tmp to dir; with force, an existing dir is moved
// aside first and removed after.
func replaceDir(tmp, dir string, force bool) error {
	err := os.Rename(tmp, dir)
	if err == nil || !force {
		if err != nil && errors.Is(err, os.ErrExist) || isNotEmpty(err) {
			return fmt.Errorf("%w: %s", ErrSnapshotExists, dir)
		}
		return err
	}
	old := tmp + ".old"
	if err := os.Rename(dir, old); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.Rename(old, dir)
		return err
	}
	return os.RemoveAll(old)
}

// isNotEmpty reports the error rename gives for a non-empty target.
func isNotEmpty(err error) bool {
	var le *os.LinkError
	return errors.As(err, &le) && (errors.Is(le.Err, os.ErrExist) || strings.Contains(le.Err.Error(), "not empty"))
}

// OpenSnapshot reads the snapshot in dir and checks it can be restored
// here: the manifest against this pe build, kernel, guest init, VMM (and
// its version) and acceleration (ErrSnapshotMismatch), and its files:
// the device state's digest, the RAM file's size (ErrBadSnapshot) and the
// image file, which must be the very file the snapshot's guest mounted.
func (e *Engine) OpenSnapshot(ctx context.Context, dir string) (*Snapshot, error) {
	m, err := ReadSnapshotManifest(dir)
	if err != nil {
		return nil, err
	}
	env, err := e.snapshotEnv(ctx)
	if err != nil {
		return nil, err
	}
	return e.checkSnapshot(dir, m, env)
}

// checkSnapshot is OpenSnapshot's check of the manifest m of dir against
// env, which the caller has.
func (e *Engine) checkSnapshot(dir string, m *SnapshotManifest, env *snapshotEnv) (*Snapshot, error) {
	mismatch := func(what, snap, here string) error {
		return fmt.Errorf("%w: %s: made with %s %q, this pe has %q; create it again", ErrSnapshotMismatch, dir, what, snap, here)
	}
	switch {
	case m.PEBuild != PEBuild():
		return nil, mismatch("pe build", m.PEBuild, PEBuild())
	case m.Kernel != e.kernel.ID():
		return nil, mismatch("kernel", m.Kernel, e.kernel.ID())
	case m.Initramfs != filepath.Base(env.initramfs):
		return nil, mismatch("guest init and modules", m.Initramfs, filepath.Base(env.initramfs))
	case m.VMM != env.choice.VMM:
		return nil, mismatch("VMM", m.VMM, env.choice.VMM)
	case m.VMMVersion != env.vmmVersion:
		return nil, mismatch(m.VMM+" version", m.VMMVersion, env.vmmVersion)
	case m.Accel != env.choice.Accel:
		return nil, mismatch("acceleration", m.Accel, env.choice.Accel)
	}
	if k, err := statFile(e.bootKernel); err != nil || k.Size != m.KernelImage.Size {
		return nil, mismatch("kernel image", m.KernelImage.Path, e.bootKernel)
	}
	if !m.Boot && m.ImageS3 == nil {
		img, err := statFile(m.ImageFile.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: the image file is gone: %v", ErrSnapshotMismatch, dir, err)
		}
		if img.Size != m.ImageFile.Size || !img.ModTime.Equal(m.ImageFile.ModTime) {
			return nil, fmt.Errorf("%w: %s: the image file %s changed since the snapshot (size %d, was %d); create it again", ErrSnapshotMismatch, dir, img.Path, img.Size, m.ImageFile.Size)
		}
	}
	mem, err := statFile(filepath.Join(dir, vmm.SnapshotMemFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadSnapshot, dir, err)
	}
	if mem.Size != m.Mem.Size {
		return nil, fmt.Errorf("%w: %s: the RAM file has %d bytes, want %d", ErrBadSnapshot, dir, mem.Size, m.Mem.Size)
	}
	state, err := hashFile(filepath.Join(dir, vmm.SnapshotStateFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrBadSnapshot, dir, err)
	}
	if state.SHA256 != m.State.SHA256 {
		return nil, fmt.Errorf("%w: %s: the device state file is damaged (sha256 %s, want %s)", ErrBadSnapshot, dir, state.SHA256, m.State.SHA256)
	}
	return &Snapshot{Dir: dir, Manifest: *m}, nil
}

// statFile describes path: its size and modification time.
func statFile(path string) (*SnapshotFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	return &SnapshotFile{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UTC()}, nil
}

// hashFile returns the size and SHA-256 of a snapshot file.
func hashFile(path string) (*SnapshotFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, err
	}
	return &SnapshotFile{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// syncFile flushes a file or directory to disk.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// makeSparse creates a file of size bytes, all holes.
func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// EnsureSnapshot returns the snapshot of r.Image in r.Dir, making it first
// when there is none, or when the one there cannot be used: made for
// another image digest or file (the reference now resolves to another
// image), another pe build, kernel, guest init, VMM or acceleration
// (ErrSnapshotMismatch), or damaged (ErrBadSnapshot). r.Force is implied.
// A SnapshotPool keeps its snapshots with it, at start-up, every refresh
// and after a run gave one back.
func (e *Engine) EnsureSnapshot(ctx context.Context, r SnapshotRequest) (*Snapshot, error) {
	snap, img, err := e.ensureSnapshot(ctx, r)
	if err != nil {
		return nil, err
	}
	img.release()
	return snap, nil
}

// ensureSnapshot is EnsureSnapshot, and also returns the image the
// snapshot's VMs attach, held (img.release) so that the cache keeps its
// file: a SnapshotPool holds it as long as it keeps the snapshot.
func (e *Engine) ensureSnapshot(ctx context.Context, r SnapshotRequest) (*Snapshot, *ResolvedImage, error) {
	img, err := e.opts.Images.Resolve(ctx, r.Image)
	if err != nil {
		return nil, nil, err
	}
	snap, err := e.openOrMakeSnapshot(ctx, r, img)
	if err != nil {
		img.release()
		return nil, nil, err
	}
	return snap, img, nil
}

// openOrMakeSnapshot opens the snapshot in r.Dir if it was made for img
// and r's machine, else makes it again (see EnsureSnapshot).
func (e *Engine) openOrMakeSnapshot(ctx context.Context, r SnapshotRequest, img *ResolvedImage) (*Snapshot, error) {
	snap, err := e.OpenSnapshot(ctx, r.Dir)
	if err == nil {
		m := &snap.Manifest
		mem, cpus := machineOrDefaults(r.MemoryMiB, r.CPUs)
		if m.Image.Digest == img.Digest && m.ImageFile.Path == img.EROFSPath && m.MemoryMiB == mem && m.CPUs == cpus {
			return snap, nil
		}
		e.log.Info("snapshot made for another image or machine: making it again", "dir", r.Dir, "image", r.Image)
	} else if !errors.Is(err, ErrSnapshotMismatch) && !errors.Is(err, ErrBadSnapshot) {
		return nil, err
	} else if _, serr := os.Stat(r.Dir); errors.Is(serr, fs.ErrNotExist) {
		e.log.Info("making a snapshot", "dir", r.Dir, "image", r.Image)
	} else {
		e.log.Info("snapshot unusable: making it again", "dir", r.Dir, "reason", err)
	}
	r.Force = true
	if _, err := e.CreateSnapshot(ctx, r); err != nil {
		return nil, err
	}
	return e.OpenSnapshot(ctx, r.Dir)
}

// ForSnapshot returns opts for runs from the snapshot in dir
// (RunRequest.SnapshotDir): where opts leave the VMM or the acceleration
// to be chosen (auto), the snapshot's, which its restore needs. It reads
// the manifest only; the run checks the rest (OpenSnapshot).
func ForSnapshot(opts Options, dir string) (Options, error) {
	m, err := ReadSnapshotManifest(dir)
	if err != nil {
		return opts, err
	}
	if opts.Backend == nil {
		if opts.VMM == "" || opts.VMM == VMMAuto {
			opts.VMM = m.VMM
		}
		if opts.Accel == "" || opts.Accel == vmm.AccelAuto {
			opts.Accel = m.Accel
		}
	}
	return opts, nil
}

package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/fusedisk"
	"github.com/pe-project/pe/blockstore/nbd"
	"github.com/pe-project/pe/image"
)

// A lazy image (ResolvedImage.Lazy: an s3:// image read on demand) reaches
// its VM through the engine's NBD server: each run that uses one gets its
// own export, and each VM start a fresh socket pair whose one end the VMM
// inherits. startLazyDisk and stopLazyDisk are where a run with a lazy
// image begins and ends: whatever a run does around the image's reads
// (prefetch, traces) starts and stops there.

// nbdVMM is the one VMM that reads NBD disks; the others (cloud-hypervisor)
// get the lazy image as a file on a FUSE mount (Options.LazyFUSE gives
// QEMU the same, so that the path is tested where cloud-hypervisor cannot
// run).
const nbdVMM = "qemu"

// lazyFUSEDir is the FUSE mount's directory in a run's work directory.
const lazyFUSEDir = "lazy"

// A lazy run prefetches, below the guest's demand reads, the chunks its
// command's trace lists (what the first run of the command read, in that
// order: image.TraceKey of its argv and working directory), or, without a
// trace, the image's metadata chunks; the first run of a command leaves
// its trace beside the image for every later run, on any machine.
const (
	// prefetchWorkers is how many chunks a run prefetches at once.
	prefetchWorkers = 8
	// traceTimeout bounds loading and saving a trace: a slow bucket must
	// not hold a run up for what is only a speed-up.
	traceTimeout = 3 * time.Second
	// maxMetadataPrefetch bounds the metadata prefetched without a trace:
	// an image made by mkfs.erofs scatters its metadata over a third of
	// the image, and a run reads a few percent of it.
	maxMetadataPrefetch = 32 << 20
	// earlyMetadataChunks is how many of the metadata chunks a run
	// fetches at once, before it knows whether its command has a trace.
	earlyMetadataChunks = 4
)

// ImageReadError reports a run whose guest could not read its image: the
// chunk store failed reads (storage unreachable, a chunk that does not
// match its digest, the image gone from the bucket), which the guest saw
// as I/O errors, so the program's result would mislead.
type ImageReadError struct {
	// Reference names the image.
	Reference string
	// Failed is how many reads failed, Waiting how many still waited for
	// the storage when the VM stopped; Err is the first failure's error,
	// or says that reads were waiting.
	Failed, Waiting int64
	Err             error
}

func (e *ImageReadError) Error() string {
	if e.Failed == 0 {
		return fmt.Sprintf("reading image %s: %v (%d read(s) of the guest waiting)", e.Reference, e.Err, e.Waiting)
	}
	return fmt.Sprintf("reading image %s: %v (%d read(s) of the guest failed)", e.Reference, e.Err, e.Failed)
}

func (e *ImageReadError) Unwrap() error { return e.Err }

// lazyDisk is one run's lazy image served as an NBD export.
type lazyDisk struct {
	e *Engine
	// ref names the run's image; img is the image, nil until serve.
	ref    string
	img    *ResolvedImage
	export string
	r      *runReader
	cancel context.CancelFunc
	// stalled is how many reads were waiting when the VM stopped.
	stalled int64

	// fuse, when set, shows the image as the file path instead of an
	// NBD export: the VMM cannot read NBD.
	fuse *fusedisk.FS
	path string

	// pf is the run's prefetch, which stopLazyDisk ends.
	pf *imagePrefetch
	// file is the image's file when the disk serves one (an image the
	// cache holds whole, known only once resolved).
	file *os.File

	mu    sync.Mutex
	ends  []*os.File // the VMM's ends of the socket pairs, until stop
	stats *blockstore.Stats
}

// runReader reads the image for one run: every read ends with the run
// (ctx), and the first failure is kept for the run's error. Its reads
// wait until serve gives it the image.
type runReader struct {
	ctx context.Context
	// ready is closed once src and size are set: src nil means the
	// run has no image (it failed to resolve).
	ready chan struct{}
	src   io.ReaderAt
	size  int64
	// failed counts the failed reads; pending the reads waiting now.
	failed  atomic.Int64
	pending atomic.Int64
	mu      sync.Mutex
	err     error
}

// errNoImage is the read of a disk whose image could not be resolved
// (the run fails with the resolve's error).
var errNoImage = errors.New("the run has no image")

// ReadAt reads the image; past its end, where the disk served before the
// image was known is larger than the image, it reads zeros.
func (r *runReader) ReadAt(p []byte, off int64) (int, error) {
	r.pending.Add(1)
	defer r.pending.Add(-1)
	select {
	case <-r.ready:
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	}
	if r.src == nil {
		return 0, errNoImage
	}
	want := len(p)
	if off >= r.size {
		clear(p)
		return want, nil
	}
	if rest := r.size - off; int64(len(p)) > rest {
		clear(p[rest:])
		p = p[:rest]
	}
	n, err := r.src.ReadAt(p, off)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(p)) && r.ctx.Err() == nil {
		r.failed.Add(1)
		r.mu.Lock()
		if r.err == nil {
			r.err = err
		}
		r.mu.Unlock()
	}
	if n == len(p) {
		return want, nil
	}
	return n, err
}

// readError is the run's first failed read, nil when none failed.
func (r *runReader) readError(ref string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		return nil
	}
	return &ImageReadError{Reference: ref, Failed: r.failed.Load(), Err: r.err}
}

// nbdServer returns the engine's NBD server, made at the first lazy run.
func (e *Engine) nbdServer() *nbd.Server {
	e.nbdMu.Lock()
	defer e.nbdMu.Unlock()
	if e.nbd == nil {
		e.nbd = nbd.NewServer(nbd.Options{Logger: e.log})
	}
	return e.nbd
}

// startLazyDisk offers the run's image (ref, resolved as img) for one
// run, to a VM of the VMM named vmmName whose work directory is work: as
// a new export of the engine's NBD server, or as a file on a FUSE mount
// in work when the VMM cannot read NBD. pf is the run's prefetch, started
// when the run was planned (nil: the metadata's, started now). Its reads
// end when ctx does or at stopLazyDisk, which the caller calls once the
// run's VM is gone.
//
// img is nil for an image resolved while the VM starts (NBD only): the
// export then has the size of a boot snapshot's image disk, and its reads
// wait until serve gives it the image.
func (e *Engine) startLazyDisk(ctx context.Context, ref string, img *ResolvedImage, vmmName, work string, pf *imagePrefetch) (_ *lazyDisk, err error) {
	fuse := vmmName != nbdVMM || e.opts.LazyFUSE
	if fuse && img == nil {
		return nil, fmt.Errorf("serving image %s to %s: the image must be resolved first", ref, vmmName)
	}
	rctx, cancel := context.WithCancel(ctx)
	d := &lazyDisk{
		e: e, cancel: cancel, ref: ref,
		export: "run-" + rand.Text(),
		r:      &runReader{ctx: rctx, ready: make(chan struct{})},
	}
	defer func() {
		if err != nil {
			d.pf.stop()
			d.closeFile()
			cancel()
		}
	}()
	size := int64(BootSnapshotImageSize)
	if img != nil {
		if err := d.serve(img, pf); err != nil {
			return nil, err
		}
		size = d.r.size
	}
	if fuse {
		if err := d.mountFUSE(work); err != nil {
			return nil, fmt.Errorf("serving image %s to %s: %w", ref, vmmName, err)
		}
	} else {
		err := e.nbdServer().AddExport(nbd.Export{Name: d.export, Description: ref, Data: d.r, Size: size})
		if err != nil {
			return nil, fmt.Errorf("serving image %s: %w", ref, err)
		}
	}
	e.lazyDisks.Add(1)
	return d, nil
}

// serve gives the disk its image, once: a lazy image read within the
// run, with pf as its prefetch (nil: the metadata's, started now), or
// the file of one the cache holds whole.
func (d *lazyDisk) serve(img *ResolvedImage, pf *imagePrefetch) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.r
	if img.Lazy != nil {
		if pf == nil {
			pf = d.e.startPrefetch(r.ctx, img, "")
		}
		d.pf = pf
		r.src, r.size = ctxReader{r.ctx, img.Lazy}, img.Lazy.Size()
	} else {
		f, err := os.Open(img.EROFSPath)
		if err != nil {
			return fmt.Errorf("serving image %s: %w", img.Reference, err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("serving image %s: %w", img.Reference, err)
		}
		d.file = f
		r.src, r.size = f, fi.Size()
	}
	d.img = img
	close(r.ready)
	return nil
}

// closeFile closes the image file the disk serves, if it serves one.
func (d *lazyDisk) closeFile() {
	if d.file != nil {
		d.file.Close()
	}
}

// imagePrefetch is a lazy run's prefetch: started when the run is planned,
// before the engine reads the image's /etc/passwd, in the background (the
// run never waits for the bucket), and ended with the run's lazy disk.
type imagePrefetch struct {
	e   *Engine
	img *ResolvedImage
	// key is the run's command's trace key ("": the run neither records
	// nor uses a trace); hadTrace says the bucket had one.
	key      string
	hadTrace atomic.Bool
	cancel   context.CancelFunc
	done     chan struct{}
	once     sync.Once
	// before is the image's counters when the prefetch started, which is
	// where the run's counters start (the difference: a SnapshotPool's
	// image serves many runs).
	before blockstore.Stats
}

// startPrefetch starts recording the run's first reads of img and
// prefetches, below its demand reads, the trace of the command key names,
// or the image's metadata when it has none.
func (e *Engine) startPrefetch(ctx context.Context, img *ResolvedImage, key string) *imagePrefetch {
	ctx, cancel := context.WithCancel(ctx)
	p := &imagePrefetch{e: e, img: img, key: key, cancel: cancel, done: make(chan struct{}), before: img.Lazy.Stats()}
	im := img.Lazy
	if key != "" {
		im.StartTrace(0)
	}
	go func() {
		defer close(p.done)
		// The engine's first reads (the superblock, /etc/passwd) and the
		// trace's first chunks are the metadata at the image's start (pe
		// writes it first): fetch those while the trace is on its way.
		head := metadataPlan(im.Index())
		head = head[:min(len(head), earlyMetadataChunks)]
		if len(head) > 0 {
			early := im.PrefetchOrder(ctx, head, prefetchWorkers)
			defer early.Stop()
		}
		var tr *blockstore.Trace
		if key != "" && img.Traces != nil {
			lctx, cancel := context.WithTimeout(ctx, traceTimeout)
			t, err := img.Traces.LoadTrace(lctx, key)
			cancel()
			if err != nil && ctx.Err() == nil {
				e.log.Warn("loading the prefetch trace of the run's command", "image", img.Reference, "error", err)
			}
			tr = t
		}
		plan := metadataPlan(im.Index())
		if tr != nil {
			p.hadTrace.Store(true)
			plan = tr.Chunks
		}
		if len(plan) == 0 || ctx.Err() != nil {
			return
		}
		res := im.PrefetchOrder(ctx, plan, prefetchWorkers).Wait() // ends with ctx
		e.log.Debug("prefetched", "image", img.Reference, "trace", tr != nil, "planned", len(plan), "fetched", res.Fetched, "cached", res.Cached, "failed", res.Failed)
	}()
	return p
}

// stop ends the prefetch and waits for it. It may be called more than
// once.
func (p *imagePrefetch) stop() {
	if p == nil {
		return
	}
	p.once.Do(func() {
		p.cancel()
		<-p.done
	})
}

// metadataPlan is the image's metadata chunks, up to maxMetadataPrefetch
// bytes of them.
func metadataPlan(ix *blockstore.Index) []int {
	n := len(ix.MetadataChunks)
	if ix.ChunkSize > 0 {
		n = min(n, int(maxMetadataPrefetch/ix.ChunkSize))
	}
	return ix.MetadataChunks[:n]
}

// saveTrace leaves the run's trace beside the image when the bucket had
// none for its command and the run read its image without a failure.
func (p *imagePrefetch) saveTrace(failed bool) {
	if p == nil || p.key == "" || p.hadTrace.Load() || p.img.Traces == nil || failed {
		return
	}
	t := p.img.Lazy.Trace()
	if t == nil || len(t.Chunks) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), traceTimeout)
	defer cancel()
	wrote, err := p.img.Traces.SaveTrace(ctx, p.key, t)
	if err != nil {
		p.e.log.Warn("saving the prefetch trace of the run's command", "image", p.img.Reference, "error", err)
		return
	}
	p.e.log.Debug("saved the prefetch trace of the run's command", "image", p.img.Reference, "chunks", len(t.Chunks), "wrote", wrote)
}

// mountFUSE shows the run's image as a file on a FUSE mount of its own in
// work (private to pe: 0700), which confined QEMU, another uid, may read
// (allow_other). A mount per run goes with the run; one a killed pe left
// behind, sweepOwnedDirs detaches.
func (d *lazyDisk) mountFUSE(work string) error {
	dir := filepath.Join(work, lazyFUSEDir)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	fs, err := fusedisk.Mount(dir, fusedisk.Options{AllowOther: os.Geteuid() == 0, Name: "pe-image", Logger: d.e.log})
	if err != nil {
		return err
	}
	path, err := fs.Add(d.export+".erofs", d.r, d.r.size)
	if err != nil {
		fs.Close()
		return err
	}
	d.fuse, d.path = fs, path
	return nil
}

// attach gives vm the run's image disk for one VM start: the FUSE file,
// or a new connection to the export. The caller calls detach once the
// VMM has started (it has its own copy of the connection then) or failed.
func (d *lazyDisk) attach(vm *machine) (detach func(), err error) {
	if d.fuse != nil {
		vm.imagePath = d.path
		return func() {}, nil
	}
	f, err := d.connect()
	if err != nil {
		return nil, err
	}
	vm.nbd, vm.export = f, d.export
	return func() { f.Close(); vm.nbd = nil }, nil
}

// connect makes a new connection to the run's export for one VM start and
// returns the VMM's end, which the VMM copies at its start: the caller
// closes it then, and stop closes it anyway.
func (d *lazyDisk) connect() (*os.File, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("image %s: socket pair: %w", d.ref, err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "pe-nbd"), os.NewFile(uintptr(fds[1]), "vmm-nbd")
	nc, err := net.FileConn(mine)
	mine.Close() // nc has its own copy: the VMM sees the end when nc closes
	if err != nil {
		theirs.Close()
		return nil, fmt.Errorf("image %s: %w", d.ref, err)
	}
	if err := d.e.nbdServer().ServeConn(nc); err != nil {
		theirs.Close()
		return nil, fmt.Errorf("serving image %s: %w", d.ref, err)
	}
	d.mu.Lock()
	d.ends = append(d.ends, theirs)
	d.mu.Unlock()
	return theirs, nil
}

// stopLazyDisk ends the run's reads, removes its export (which ends its
// connections and waits for their reads), closes what is left of its
// sockets and keeps the run's counters. It may be called more than once.
func (e *Engine) stopLazyDisk(d *lazyDisk) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stats != nil {
		return
	}
	d.cancel()
	d.pf.stop()
	if d.fuse != nil {
		// Close ends reads still waiting and unmounts, whatever they do.
		if err := d.fuse.Close(); err != nil {
			e.log.Warn("unmounting a lazy image's FUSE file", "image", d.ref, "error", err)
		}
	} else {
		e.nbdServer().RemoveExport(d.export)
	}
	for _, f := range d.ends {
		f.Close()
	}
	d.ends = nil
	d.closeFile()
	d.stats = &blockstore.Stats{}
	if d.img != nil && d.img.Lazy != nil {
		*d.stats = diffStats(d.img.Lazy.Stats(), d.pf.before)
	}
	e.lazyDisks.Add(-1)
	d.pf.saveTrace(d.r.failed.Load() > 0)
}

// runStats returns the run's counters so far, nil when the disk serves
// no lazy image.
func (d *lazyDisk) runStats() *blockstore.Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.img == nil || d.img.Lazy == nil {
		return nil
	}
	if d.stats != nil {
		s := *d.stats
		return &s
	}
	st := diffStats(d.img.Lazy.Stats(), d.pf.before)
	return &st
}

// diffStats returns the counters of a - b.
func diffStats(a, b blockstore.Stats) blockstore.Stats {
	return blockstore.Stats{
		Gets:             a.Gets - b.Gets,
		Hedges:           a.Hedges - b.Hedges,
		Retries:          a.Retries - b.Retries,
		BytesFetched:     a.BytesFetched - b.BytesFetched,
		Hits:             a.Hits - b.Hits,
		Misses:           a.Misses - b.Misses,
		Joins:            a.Joins - b.Joins,
		DigestMismatches: a.DigestMismatches - b.DigestMismatches,
		CorruptCached:    a.CorruptCached - b.CorruptCached,
		CacheWriteErrors: a.CacheWriteErrors - b.CacheWriteErrors,
		Evictions:        a.Evictions - b.Evictions,
		EvictedBytes:     a.EvictedBytes - b.EvictedBytes,
		Stalled:          a.Stalled - b.Stalled,
	}
}

// ctxReader reads a lazy image within ctx (the image config's and
// /etc/passwd's reads while a run is planned).
type ctxReader struct {
	ctx context.Context
	im  *blockstore.Image
}

func (r ctxReader) ReadAt(p []byte, off int64) (int, error) { return r.im.ReadAtContext(r.ctx, p, off) }

// traceKey names a run's command for its prefetch trace: its argv and
// working directory, whatever its inputs (a compiler's run of another
// source file reads the same parts of the image).
func traceKey(argv []string, cwd string) string {
	return image.TraceKey(append([]string{"cwd", cwd, "argv"}, argv...)...)
}

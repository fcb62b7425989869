package engine

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// diskWatch records, while a run goes on, the largest size and the most
// disk blocks any file under dir reached: the run's I/O file lives there
// and is removed when the run ends. The size is what bounds the file (it
// never grows); the blocks, sampled, may miss the last writes.
type diskWatch struct {
	mu              sync.Mutex
	maxSize, maxUse int64
	biggest         string
	stop            chan struct{}
	done            chan struct{}
}

func watchDisk(dir string) *diskWatch {
	w := &diskWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil || !d.Type().IsRegular() {
					return nil
				}
				fi, err := d.Info()
				if err != nil {
					return nil
				}
				var use int64
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					use = st.Blocks * 512
				}
				w.mu.Lock()
				if fi.Size() > w.maxSize {
					w.maxSize, w.biggest = fi.Size(), p
				}
				w.maxUse = max(w.maxUse, use)
				w.mu.Unlock()
				return nil
			})
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *diskWatch) end() (maxSize, maxUse int64, biggest string) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.maxSize, w.maxUse, w.biggest
}

// diskBombImage writes the fixture's busybox tree plus block device nodes
// for the virtio disks' likely numbers, mode 0666: a program that can open
// them is one that got around the guest's walls (which other tests check),
// and here stands for any guest writing its disks.
func diskBombImage(t *testing.T, f *vmFixture) string {
	t.Helper()
	return writeImageWith(t, f, erofs.WriterOptions{}, func(add func(erofs.Entry, []byte)) {
		add(erofs.Entry{Path: "x", Mode: fs.ModeDir | 0o755}, nil)
		for _, major := range []uint32{252, 253, 254} {
			for _, minor := range []uint32{0, 16} {
				add(erofs.Entry{Path: fmt.Sprintf("x/blk-%d-%d", major, minor), Mode: fs.ModeDevice | 0o666, DevMajor: major, DevMinor: minor}, nil)
			}
		}
	})
}

// TestVMHostDiskBound runs a program that writes all it can to every disk
// it can find (from 64 MiB in: past the end of this run's I/O file, where
// the file would grow), floods its output directory, stdout and stderr,
// once in a VM restored from the boot snapshot (whose guest booted with an
// I/O disk of SnapshotIOSize bytes) and once in a booted VM. The I/O file
// on the host never grows past the run's limits, and the run reports its
// result. (Writes from offset 0 would spoil the program's own result,
// which is no concern of this test.)
func TestVMHostDiskBound(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	img := diskBombImage(t, f)
	const maxOutput = 256 << 10
	// The I/O file: header, request, result area, then stdout, stderr and
	// the output archive of maxOutput each (no stdin, no inputs).
	const bound = 3*maxOutput + 64<<10
	script := `
		for d in /x/* /dev/vd*; do
			[ -b "$d" ] || continue
			echo "DISK $d" >&2
			dd if=/dev/zero of="$d" bs=1M seek=64 count=256 2>&1 | tail -1 >&2
		done
		dd if=/dev/zero of=/run/pe/output/big bs=1M count=32 2>/dev/null
		i=0; while [ $i -lt 100 ]; do echo x > /run/pe/output/f$i; i=$((i+1)); done
		yes | head -c 1000000
		yes | head -c 1000000 >&2
		echo finished >&2
		exit 7`

	for _, c := range []struct {
		name     string
		restored bool
	}{{"restored", true}, {"booted", false}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			e, err := New(Options{
				Images:        StaticSource{"bomb": {Reference: "bomb", Digest: "sha256:bomb", EROFSPath: img, Config: busyboxConfig()}},
				Backend:       qemu.New(""),
				Accel:         vmm.AccelTCG,
				KernelInfo:    f.kernel,
				InitBinary:    f.init,
				CacheDir:      filepath.Join(t.TempDir(), "cache"),
				TempDir:       tmp,
				Log:           testLogger(t),
				BootSnapshots: c.restored,
			})
			if err != nil {
				t.Fatal(err)
			}
			if c.restored {
				// Made before the watch: the snapshot's own VM has the
				// large I/O disk the guest is to believe in.
				vmSlots <- struct{}{}
				ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
				err := e.EnsureBootSnapshot(ctx, 0, 0)
				cancel()
				<-vmSlots
				if err != nil {
					t.Fatal(err)
				}
			}
			out := filepath.Join(t.TempDir(), "out")
			w := watchDisk(tmp)
			res, err := runErr(t, e, &RunRequest{Image: "bomb", Overrides: Overrides{Cmd: sh(script)}, MaxOutput: maxOutput, OutputDir: out, Timeout: 60 * time.Second})
			maxSize, maxUse, biggest := w.end()
			t.Logf("largest file %s: %d bytes, at most %d on disk (bound %d)", filepath.Base(biggest), maxSize, maxUse, bound)
			if maxSize > bound || maxUse > bound {
				t.Errorf("a file of the run reached %d bytes (%d on disk), over the bound %d", maxSize, maxUse, bound)
			}
			if left := walkFiles(tmp); len(left) > 0 {
				t.Errorf("files left behind: %q", left)
			}
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.ExitStatus() != 7 || res.TimedOut || !res.StdoutTruncated || !res.StderrTruncated || !res.OutputTruncated {
				t.Errorf("exit %d, timed out %v, truncated stdout %v stderr %v outputs %v; want 7, false, all truncated",
					res.ExitStatus(), res.TimedOut, res.StdoutTruncated, res.StderrTruncated, res.OutputTruncated)
			}
			var msgs []string
			for l := range strings.Lines(string(res.Stderr)) {
				if strings.HasPrefix(l, "DISK") || strings.HasPrefix(l, "dd") {
					msgs = append(msgs, l)
				}
			}
			t.Logf("what the program's writes to the disks got:\n%s", strings.Join(msgs, ""))
			if !bytes.Contains(res.Stderr, []byte("DISK ")) {
				t.Logf("the program found no disk to write (the guest's walls hid them)")
			}
			if c.restored {
				if _, ok := res.Durations["vm_start/qemu.Incoming"]; !ok {
					t.Errorf("the run was not restored from the boot snapshot (phases %v)", res.Durations)
				}
			}
			var extracted int64
			filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if fi, err := d.Info(); err == nil {
						extracted += fi.Size()
					}
				}
				return nil
			})
			if extracted > maxOutput {
				t.Errorf("%d bytes extracted into the output directory, over --max-output %d", extracted, maxOutput)
			}
		})
	}
}

package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// TestVMBootSnapshot runs two images from one boot snapshot, which the
// first run makes: their own files, at once, with different random bytes;
// a debug run boots; a damaged boot snapshot is made again, one that
// cannot be restored is dropped; another machine size gets its own.
func TestVMBootSnapshot(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	// A second image, compressed, whose data runs to its last block: a
	// restored guest knows the image disk of the snapshot's boot, not
	// this one's size.
	data := make([]byte, 3<<20+1234)
	for i := range data {
		data[i] = byte(i*2654435761>>13 ^ i)
	}
	other := writeImage(t, f, erofs.WriterOptions{Compression: erofs.CompressionLZ4}, map[string][]byte{"zz/data": data})

	cache, tmp := t.TempDir(), t.TempDir()
	var notices atomic.Int32 // making the boot snapshot
	e, err := New(Options{
		Images: StaticSource{
			"busybox": {Reference: "busybox", Digest: "sha256:test", EROFSPath: f.erofs, Config: busyboxConfig()},
			"other":   {Reference: "other", Digest: "sha256:other", EROFSPath: other, Config: busyboxConfig()},
		},
		Backend:       qemu.New(""),
		Accel:         vmm.AccelTCG,
		KernelInfo:    f.kernel,
		InitBinary:    f.init,
		CacheDir:      cache,
		TempDir:       tmp,
		Log:           testLogger(t),
		BootSnapshots: true,
		Notice:        func(string) { notices.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	restored := func(t *testing.T, res *RunResult, want bool) {
		t.Helper()
		_, incoming := res.Durations["vm_start/qemu.Incoming"]
		_, booted := res.Durations["guest_boot_to_init"]
		if incoming != want || booted == want {
			t.Errorf("restored: %v, booted: %v; want restored %v (phases %v)", incoming, booted, want, res.Durations)
		}
	}
	snapshots := func(t *testing.T) []string {
		t.Helper()
		paths, _ := filepath.Glob(filepath.Join(cache, bootSnapshotsDir, "*"))
		var dirs []string
		for _, p := range paths {
			if fi, err := os.Stat(p); err == nil && fi.IsDir() {
				dirs = append(dirs, p)
			}
		}
		return dirs
	}

	// The first run makes the snapshot, then runs from it.
	res := run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("echo first; cat /etc/passwd | head -1")}})
	if res.ExitStatus() != 0 || !strings.HasPrefix(string(res.Stdout), "first\nroot:") {
		t.Fatalf("first run: exit %d, stdout %q", res.ExitStatus(), res.Stdout)
	}
	restored(t, res, true)
	dirs := snapshots(t)
	if len(dirs) != 1 {
		t.Fatalf("boot snapshots: %q, want one", dirs)
	}
	m, err := ReadSnapshotManifest(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !m.Boot || m.ImageFile.Path != "" || m.Image.Reference != "" || !strings.Contains(m.Cmdline, "pe.snapshot=boot") {
		t.Errorf("manifest: %+v", m)
	}

	// Two images at once from the same snapshot.
	var wg sync.WaitGroup
	results := make([]*RunResult, 2)
	for i, img := range []string{"other", "busybox"} {
		wg.Go(func() {
			results[i] = run(t, e, &RunRequest{Image: img, Overrides: Overrides{Cmd: sh(`head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; sha256sum /zz/data 2>&1 | cut -c1-64`)}})
		})
	}
	wg.Wait()
	var random []string
	for i, res := range results {
		lines := strings.Split(string(res.Stdout), "\n")
		if len(lines) < 2 || len(lines[0]) != 32 {
			t.Fatalf("run %d printed %q", i, res.Stdout)
		}
		random = append(random, lines[0])
		restored(t, res, true)
	}
	if want := fmt.Sprintf("%x", sha256.Sum256(data)); !strings.HasPrefix(string(results[0].Stdout), random[0]+"\n"+want+"\n") {
		t.Errorf("other image: %q, want the data's digest %s", results[0].Stdout, want)
	}
	if !strings.Contains(string(results[1].Stdout), "No such file") {
		t.Errorf("busybox image: %q, want no /zz/data", results[1].Stdout)
	}
	if random[0] == random[1] {
		t.Errorf("two restored VMs read the same random bytes %s", random[0])
	}
	if got := snapshots(t); len(got) != 1 {
		t.Errorf("boot snapshots after more runs: %q, want the first only", got)
	}
	if n := notices.Load(); n != 1 {
		t.Errorf("%d notices of making the boot snapshot after three runs, want 1", n)
	}

	// A debug run shows the boot: it boots.
	var console bytes.Buffer
	res = run(t, e, &RunRequest{Overrides: Overrides{Cmd: []string{"true"}}, Debug: true, Console: &console})
	restored(t, res, false)

	// A boot snapshot is no snapshot for --snapshot.
	snap, err := e.OpenSnapshot(t.Context(), dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Run(t.Context(), &RunRequest{Snapshot: snap}); !errors.Is(err, ErrSnapshotMismatch) || !strings.Contains(err.Error(), "boot snapshot") {
		t.Errorf("Run with a boot snapshot as RunRequest.Snapshot: %v, want ErrSnapshotMismatch", err)
	}

	// Damaged, it is made again.
	if err := os.WriteFile(filepath.Join(dirs[0], vmm.SnapshotStateFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("echo again")}})
	if string(res.Stdout) != "again\n" {
		t.Errorf("run after the damage: %q", res.Stdout)
	}
	restored(t, res, true)
	if _, err := e.OpenSnapshot(t.Context(), dirs[0]); err != nil {
		t.Errorf("the boot snapshot made again: %v", err)
	}
	if got := snapshots(t); len(got) != 1 {
		t.Errorf("boot snapshots: %q, want one", got)
	}

	// One that opens but cannot be restored (a device state QEMU refuses,
	// with a matching digest): the run boots, the snapshot is dropped and
	// a note keeps runs from making it again at once.
	garbage := []byte("not a migration stream")
	os.WriteFile(filepath.Join(dirs[0], vmm.SnapshotStateFile), garbage, 0o644)
	m, err = ReadSnapshotManifest(dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	m.State.Size, m.State.SHA256 = int64(len(garbage)), fmt.Sprintf("%x", sha256.Sum256(garbage))
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dirs[0], SnapshotManifestFile), b, 0o644)
	res = run(t, e, &RunRequest{Overrides: Overrides{Cmd: sh("echo booted")}})
	restored(t, res, false)
	if string(res.Stdout) != "booted\n" {
		t.Errorf("run after a failed restore: %q", res.Stdout)
	}
	if _, err := os.Stat(dirs[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the snapshot that failed to restore is still there: %v", err)
	}
	if note, err := os.ReadFile(dirs[0] + bootSnapshotFailedSuffix); err != nil || !strings.Contains(string(note), "restoring it") {
		t.Errorf("failure note %q, %v", note, err)
	}

	// Another machine size has its own, which a server makes at start-up.
	vmSlots <- struct{}{}
	err = e.EnsureBootSnapshot(t.Context(), 256, 0)
	<-vmSlots
	if err != nil {
		t.Fatal(err)
	}
	if got := snapshots(t); len(got) != 1 || !strings.HasPrefix(filepath.Base(got[0]), "256m-1c-") {
		t.Errorf("boot snapshots: %q, want a 256m-1c one", got)
	}
	res = run(t, e, &RunRequest{MemoryMiB: 256, Overrides: Overrides{Cmd: sh("grep MemTotal /proc/meminfo")}})
	restored(t, res, true)
	if !strings.HasPrefix(string(res.Stdout), "MemTotal:") || len(snapshots(t)) != 1 {
		t.Errorf("256 MiB run: %q, boot snapshots %q", res.Stdout, snapshots(t))
	}
	// Neither the runs nor the makings (with their 1 TiB image disks)
	// left anything behind.
	if left := walkFiles(tmp); len(left) > 0 {
		t.Errorf("files left behind: %q", left)
	}
}

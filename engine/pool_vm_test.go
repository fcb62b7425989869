package engine

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pe-project/pe/vmm"
)

// heldSource resolves busybox and counts the holds on it not yet released.
type heldSource struct {
	img  ResolvedImage
	held atomic.Int32
}

func (s *heldSource) Resolve(ctx context.Context, ref string) (*ResolvedImage, error) {
	if ref != "busybox" {
		return StaticSource{}.Resolve(ctx, ref)
	}
	img := s.img
	s.held.Add(1)
	var once atomic.Bool
	img.Release = func() {
		if once.CompareAndSwap(false, true) {
			s.held.Add(-1)
		}
	}
	return &img, nil
}

// TestVMSnapshotPool: a pool's snapshot is restored by runs and holds its
// image in the cache while the pool keeps it; one that fails to restore
// is given back, the run boots the image instead, and the pool makes it
// again; a pool that stops holds nothing.
func TestVMSnapshotPool(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	src := &heldSource{img: ResolvedImage{Reference: "busybox", Digest: "sha256:test", EROFSPath: f.erofs, Config: busyboxConfig()}}
	e := newTestEngine(t, f, nil)
	e.opts.Images = src
	pool := e.NewSnapshotPool(PoolOptions{Dir: t.TempDir(), Log: testLogger(t)})
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	kept := make(chan struct{})
	vmSlots <- struct{}{}
	go func() { pool.Keep(ctx, []PoolImage{{Name: "bb", Image: "busybox"}}); close(kept) }()
	defer func() { stop(); <-kept }()
	ready := func(not *Snapshot) *Snapshot {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if s := pool.Snapshot("bb"); s != nil && s != not {
				return s
			}
		}
		t.Fatal("no snapshot after 5 minutes")
		return nil
	}
	snap := ready(nil)
	<-vmSlots
	if !pool.Ready("bb") || pool.Ready("bb", "other") || pool.Snapshot("other") != nil {
		t.Errorf("Ready(bb) %v, Ready(bb, other) %v", pool.Ready("bb"), pool.Ready("bb", "other"))
	}
	if n := src.held.Load(); n != 1 {
		t.Errorf("%d holds on the image with the snapshot kept, want 1", n)
	}
	res := run(t, e, &RunRequest{Snapshot: snap, Overrides: Overrides{Cmd: sh("echo one")}})
	if string(res.Stdout) != "one\n" || res.Launch != LaunchSnapshot {
		t.Errorf("run from the pool: %q, launch %q", res.Stdout, res.Launch)
	}

	// A device state QEMU refuses: the run boots, the pool makes it again.
	if err := os.WriteFile(filepath.Join(snap.Dir, vmm.SnapshotStateFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = run(t, e, &RunRequest{Snapshot: snap, Overrides: Overrides{Cmd: sh("echo two")}})
	if string(res.Stdout) != "two\n" || res.Launch != LaunchBoot {
		t.Errorf("run after the damage: %q, launch %q, want a boot", res.Stdout, res.Launch)
	}
	vmSlots <- struct{}{}
	again := ready(snap)
	<-vmSlots
	res = run(t, e, &RunRequest{Snapshot: again, Overrides: Overrides{Cmd: sh("echo three")}})
	if string(res.Stdout) != "three\n" || res.Launch != LaunchSnapshot {
		t.Errorf("run from the snapshot made again: %q, launch %q", res.Stdout, res.Launch)
	}

	stop()
	<-kept
	if n := src.held.Load(); n != 0 || pool.Snapshot("bb") != nil {
		t.Errorf("after Keep returned: %d holds, snapshot %v", n, pool.Snapshot("bb"))
	}
}

package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/vmm"
)

// createSnapshot makes a snapshot of the busybox image with a VM slot held.
func createSnapshot(t *testing.T, e *Engine, dir string) *SnapshotManifest {
	t.Helper()
	vmSlots <- struct{}{}
	defer func() { <-vmSlots }()
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	m, err := e.CreateSnapshot(ctx, SnapshotRequest{Image: "busybox", Dir: dir})
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	t.Logf("snapshot created in %v", time.Since(start).Round(time.Millisecond))
	return m
}

// TestVMSnapshot makes a snapshot, runs programs from it (two at once),
// and compares their results with cold runs of the same requests.
func TestVMSnapshot(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	dir := filepath.Join(t.TempDir(), "snap")
	m := createSnapshot(t, e, dir)
	if m.Image.Reference != "busybox" || m.VMM != "qemu" || m.Accel != vmm.AccelTCG || m.MemoryMiB != DefaultMemoryMiB {
		t.Errorf("manifest: %+v", m)
	}
	if _, err := e.CreateSnapshot(t.Context(), SnapshotRequest{Image: "busybox", Dir: dir}); !errors.Is(err, ErrSnapshotExists) {
		t.Errorf("CreateSnapshot over an existing one: %v, want ErrSnapshotExists", err)
	}
	snap, err := e.OpenSnapshot(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}

	in := t.TempDir()
	os.WriteFile(filepath.Join(in, "a.txt"), []byte("input file\n"), 0o644)
	requests := map[string]func() *RunRequest{
		"streams": func() *RunRequest {
			return &RunRequest{Overrides: Overrides{Cmd: sh(`echo "out $GREETING $X"; echo err >&2; pwd; exit 3`), Env: []string{"X=1"}}}
		},
		"stdin": func() *RunRequest {
			return &RunRequest{Overrides: Overrides{Cmd: []string{"wc", "-c"}}, Stdin: strings.NewReader("twelve bytes")}
		},
		"files": func() *RunRequest {
			return &RunRequest{
				Overrides: Overrides{Cmd: sh(`cat /run/pe/input/a.txt; tr a-z A-Z < /run/pe/input/a.txt > /run/pe/output/b.txt`), User: "alice"},
				InputDir:  in, OutputDir: t.TempDir(),
			}
		},
	}
	type outcome struct {
		status         int
		stdout, stderr string
		output         string
	}
	got := func(t *testing.T, req *RunRequest, res *RunResult) outcome {
		o := outcome{status: res.ExitStatus(), stdout: string(res.Stdout), stderr: string(res.Stderr)}
		if req.OutputDir != "" {
			b, _ := os.ReadFile(filepath.Join(req.OutputDir, "b.txt"))
			o.output = string(b)
		}
		return o
	}
	for name, mk := range requests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cold := mk()
			want := got(t, cold, run(t, e, cold))
			warm := mk()
			warm.Snapshot = snap
			res := run(t, e, warm)
			if diff := cmp.Diff(want, got(t, warm, res), cmp.AllowUnexported(outcome{})); diff != "" {
				t.Errorf("snapshot run differs from the cold run (-cold +snapshot):\n%s", diff)
			}
			t.Logf("snapshot run phases: %v", res.Durations)
			if _, ok := res.Durations["vm_start/"+"qemu.Incoming"]; !ok {
				t.Errorf("no restore break-down in %v", res.Durations)
			}
		})
	}

	// Two restored guests at once: different random bytes, today's date.
	t.Run("random", func(t *testing.T) {
		t.Parallel()
		var wg sync.WaitGroup
		outs := make([]string, 2)
		for i := range outs {
			wg.Go(func() {
				res := run(t, e, &RunRequest{Snapshot: snap, Overrides: Overrides{Cmd: sh(`head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; date +%s`)}})
				outs[i] = string(res.Stdout)
			})
		}
		wg.Wait()
		var rnd [2]string
		for i, o := range outs {
			lines := strings.Fields(o)
			if len(lines) != 2 || len(lines[0]) != 32 {
				t.Fatalf("run %d printed %q", i, o)
			}
			rnd[i] = lines[0]
			sec, err := strconv.ParseInt(lines[1], 10, 64)
			if err != nil || time.Since(time.Unix(sec, 0)).Abs() > 5*time.Minute {
				t.Errorf("run %d: the guest's date is %s, now is %s", i, lines[1], time.Now().UTC())
			}
		}
		if rnd[0] == rnd[1] {
			t.Errorf("two guests restored from one snapshot read the same random bytes %s", rnd[0])
		}
	})

	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		// 5 s, not 1: a loaded machine has taken over a second to reach
		// the echo in a restored guest under TCG.
		res := run(t, e, &RunRequest{Snapshot: snap, Timeout: 5 * time.Second, Overrides: Overrides{Cmd: sh(`echo started; sleep 60`)}})
		if !res.TimedOut || res.ExitStatus() != 124 || string(res.Stdout) != "started\n" {
			t.Errorf("timed out %v, exit %d, stdout %q; want true, 124, started", res.TimedOut, res.ExitStatus(), res.Stdout)
		}
	})

	t.Run("killed", func(t *testing.T) {
		t.Parallel()
		// A host deadline shorter than the program: pe kills the VM.
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err := e.Run(ctx, &RunRequest{Snapshot: snap, Overrides: Overrides{Cmd: sh(`sleep 60`)}})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Run with an expiring context: %v, want DeadlineExceeded", err)
		}
	})

	t.Cleanup(func() {
		if left, _ := filepath.Glob(filepath.Join(e.opts.TempDir, runDirPrefix+"*")); len(left) > 0 {
			t.Errorf("run directories left behind: %v", left)
		}
	})
}

// TestVMSnapshotRefused checks damaged and mismatched snapshots are
// refused before any VM starts.
func TestVMSnapshotRefused(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	e := newTestEngine(t, f, nil)
	dir := filepath.Join(t.TempDir(), "snap")
	createSnapshot(t, e, dir)
	// variant copies the snapshot (the RAM file hard-linked) and lets
	// edit change it.
	variant := func(t *testing.T, edit func(dir string)) string {
		d := filepath.Join(t.TempDir(), "variant")
		os.Mkdir(d, 0o755)
		for _, name := range []string{SnapshotManifestFile, vmm.SnapshotStateFile} {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(d, name), b, 0o644)
		}
		if err := os.Link(filepath.Join(dir, vmm.SnapshotMemFile), filepath.Join(d, vmm.SnapshotMemFile)); err != nil {
			t.Fatal(err)
		}
		edit(d)
		return d
	}
	editManifest := func(fn func(string) string) func(string) {
		return func(d string) {
			p := filepath.Join(d, SnapshotManifestFile)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, []byte(fn(string(b))), 0o644)
		}
	}
	for _, c := range []struct {
		name string
		edit func(dir string)
		want error
	}{
		{"intact", func(string) {}, nil},
		{"state damaged", func(d string) {
			p := filepath.Join(d, vmm.SnapshotStateFile)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			os.WriteFile(p, b, 0o644)
		}, ErrBadSnapshot},
		{"no state", func(d string) { os.Remove(filepath.Join(d, vmm.SnapshotStateFile)) }, ErrBadSnapshot},
		{"manifest garbage", editManifest(func(string) string { return "{not json" }), ErrBadSnapshot},
		{"no manifest", func(d string) { os.Remove(filepath.Join(d, SnapshotManifestFile)) }, ErrBadSnapshot},
		{"other kernel", editManifest(func(s string) string {
			return strings.Replace(s, `"kernel": "`, `"kernel": "6.0.0-other `, 1)
		}), ErrSnapshotMismatch},
		{"other pe build", editManifest(func(s string) string {
			return strings.Replace(s, `"pe_build": "`, `"pe_build": "old `, 1)
		}), ErrSnapshotMismatch},
		{"other VMM version", editManifest(func(s string) string {
			return strings.Replace(s, `"vmm_version": "`, `"vmm_version": "0.`, 1)
		}), ErrSnapshotMismatch},
		{"other format", editManifest(func(s string) string {
			return strings.Replace(s, `"format": 1`, `"format": 99`, 1)
		}), ErrSnapshotMismatch},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.OpenSnapshot(t.Context(), variant(t, c.edit))
			if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
				t.Errorf("OpenSnapshot: %v, want %v", err, c.want)
			}
			t.Logf("OpenSnapshot: %v", err)
		})
	}

	t.Run("image rebuilt", func(t *testing.T) {
		img := filepath.Join(t.TempDir(), "copy.erofs")
		b, err := os.ReadFile(f.erofs)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(img, b, 0o644)
		e2 := newTestEngine(t, f, StaticSource{"busybox": {Reference: "busybox", EROFSPath: img, Config: busyboxConfig()}})
		d := filepath.Join(t.TempDir(), "snap")
		createSnapshot(t, e2, d)
		later := time.Now().Add(time.Hour)
		os.Chtimes(img, later, later)
		_, err = e2.OpenSnapshot(t.Context(), d)
		if !errors.Is(err, ErrSnapshotMismatch) {
			t.Errorf("OpenSnapshot after the image changed: %v, want ErrSnapshotMismatch", err)
		}
		if !bytes.Contains([]byte(err.Error()), []byte("image file")) {
			t.Errorf("the error does not name the image file: %v", err)
		}
	})

	t.Run("ensure", func(t *testing.T) {
		// An intact snapshot is used as it is.
		snap, err := e.EnsureSnapshot(t.Context(), SnapshotRequest{Image: "busybox", Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		created := snap.Manifest.Created
		// A damaged one is made again, in place.
		d := variant(t, func(d string) { os.Remove(filepath.Join(d, vmm.SnapshotStateFile)) })
		vmSlots <- struct{}{}
		snap2, err := e.EnsureSnapshot(t.Context(), SnapshotRequest{Image: "busybox", Dir: d})
		<-vmSlots
		if err != nil {
			t.Fatal(err)
		}
		if !snap2.Manifest.Created.After(created) {
			t.Errorf("the damaged snapshot was not made again (created %v)", snap2.Manifest.Created)
		}
		res := run(t, e, &RunRequest{Snapshot: snap2, Overrides: Overrides{Cmd: sh("echo again")}})
		if string(res.Stdout) != "again\n" {
			t.Errorf("stdout %q", res.Stdout)
		}
	})

	t.Run("restore fails", func(t *testing.T) {
		// Device state QEMU cannot load, with a manifest that vouches for
		// it: the run fails and leaves nothing behind.
		d := variant(t, func(d string) {
			p := filepath.Join(d, vmm.SnapshotStateFile)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, b[:len(b)/3], 0o644)
			st, err := hashFile(p)
			if err != nil {
				t.Fatal(err)
			}
			editManifest(func(s string) string {
				var m SnapshotManifest
				json.Unmarshal([]byte(s), &m)
				m.State = *st
				b, _ := json.Marshal(&m)
				return string(b)
			})(d)
		})
		snap, err := e.OpenSnapshot(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		_, err = runErr(t, e, &RunRequest{Snapshot: snap, Overrides: Overrides{Cmd: []string{"true"}}})
		if err == nil || !strings.Contains(err.Error(), "device state") {
			t.Errorf("Run from a snapshot QEMU cannot load: %v, want an error about the device state", err)
		}
		t.Logf("Run: %v", err)
		if left, _ := filepath.Glob(filepath.Join(e.opts.TempDir, runDirPrefix+"*")); len(left) > 0 {
			t.Errorf("run directories left behind: %v", left)
		}
	})

	t.Run("memory mismatch", func(t *testing.T) {
		snap, err := e.OpenSnapshot(t.Context(), dir)
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.Run(t.Context(), &RunRequest{Snapshot: snap, MemoryMiB: 1024, Overrides: Overrides{Cmd: []string{"true"}}})
		if !errors.Is(err, ErrSnapshotMismatch) {
			t.Errorf("Run asking for other memory: %v, want ErrSnapshotMismatch", err)
		}
	})
}

// TestVMSnapshotCreateFails checks a snapshot whose VM cannot boot, or
// does not get ready in time, leaves nothing behind: no directory, no
// temporary one, no run directory, no process (TestMain checks those).
func TestVMSnapshotCreateFails(t *testing.T) {
	t.Parallel()
	f := vmSetup(t)
	dir := t.TempDir()
	garbage, hangInit := brokenBoot(t, f, dir) // hangInit: never ready
	for _, c := range []struct {
		name, vmlinuz, init string
		limit               time.Duration
		want                string
	}{
		{"garbage kernel", garbage, f.init, 4 * time.Minute, "QEMU stopped before"},
		{"never ready", f.kernel.Vmlinuz, hangInit, 10 * time.Second, "deadline exceeded"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			e, err := New(brokenOptions(f, c.vmlinuz, c.init, filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+"-cache"), tmp, func(o *Options) { o.NoPVH = true }))
			if err != nil {
				t.Fatal(err)
			}
			parent := t.TempDir()
			vmSlots <- struct{}{}
			ctx, cancel := context.WithTimeout(t.Context(), c.limit)
			_, err = e.CreateSnapshot(ctx, SnapshotRequest{Image: "busybox", Dir: filepath.Join(parent, "snap")})
			cancel()
			<-vmSlots
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CreateSnapshot: %v, want an error with %q", err, c.want)
			}
			t.Logf("CreateSnapshot: %v", err)
			if left := walkFiles(parent); len(left) > 0 {
				t.Errorf("left in the snapshot's parent directory: %q", left)
			}
			if left := walkFiles(tmp); len(left) > 0 {
				t.Errorf("files left behind: %q", left)
			}
		})
	}
}

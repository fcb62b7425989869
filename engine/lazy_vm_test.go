package engine

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/qemu"
)

// lazyBigFile is the size of the file the lazy image carries that the
// programs mostly never read: most of the image's chunks.
const lazyBigFile = 12 << 20

// lazyEnv is an s3:// image pushed to a real S3 server (versitygw): the
// fixture's busybox tree plus /big, lazyBigFile random bytes.
type lazyEnv struct {
	f       *vmFixture
	g       s3test.Gateway
	client  *s3.Client
	ref     string // s3://images/ce/bb:v1
	pinned  string // the same @digest
	digest  string
	blob    string // the packed chunks' blob file in the gateway's directory
	size    int64
	chunks  int64
	cache   *image.Cache
	cacheTo string
}

// s3Client returns a client of endpoint; without keep-alive connections,
// so that a test can count the process's descriptors.
func s3Client(t *testing.T, endpoint, secret string) *s3.Client {
	t.Helper()
	tr := s3.NewTransport()
	tr.DisableKeepAlives = true
	c, err := s3.New(s3.Config{Endpoint: endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: secret, PathStyle: true}, s3.Options{HTTPClient: &http.Client{Transport: tr}, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newLazyEnv(t *testing.T) *lazyEnv {
	t.Helper()
	f := vmSetup(t)
	g := s3test.Start(t)
	env := &lazyEnv{f: f, g: g, client: s3Client(t, g.Endpoint, s3test.SecretKey), ref: "s3://images/ce/bb:v1"}
	if err := env.client.CreateBucket(t.Context(), "images"); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, lazyBigFile)
	r := rand.New(rand.NewPCG(7, 8))
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	file := writeImage(t, f, erofs.WriterOptions{}, map[string][]byte{"big": big})
	config, err := json.Marshal(busyboxConfig())
	if err != nil {
		t.Fatal(err)
	}
	dest, _ := image.ParseReference(env.ref)
	res, err := image.PushEROFS(t.Context(), file, config, dest, image.PushOptions{PullOptions: image.PullOptions{S3: env.client}})
	if err != nil {
		t.Fatal(err)
	}
	env.digest, env.size = res.Digest.String(), res.Size
	env.chunks = blockstore.NumChunks(res.Size, blockstore.DefaultChunkSize)
	if env.pinned, err = image.PinS3(env.ref, env.digest); err != nil {
		t.Fatal(err)
	}
	// Two blobs: the image, and its packed chunks, which lazy runs read.
	blobs, _ := filepath.Glob(filepath.Join(g.Dir, "images", "ce", "blobs", "sha256", "*"))
	if len(blobs) != 2 || res.PackedSize == 0 {
		t.Fatalf("blobs in the bucket: %q; pushed %+v", blobs, res)
	}
	for _, b := range blobs {
		if fi, err := os.Stat(b); err == nil && fi.Size() == res.PackedSize {
			env.blob = b
		}
	}
	env.cacheTo = t.TempDir()
	if env.cache, err = image.OpenCache(env.cacheTo); err != nil {
		t.Fatal(err)
	}
	return env
}

// engine returns an engine (QEMU, TCG) resolving images with env's cache
// and client.
func (env *lazyEnv) engine(t *testing.T, client *s3.Client, bootSnapshots bool) *Engine {
	t.Helper()
	return env.engineGrace(t, client, bootSnapshots, 0)
}

// engineGrace is engine with the grace period grace (0: the default).
func (env *lazyEnv) engineGrace(t *testing.T, client *s3.Client, bootSnapshots bool, grace time.Duration) *Engine {
	t.Helper()
	return env.engineWith(t, client, func(o *Options) { o.BootSnapshots, o.Grace = bootSnapshots, grace })
}

// engineWith is engine with the options set reads.
func (env *lazyEnv) engineWith(t *testing.T, client *s3.Client, set func(*Options)) *Engine {
	t.Helper()
	o := Options{
		Images:     &CacheSource{Cache: env.cache, Options: image.PullOptions{S3: client}},
		Backend:    qemu.New(""),
		Accel:      vmm.AccelTCG,
		KernelInfo: env.f.kernel,
		InitBinary: env.f.init,
		CacheDir:   filepath.Join(env.f.dir, "cache"),
		TempDir:    t.TempDir(),
		Log:        testLogger(t),
	}
	set(&o)
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// checkNoLeaks fails the test when e still serves a lazy disk or an NBD
// connection, or the process has more descriptors than fds (or than
// goroutines), allowing a few seconds for them to close.
func checkNoLeaks(t *testing.T, e *Engine, fds, goroutines int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conns := 0
		if e.nbd != nil {
			conns = e.nbd.Stats().Connections
		}
		nfd, ng := countFDs(t), runtime.NumGoroutine()
		if e.lazyDisks.Load() == 0 && conns == 0 && nfd <= fds && ng <= goroutines {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("leak: %d lazy disks, %d NBD connections, %d descriptors (had %d), %d goroutines (had %d)",
				e.lazyDisks.Load(), conns, nfd, fds, ng, goroutines)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLazyS3Run runs programs from an s3:// image the cache does not
// hold: restored from the boot snapshot, booted, and from a snapshot of
// the image. The first run fetches a fraction of the image's chunks, the
// later ones none; nothing is left behind.
func TestLazyS3Run(t *testing.T) {
	env := newLazyEnv(t)
	e := env.engine(t, env.client, true)

	res := run(t, e, &RunRequest{Image: env.ref, Overrides: Overrides{Cmd: sh("echo hello from s3; head -c 5 /big | wc -c")}})
	t.Logf("first run (%s): %+v, image of %d chunks", res.Launch, res.ImageBlocks, env.chunks)
	if got := string(res.Stdout); got != "hello from s3\n5\n" || res.ExitCode != 0 {
		t.Fatalf("first run: exit %d stdout %q", res.ExitCode, got)
	}
	if res.Launch != LaunchBootSnapshot || res.Image.Digest != env.digest || res.ImageBlocks == nil {
		t.Errorf("first run: launch %s, image %+v, blocks %+v; want a boot-snapshot run of %s with counters", res.Launch, res.Image, res.ImageBlocks, env.digest)
	}
	if _, ok := res.Durations["vm_start/image_wait"]; !ok {
		t.Errorf("first run: durations %v; want the image resolved while the VM started (vm_start/image_wait)", res.Durations)
	}
	if st := res.ImageBlocks; st != nil && (st.Misses == 0 || st.Misses > env.chunks/2) {
		t.Errorf("first run fetched %d chunks of %d; want some, and at most half", st.Misses, env.chunks)
	}
	b, _ := json.Marshal(res)
	if !strings.Contains(string(b), `"image_blocks":{"gets":`) {
		t.Errorf("--json has no image_blocks: %s", b)
	}
	fds, goroutines := countFDs(t), runtime.NumGoroutine()

	res = run(t, e, &RunRequest{Image: env.ref, Overrides: Overrides{Cmd: sh("echo again")}})
	if string(res.Stdout) != "again\n" || res.ImageBlocks == nil || res.ImageBlocks.Gets != 0 || res.ImageBlocks.Hits == 0 {
		t.Errorf("second run: stdout %q, blocks %+v; want no GET, hits", res.Stdout, res.ImageBlocks)
	}

	cold := env.engine(t, env.client, false)
	res = run(t, cold, &RunRequest{Image: env.ref, Overrides: Overrides{Cmd: sh("echo cold")}})
	if string(res.Stdout) != "cold\n" || res.Launch != LaunchBoot || res.ImageBlocks == nil || res.ImageBlocks.Gets != 0 {
		t.Errorf("cold boot: stdout %q, launch %s, blocks %+v; want no GET", res.Stdout, res.Launch, res.ImageBlocks)
	}

	dir := filepath.Join(t.TempDir(), "snap")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	vmSlots <- struct{}{}
	m, err := e.CreateSnapshot(ctx, SnapshotRequest{Image: env.ref, Dir: dir})
	<-vmSlots
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	if m.ImageS3 == nil || m.ImageS3.Reference != env.pinned || m.ImageFile.Path != "" || m.Image.Digest != env.digest {
		t.Errorf("manifest: image %+v, s3 %+v, file %+v; want the pinned s3 image", m.Image, m.ImageS3, m.ImageFile)
	}
	res = run(t, e, &RunRequest{SnapshotDir: dir, Overrides: Overrides{Cmd: sh("echo from the snapshot; tail -c 3 /big | wc -c")}})
	t.Logf("snapshot run: %+v", res.ImageBlocks)
	if string(res.Stdout) != "from the snapshot\n3\n" || res.Launch != LaunchSnapshot || res.ImageBlocks == nil || res.ImageBlocks.Gets > 2 {
		t.Errorf("snapshot run: stdout %q, launch %s, blocks %+v; want at most the last chunk fetched", res.Stdout, res.Launch, res.ImageBlocks)
	}
	res = run(t, e, &RunRequest{SnapshotDir: dir, Overrides: Overrides{Cmd: sh("tail -c 3 /big | wc -c")}})
	if string(res.Stdout) != "3\n" || res.ImageBlocks == nil || res.ImageBlocks.Gets != 0 {
		t.Errorf("second snapshot run: stdout %q, blocks %+v; want no GET", res.Stdout, res.ImageBlocks)
	}
	checkNoLeaks(t, e, fds, goroutines)
	checkNoLeaks(t, cold, fds, goroutines)
}

// TestLazyS3FUSE runs an s3:// image the way cloud-hypervisor gets it (a
// file on a FUSE mount), with QEMU standing in as cloud-hypervisor cannot
// run here: restored from the boot snapshot, then from an image snapshot
// made on that FUSE file.
func TestLazyS3FUSE(t *testing.T) {
	needFUSE(t)
	env := newLazyEnv(t)
	e := env.engineWith(t, env.client, func(o *Options) { o.BootSnapshots, o.LazyFUSE = true, true })
	res := run(t, e, &RunRequest{Image: env.ref, Overrides: Overrides{Cmd: sh("echo hello through fuse; head -c 5 /big | wc -c")}})
	t.Logf("boot-snapshot run: %+v", res.ImageBlocks)
	if string(res.Stdout) != "hello through fuse\n5\n" || res.Launch != LaunchBootSnapshot || res.ImageBlocks == nil || res.ImageBlocks.Misses == 0 || res.ImageBlocks.Misses > env.chunks/2 {
		t.Fatalf("boot-snapshot run: stdout %q, launch %s, blocks %+v; want some chunks of %d fetched", res.Stdout, res.Launch, res.ImageBlocks, env.chunks)
	}
	fds, goroutines := countFDs(t), runtime.NumGoroutine()
	dir := filepath.Join(t.TempDir(), "snap")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	vmSlots <- struct{}{}
	_, err := e.CreateSnapshot(ctx, SnapshotRequest{Image: env.ref, Dir: dir})
	<-vmSlots
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	res = run(t, e, &RunRequest{SnapshotDir: dir, Overrides: Overrides{Cmd: sh("tail -c 3 /big | wc -c")}})
	if string(res.Stdout) != "3\n" || res.Launch != LaunchSnapshot || res.ImageBlocks == nil {
		t.Errorf("snapshot run: stdout %q, launch %s, blocks %+v", res.Stdout, res.Launch, res.ImageBlocks)
	}
	checkNoLeaks(t, e, fds, goroutines)
	if e.nbd != nil {
		t.Error("the engine served the image over NBD; want the FUSE file only")
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(info), "pe-image") {
		t.Errorf("a FUSE mount of a run is left:\n%s", info)
	}
}

// TestLazyS3Trace runs one command on two machines (two caches) sharing a
// bucket: the first run leaves its trace beside the image, and the second,
// on an empty chunk cache, prefetches it, so that its reads find the
// chunks fetched or on their way instead of each waiting for a GET.
func TestLazyS3Trace(t *testing.T) {
	env := newLazyEnv(t)
	cmd := sh("head -c 1500000 /big | wc -c")
	first := run(t, env.engine(t, env.client, true), &RunRequest{Image: env.ref, Overrides: Overrides{Cmd: cmd}})
	if string(first.Stdout) != "1500000\n" || first.ImageBlocks == nil || first.ImageBlocks.Misses < 3 {
		t.Fatalf("first run: stdout %q, blocks %+v; want /big's first chunks fetched on demand", first.Stdout, first.ImageBlocks)
	}
	traces, _ := filepath.Glob(filepath.Join(env.g.Dir, "images", "ce", "traces", "sha256", "*", "*.json"))
	if len(traces) != 1 {
		t.Fatalf("traces in the bucket after the first run: %q; want one", traces)
	}
	var trace struct{ Chunks []int }
	if b, err := os.ReadFile(traces[0]); err != nil || json.Unmarshal(b, &trace) != nil || len(trace.Chunks) == 0 {
		t.Fatalf("the trace %s: %v, %d chunks", traces[0], err, len(trace.Chunks))
	}
	other, err := image.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	second := run(t, env.engineWith(t, env.client, func(o *Options) {
		o.BootSnapshots = true
		o.Images = &CacheSource{Cache: other, Options: image.PullOptions{S3: env.client}}
	}), &RunRequest{Image: env.ref, Overrides: Overrides{Cmd: cmd}})
	st := second.ImageBlocks
	t.Logf("first run %+v; second run, prefetching the trace, %+v", first.ImageBlocks, st)
	// The prefetch starts with the VM, which needs a few hundred ms
	// before it reads /big: its reads should hardly wait.
	// Every chunk of the trace is fetched (the run may need a few more:
	// the first run's own early metadata prefetch is not in its trace).
	// (Neighbours may come in one GET: count chunks, not GETs.)
	if string(second.Stdout) != "1500000\n" || st == nil || st.Misses < int64(len(trace.Chunks)) || st.Stalled*2 > first.ImageBlocks.Stalled {
		t.Errorf("second machine: stdout %q, blocks %+v; want the trace's %d chunks prefetched and reads waiting less than half the first run's %v", second.Stdout, st, len(trace.Chunks), first.ImageBlocks.Stalled)
	}
	if after, _ := filepath.Glob(filepath.Join(env.g.Dir, "images", "ce", "traces", "sha256", "*", "*.json")); len(after) != 1 {
		t.Errorf("traces after the second run: %q; want the first one only", after)
	}
}

// TestLazyS3Faults runs an s3:// image whose storage fails while the
// program reads it: unreachable, serving corrupt bytes, the image deleted,
// wrong credentials. Each run ends well within its limit with an error
// naming the image and the cause; reads of cached chunks still work.
func TestLazyS3Faults(t *testing.T) {
	env := newLazyEnv(t)
	good := env.engine(t, env.client, true)
	// Caches the index, the file system's metadata and busybox.
	res := run(t, good, &RunRequest{Image: env.ref, Overrides: Overrides{Cmd: sh("echo warm")}})
	if string(res.Stdout) != "warm\n" {
		t.Fatalf("warm-up run: %q", res.Stdout)
	}
	fds, goroutines := countFDs(t), runtime.NumGoroutine()

	// readBig reads a part of /big never read before.
	readBig := func(part int) []string {
		return sh("dd if=/big of=/dev/null bs=4096 skip=" + strconv.Itoa(part*(1<<20)/4096) + " count=64 2>/dev/null && echo read-ok")
	}
	dead := env.engine(t, s3Client(t, "http://127.0.0.1:1", s3test.SecretKey), true)
	// A server that takes connections and never answers: reads wait
	// until the run's limit.
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	hang := env.engineGrace(t, s3Client(t, "http://"+hole.Addr().String(), s3test.SecretKey), true, 10*time.Second)
	wrong := env.engine(t, s3Client(t, env.g.Endpoint, "wrong"), true)
	for _, c := range []struct {
		name    string
		e       *Engine
		image   string
		cmd     []string
		prepare func()
		timeout time.Duration // 0: 30s
		want    []string      // in the error; none: the run works
	}{
		{name: "unreachable, cached", e: dead, image: env.pinned, cmd: sh("echo cached-ok")},
		{name: "unreachable", e: dead, image: env.pinned, cmd: readBig(1), want: []string{"reading image s3://images/ce/bb", "127.0.0.1:1", "connection refused"}},
		{name: "unreachable, tag", e: dead, image: env.ref, cmd: readBig(1), want: []string{"reading image s3://images/ce/bb", "connection refused"}},
		{name: "hanging", e: hang, image: env.pinned, cmd: readBig(5), timeout: 3 * time.Second, want: []string{"reading image s3://images/ce/bb", "still waiting for the storage"}},
		{name: "wrong credentials", e: wrong, image: env.pinned, cmd: readBig(2), want: []string{"reading image s3://images/ce/bb", `access denied to bucket "images"`, "HTTP 403"}},
		{name: "corrupt", e: good, image: env.ref, cmd: readBig(3), prepare: func() {
			b, err := os.ReadFile(env.blob)
			if err != nil {
				t.Fatal(err)
			}
			for i := range b[len(b)-lazyBigFile:] { // all of /big and what follows
				b[len(b)-lazyBigFile+i] ^= 0xff
			}
			if err := os.WriteFile(env.blob, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: []string{"reading image s3://images/ce/bb", "the index says", "fetched twice"}},
		{name: "deleted, cached", e: good, image: env.pinned, cmd: sh("echo still-ok"), prepare: func() {
			os.RemoveAll(filepath.Join(env.g.Dir, "images", "ce"))
		}},
		{name: "deleted", e: good, image: env.pinned, cmd: readBig(4), want: []string{"reading image s3://images/ce/bb", "not found"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.prepare != nil {
				c.prepare()
			}
			if c.timeout == 0 {
				c.timeout = 30 * time.Second
			}
			start := time.Now()
			res, err := runErr(t, c.e, &RunRequest{Image: c.image, Overrides: Overrides{Cmd: c.cmd}, Timeout: c.timeout})
			took := time.Since(start)
			if c.want == nil {
				if err != nil || res.ExitCode != 0 {
					t.Fatalf("run: %v; want it to work from the cache", err)
				}
				return
			}
			t.Logf("after %v: %v", took.Round(time.Millisecond), err)
			var rerr *ImageReadError
			if !errors.As(err, &rerr) {
				t.Fatalf("run: %v (result %+v); want an ImageReadError", err, res)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q", w)
				}
			}
			if took > time.Minute {
				t.Errorf("the run took %v; its limit is 30s plus the grace period", took)
			}
		})
	}
	// An image that does not resolve, while its VM starts (see
	// resolvesLate): the run fails with the resolve's error, and leaves
	// no VM behind (checkNoLeaks).
	for _, c := range []struct {
		name  string
		e     *Engine
		image string
		want  []string
	}{
		{name: "no such tag", e: good, image: "s3://images/ce/nope:1", want: []string{"s3://images/ce/nope:1", "not found"}},
		{name: "unreachable, tag not cached", e: dead, image: "s3://images/ce/bb:other", want: []string{"s3://images/ce/bb:other", "connection refused"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			res, err := runErr(t, c.e, &RunRequest{Image: c.image, Overrides: Overrides{Cmd: sh("echo ran")}})
			if err == nil {
				t.Fatalf("run: %+v; want it to fail", res)
			}
			t.Logf("run: %v", err)
			var rerr *ImageReadError
			if errors.As(err, &rerr) {
				t.Errorf("run: an ImageReadError (%v); want the resolve's own error", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q", w)
				}
			}
		})
	}
	hole.Close() // and its connections
	for _, e := range []*Engine{good, dead, wrong, hang} {
		checkNoLeaks(t, e, fds, goroutines)
	}
}

package blockstore_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/nbd"
	"github.com/pe-project/pe/blockstore/s3"
	"github.com/pe-project/pe/blockstore/s3/s3test"
)

// TestLazyImageOverNBD puts the three parts of a lazy disk together with
// real peers on both ends: an image uploaded to versitygw (which checks
// signatures), read through the chunk store with the S3 client as its
// Fetcher, served by the NBD server and copied out by libnbd's nbdcopy,
// an NBD client pe did not write. Cold, every chunk is fetched once; warm,
// none is; an object replaced in the bucket behind the index's back is
// never served: the client gets an I/O error.
func TestLazyImageOverNBD(t *testing.T) {
	nbdcopy, err := exec.LookPath("nbdcopy")
	if err != nil {
		t.Skip("nbdcopy is not installed (make deps installs libnbd-bin)")
	}
	g := s3test.Start(t)
	client, err := s3.New(s3.Config{Endpoint: g.Endpoint, Region: "us-east-1", AccessKeyID: s3test.AccessKey,
		SecretAccessKey: s3test.SecretKey, PathStyle: true}, s3.Options{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := client.CreateBucket(ctx, "images"); err != nil {
		t.Fatal(err)
	}

	// 6 MiB + 4 KiB: twelve full chunks and a short last one.
	const chunk = 512 << 10
	data := make([]byte, 12*chunk+4096)
	rand.NewChaCha8([32]byte{1}).Read(data)
	local := filepath.Join(t.TempDir(), "image.raw")
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	ix, err := blockstore.BuildIndexFile(ctx, local, chunk)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Upload(ctx, "images", "image.raw", bytes.NewReader(data), s3.UploadOptions{PartSize: 5 << 20}); err != nil {
		t.Fatal(err)
	}

	store, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: 10 * time.Second, Attempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	srv := nbd.NewServer(nbd.Options{Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := nbd.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()

	// copyOut serves obj under the store as export name and copies it out
	// with nbdcopy; it returns what nbdcopy wrote, its error and the
	// image's counters.
	copyOut := func(st *blockstore.Store, name string, obj *s3.Object) ([]byte, error, blockstore.Stats) {
		t.Helper()
		img, err := st.Open(ix, obj)
		if err != nil {
			t.Fatal(err)
		}
		defer img.Close()
		if err := srv.AddExport(nbd.Export{Name: name, Data: img, Size: ix.Size}); err != nil {
			t.Fatal(err)
		}
		defer srv.RemoveExport(name)
		out := filepath.Join(t.TempDir(), "out.raw")
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		msg, err := exec.CommandContext(cctx, nbdcopy, "nbd+unix:///"+name+"?socket="+sock, out).CombinedOutput()
		if err != nil {
			err = errors.New(string(msg))
		}
		got, _ := os.ReadFile(out)
		return got, err, img.Stats()
	}

	obj := client.Object("images", "image.raw")
	got, err, cold := copyOut(store, "cold", obj)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("cold copy: %v; %d bytes, equal %v", err, len(got), bytes.Equal(got, data))
	}
	if n := int64(len(ix.Chunks)); cold.Misses != n || cold.Gets != n || cold.BytesFetched != ix.Size {
		t.Errorf("cold: %+v, want %d misses and GETs, %d bytes fetched", cold, n, ix.Size)
	}
	got, err, warm := copyOut(store, "warm", obj)
	if err != nil || !bytes.Equal(got, data) || warm.Gets != 0 {
		t.Errorf("warm copy: %v, equal %v, %d GETs (want 0)", err, bytes.Equal(got, data), warm.Gets)
	}

	// The bucket's object changes under the index (an attacker with write
	// access to the bucket, a half-finished push): a new, empty cache must
	// refuse it rather than hand the guest bytes the index does not vouch for.
	forged := bytes.Clone(data)
	forged[3*chunk+100] ^= 0xff
	if _, err := client.Upload(ctx, "images", "image.raw", bytes.NewReader(forged), s3.UploadOptions{PartSize: 5 << 20}); err != nil {
		t.Fatal(err)
	}
	fresh, err := blockstore.NewStore(blockstore.Options{Dir: t.TempDir(), RequestTimeout: 10 * time.Second, Attempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	got, err, forgedStats := copyOut(fresh, "forged", obj)
	if err == nil {
		t.Errorf("a forged chunk was served: nbdcopy succeeded (%d bytes)", len(got))
	}
	if forgedStats.DigestMismatches == 0 {
		t.Errorf("forged object: %+v, want digest mismatches counted", forgedStats)
	}
	if len(got) > 3*chunk && bytes.Equal(got[3*chunk:4*chunk], forged[3*chunk:4*chunk]) {
		t.Error("the forged chunk's bytes reached the NBD client")
	}
}

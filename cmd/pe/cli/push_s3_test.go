package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pe-project/pe/blockstore/s3"
)

// buildPE builds pe into a test directory, for tests that need separate
// pe processes.
func buildPE(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pe")
	build := exec.Command("go", "build", "-o", bin, "github.com/pe-project/pe/cmd/pe")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building pe: %v\n%s", err, out)
	}
	return bin
}

// bigEROFS builds an EROFS image holding size random bytes, so that a push
// takes several 16 MiB parts.
func bigEROFS(t *testing.T, size int) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	os.MkdirAll(src, 0o755)
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{7}).Read(data)
	if err := os.WriteFile(filepath.Join(src, "blob"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "big.erofs")
	if _, stderr, err := run(t, "", "image", "build-erofs", src, "-o", img, "--mtime", "@1700000000"); err != nil {
		t.Fatalf("build-erofs: %v\n%s", err, stderr)
	}
	return img
}

func fileSHA256(t *testing.T, r io.Reader) string {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestImagePushInterruptedAndConcurrent: a pe push stopped by Ctrl-C is
// continued by the next; two pe processes pushing the same image at once
// both succeed and leave one consistent image in the bucket.
func TestImagePushInterruptedAndConcurrent(t *testing.T) {
	s3Env(t)
	client, err := s3.NewFromEnv(s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	pe := buildPE(t)
	img := bigEROFS(t, 100<<20)
	f, _ := os.Open(img)
	wantSum := fileSHA256(t, f)
	f.Close()
	const dest = "s3://images/ce/big:v1"

	// Ctrl-C once the server holds a part.
	cmd := exec.CommandContext(ctx, pe, "--log-level", "info", "image", "push", "--jobs", "1", img, dest)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	parts := 0
wait:
	for {
		select {
		case err := <-exited:
			t.Fatalf("pe push ended before it could be interrupted: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		for u, err := range client.ListMultipartUploads(ctx, "images", "ce/blobs/") {
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range client.ListParts(ctx, "images", u.Key, u.UploadID) {
				if err == nil {
					parts++
				}
			}
		}
		if parts > 0 {
			break wait
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	err = <-exited
	t.Logf("the interrupted push: %v\n%s", err, stderr.String())
	if err == nil || !strings.Contains(stderr.String(), "run the same push again") {
		t.Fatalf("pe push after Ctrl-C: %v; want a failure saying to push again", err)
	}

	// Two pushes at once: both continue the interrupted upload or race to
	// finish the blob.
	var wg sync.WaitGroup
	outs, errOuts, errs := make([]bytes.Buffer, 2), make([]bytes.Buffer, 2), make([]error, 2)
	for i := range 2 {
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, pe, "--log-level", "info", "image", "push", img, dest)
			cmd.Stdout, cmd.Stderr = &outs[i], &errOuts[i]
			errs[i] = cmd.Run()
		})
	}
	wg.Wait()
	resumed := false
	for i := range 2 {
		t.Logf("push %d: %v\n%s", i, errs[i], errOuts[i].String())
		if errs[i] != nil {
			t.Errorf("concurrent push %d: %v", i, errs[i])
		}
		resumed = resumed || strings.Contains(errOuts[i].String(), "resumed an interrupted upload")
	}
	digest := strings.TrimSpace(outs[0].String())
	if !strings.HasPrefix(digest, "sha256:") || strings.TrimSpace(outs[1].String()) != digest {
		t.Errorf("the pushes printed %q and %q; want the same digest", outs[0].String(), outs[1].String())
	}
	if !resumed {
		t.Errorf("neither push resumed the interrupted upload")
	}
	body, _, err := client.GetObject(ctx, "images", "ce/blobs/sha256/"+wantSum)
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSHA256(t, body); got != wantSum {
		t.Errorf("the blob in the bucket has sha256 %s; want %s", got, wantSum)
	}
	body.Close()
	for u, err := range client.ListMultipartUploads(ctx, "images", "") {
		t.Errorf("unfinished upload left: %+v, %v", u, err)
	}
	pulled, stderrPull, err := run(t, "", "image", "pull", "--cache-dir", t.TempDir(), dest)
	if err != nil || strings.TrimSpace(pulled) != digest {
		t.Errorf("pull after the pushes: %q, %v; want %s\n%s", pulled, err, digest, stderrPull)
	}
}

// TestImageS3Faults: wrong credentials and a corrupt or missing index get
// clear errors naming the bucket or the object, from pe image push, pull
// and run.
func TestImageS3Faults(t *testing.T) {
	vmSetup(t) // pe run needs its guest init before it looks at the image
	s3Env(t)
	client, err := s3.NewFromEnv(s3.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	img := filepath.Join(t.TempDir(), "tree.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", makeTree(t), "-o", img, "--mtime", "@1700000000"); err != nil {
		t.Fatalf("build-erofs: %v", err)
	}
	out, stderr, err := run(t, "", "image", "push", img, "s3://images/ce/tree:v1")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	digest := strings.TrimPrefix(strings.TrimSpace(out), "sha256:")
	indexKey := "ce/indexes/sha256/" + digest + ".json"
	index, err := client.ReadAll(ctx, "images", indexKey, 1<<20)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong credentials", func(t *testing.T) {
		t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
		for _, args := range [][]string{
			{"image", "push", img, "s3://images/ce/tree:v2"},
			{"image", "pull", "--cache-dir", t.TempDir(), "s3://images/ce/tree:v1"},
		} {
			_, _, err := run(t, "", args...)
			if err == nil || !strings.Contains(err.Error(), `access denied to bucket "images"`) || !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
				t.Errorf("pe %s with a wrong secret: %v; want access denied naming the bucket and the keys to check", args[1], err)
			}
		}
	})

	for _, tc := range []struct {
		name  string
		index []byte // nil: deleted
		want  []string
	}{
		{name: "corrupt index", index: append(bytes.Clone(index), '\n'), want: []string{indexKey, "digest"}},
		{name: "missing index", want: []string{indexKey, "not found"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.index != nil {
				_, err = client.PutObject(ctx, "images", indexKey, tc.index, s3.PutOptions{})
			} else {
				err = client.DeleteObject(ctx, "images", indexKey)
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { client.PutObject(ctx, "images", indexKey, index, s3.PutOptions{}) })
			// By digest: a tag object carries its index, so a pull by
			// tag does not read the index object.
			pinned := "s3://images/ce/tree@sha256:" + digest
			for _, args := range [][]string{
				{"image", "pull", "--cache-dir", t.TempDir(), pinned},
				{"run", "--cache-dir", t.TempDir(), pinned, "/sub/tool"},
			} {
				_, stderr, err := run(t, "", args...)
				t.Logf("pe %s: %v", args[0], err)
				if err == nil {
					t.Fatalf("pe %s succeeded\n%s", args[0], stderr)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("pe %s: %v; want an error containing %q", args[0], err, w)
					}
				}
			}
		})
	}
}

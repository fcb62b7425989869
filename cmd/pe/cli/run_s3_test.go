package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestRunS3Lazy runs a pushed image with pe run s3://… in a real VM: the
// image is not downloaded (pe image ls lists it as lazy), --json shows
// the chunks fetched, and a second run fetches none; a snapshot of it
// restores with its lazy disk; pe image rm removes it.
func TestRunS3Lazy(t *testing.T) {
	dir := vmSetup(t)
	s3Env(t)
	img := filepath.Join(dir, "busybox.erofs")
	ref := "s3://images/ce/bb:v1"
	if _, stderr, err := run(t, "", "image", "push", "--cache-dir", t.TempDir(), img, ref); err != nil {
		t.Fatalf("push: %v\n%s", err, stderr)
	}
	cache := t.TempDir()
	type blocks struct {
		Gets         int64 `json:"gets"`
		BytesFetched int64 `json:"bytes_fetched"`
		Hits         int64 `json:"hits"`
	}
	type result struct {
		ExitCode    int     `json:"exit_code"`
		Stdout      string  `json:"stdout"`
		ImageBlocks *blocks `json:"image_blocks"`
	}
	runJSON := func(args ...string) result {
		t.Helper()
		out, stderr, err := run(t, "", append([]string{"run", "--json", "--accel", "tcg", "--vmm", "qemu", "--cold", "--cache-dir", cache}, args...)...)
		if err != nil {
			t.Fatalf("pe run %q: %v\n%s", args, err, stderr)
		}
		var r result
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("pe run --json printed %q: %v", out, err)
		}
		t.Logf("pe run %q: %+v %+v", args, r, r.ImageBlocks)
		return r
	}
	size, _ := os.Stat(img)
	r := runJSON(ref, "sh", "-c", "echo lazy")
	// The image is a few chunks, which the run's metadata prefetch may
	// fetch whole; never a chunk twice.
	if r.Stdout != "lazy\n" || r.ImageBlocks == nil || r.ImageBlocks.Gets == 0 || r.ImageBlocks.BytesFetched > size.Size() {
		t.Errorf("first run: %+v %+v; want some chunks fetched, at most the image", r, r.ImageBlocks)
	}
	r = runJSON(ref, "sh", "-c", "echo again")
	if r.Stdout != "again\n" || r.ImageBlocks == nil || r.ImageBlocks.Gets != 0 || r.ImageBlocks.Hits == 0 {
		t.Errorf("second run: %+v %+v; want no GET", r, r.ImageBlocks)
	}
	// Listed as lazy (partly cached), not downloaded.
	if ls, _, err := run(t, "", "image", "ls", "--cache-dir", cache); err != nil || strings.Count(ls, "ce/bb") != 1 || !strings.Contains(ls, ref+" ") || !strings.Contains(ls, " (lazy) ") {
		t.Errorf("pe image ls after lazy runs: %q, %v; want the image listed once, lazy", ls, err)
	}

	snap := filepath.Join(t.TempDir(), "snap")
	if _, stderr, err := run(t, "", "snapshot", "create", "--accel", "tcg", "--vmm", "qemu", "--cache-dir", cache, ref, "-o", snap); err != nil {
		t.Fatalf("snapshot create: %v\n%s", err, stderr)
	}
	r = runJSON("--snapshot", snap, "sh", "-c", "echo restored")
	if r.Stdout != "restored\n" || r.ImageBlocks == nil {
		t.Errorf("run from the snapshot: %+v %+v", r, r.ImageBlocks)
	}

	// pe image rm of the tag removes its record; the snapshot's run
	// recorded the digest it pins, which keeps the image (as docker rmi
	// keeps an image another reference names) until it is removed too.
	if out, stderr, err := run(t, "", "image", "rm", "--cache-dir", cache, ref); err != nil || out != "Untagged: "+ref+"\n" {
		t.Errorf("pe image rm %s: %q, %v\n%s", ref, out, err, stderr)
	}
	ls, _, err := run(t, "", "image", "ls", "--cache-dir", cache)
	pinned := regexp.MustCompile(`s3://images/ce/bb@sha256:[0-9a-f]{64}`).FindString(ls)
	if err != nil || pinned == "" || strings.Count(ls, "ce/bb") != 1 {
		t.Fatalf("pe image ls after removing the tag: %q, %v; want the snapshot's pinned reference", ls, err)
	}
	if out, stderr, err := run(t, "", "image", "rm", "--cache-dir", cache, pinned); err != nil || !strings.Contains(out, "Deleted: sha256:") {
		t.Errorf("pe image rm %s: %q, %v\n%s", pinned, out, err, stderr)
	}
	if ls, _, err := run(t, "", "image", "ls", "--cache-dir", cache); err != nil || strings.Contains(ls, "ce/bb") {
		t.Errorf("pe image ls after rm: %q, %v", ls, err)
	}
	chunks, _ := filepath.Glob(filepath.Join(cache, "s3", "chunks", "*", "*"))
	if len(chunks) != 0 {
		t.Errorf("%d chunks left after pe image rm", len(chunks))
	}
}

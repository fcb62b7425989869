package image

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestLeaseHelperProcess is not a test: TestPruneKeepsLeasedImage runs
// the test binary again to hold an image from another process, until its
// standard input closes.
func TestLeaseHelperProcess(t *testing.T) {
	if os.Getenv("PE_IMAGE_TEST_HELPER") != "hold" {
		t.Skip("helper process for TestPruneKeepsLeasedImage")
	}
	c, err := OpenCache(os.Getenv("PE_IMAGE_TEST_CACHE"))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := ParseReference(os.Getenv("PE_IMAGE_TEST_REF"))
	if err != nil {
		t.Fatal(err)
	}
	img, lease, err := c.Acquire(t.Context(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("held", img.Digest)
	io.Copy(io.Discard, os.Stdin)
	lease.Release()
}

// TestPruneKeepsLeasedImage fills a cache with three images, has another
// process hold the least recently used one, and prunes to the size of
// two: the held image stays, the next least recently used goes. Once the
// holder is gone, the image can go too.
func TestPruneKeepsLeasedImage(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the test binary again")
	}
	fr := newFakeRegistry(t)
	c := testCache(t)
	var refs []Reference
	var digests []v1.Hash
	for i, name := range []string{"a", "b", "c"} {
		img := fakeImage(t, "linux/amd64", fakeLayer(t, false, fakeEntry{name: "f", body: strings.Repeat(name, 4000)}))
		refs = append(refs, fr.push(t, fmt.Sprintf("lru/%s:1", name), img))
		digests = append(digests, digestOf(t, img))
		if i == 0 {
			// a is converted, then held by another process (which uses it
			// first), then b and c are used: a is the least recently used.
			if _, err := c.Get(t.Context(), refs[0], PullOptions{}); err != nil {
				t.Fatal(err)
			}
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestLeaseHelperProcess$", "-test.v")
			cmd.Env = append(os.Environ(), "PE_IMAGE_TEST_HELPER=hold", "PE_IMAGE_TEST_CACHE="+c.Dir(), "PE_IMAGE_TEST_REF="+refs[0].String())
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			held := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(stdout)
				for sc.Scan() {
					if strings.HasPrefix(sc.Text(), "held ") {
						held <- sc.Text()
					}
				}
				close(held)
			}()
			if line := <-held; line != "held "+digests[0].String() {
				t.Fatalf("the helper said %q", line)
			}
			t.Cleanup(func() {
				stdin.Close()
				cmd.Wait()
			})
			defer func() {
				// Let the holder go and prune again: now a goes.
				stdin.Close()
				if err := cmd.Wait(); err != nil {
					t.Errorf("helper: %v", err)
				}
				rep, err := c.Prune(t.Context(), PruneOptions{MaxSize: 1})
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff([]v1.Hash{digests[0]}, rep.Deleted); diff != "" || len(rep.InUse) != 0 {
					t.Errorf("after the holder left: in use %v, deleted (-want +got):\n%s", rep.InUse, diff)
				}
			}()
			continue
		}
		if _, err := c.Get(t.Context(), refs[i], PullOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	images, _, err := c.scanImages()
	if err != nil {
		t.Fatal(err)
	}
	two := c.footprint([]*cachedEntry{images[digests[0].Hex], images[digests[2].Hex]})
	rep, err := c.Prune(t.Context(), PruneOptions{MaxSize: two})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]v1.Hash{digests[1]}, rep.Deleted); diff != "" {
		t.Errorf("pruned to two images' size with a held (-want +got):\n%s", diff)
	}
	left, _, err := c.scanImages()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for hex := range left {
		got = append(got, hex)
	}
	slices.Sort(got)
	want := []string{digests[0].Hex, digests[2].Hex}
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("images left (-want +got):\n%s", diff)
	}
	// Smaller than one image: everything but the held image goes, and
	// the report says it stayed because it is in use.
	rep, err = c.Prune(t.Context(), PruneOptions{MaxSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]v1.Hash{digests[0]}, rep.InUse); diff != "" {
		t.Errorf("in use (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(c.path(imagesDir, digests[0].Hex, erofsName)); err != nil {
		t.Errorf("the held image: %v", err)
	}
	// rm of a held image drops its name but keeps the files.
	if _, err := c.Remove(t.Context(), refs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.path(imagesDir, digests[0].Hex, erofsName)); err != nil {
		t.Errorf("the held image after rm: %v", err)
	}
}

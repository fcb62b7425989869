package blockstore

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readerEnv makes the test binary, run by TestTwoProcesses, act as the
// second process: "CACHE_DIR IMAGE_FILE".
const readerEnv = "BLOCKSTORE_TEST_READER"

func TestMain(m *testing.M) {
	if args := os.Getenv(readerEnv); args != "" {
		dir, image, _ := strings.Cut(args, " ")
		if err := readRandomly(context.Background(), dir, image, 2); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// readRandomly opens a store on dir, with room for a third of the image,
// and reads the image file through it at random places for a while,
// checking every byte against the file.
func readRandomly(ctx context.Context, dir, image string, seed uint64) error {
	data, err := os.ReadFile(image)
	if err != nil {
		return err
	}
	ix, err := BuildIndex(ctx, bytes.NewReader(data), cs)
	if err != nil {
		return err
	}
	s, err := NewStore(Options{Dir: dir, MaxBytes: int64(len(data)) / 3})
	if err != nil {
		return err
	}
	defer s.Close()
	f, err := os.Open(image)
	if err != nil {
		return err
	}
	defer f.Close()
	im, err := s.Open(ix, FileFetcher{R: f})
	if err != nil {
		return err
	}
	defer im.Close()
	rng := rand.New(rand.NewPCG(seed, seed))
	p := make([]byte, 3*cs)
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		off := rng.Int64N(int64(len(data)) - int64(len(p)))
		if _, err := im.ReadAtContext(ctx, p, off); err != nil {
			return err
		}
		if !bytes.Equal(p, data[off:][:len(p)]) {
			return fmt.Errorf("process %d: wrong bytes at %d", os.Getpid(), off)
		}
	}
	if st := im.Stats(); st.Evictions == 0 && s.Stats().Evictions == 0 && st.Gets == 0 {
		return fmt.Errorf("process %d: nothing fetched: %+v", os.Getpid(), st)
	}
	return nil
}

// TestTwoProcesses has two processes read one image through one cache
// directory at once, each evicting under a limit a third of the image's
// size: neither may see an error or a wrong byte.
func TestTwoProcesses(t *testing.T) {
	data, _ := testImage(t, 64*cs, cs)
	image := filepath.Join(t.TempDir(), "image")
	if err := os.WriteFile(image, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), readerEnv+"="+dir+" "+image)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	err := readRandomly(t.Context(), dir, image, 1)
	if werr := cmd.Wait(); werr != nil {
		t.Errorf("second process: %v: %s", werr, stderr.String())
	}
	if err != nil {
		t.Errorf("first process: %v", err)
	}
}

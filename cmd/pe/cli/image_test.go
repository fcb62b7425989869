package cli

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spf13/cobra"

	"github.com/pe-project/pe/erofs"
	"github.com/pe-project/pe/image"
)

// isolate keeps the user's docker credentials, pe config and PE_*
// variables out of a test.
func isolate(t *testing.T) {
	t.Helper()
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "PE_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// testRegistry starts an in-process registry and returns its host.
func testRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// filesImage returns a one-layer linux image (of the host's platform)
// holding files.
func filesImage(t *testing.T, files map[string]string) v1.Image {
	t.Helper()
	b := tarOf(t, files, false)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", strings.TrimPrefix(defaultPlatformForTest(), "linux/")
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

// pushFiles pushes a one-layer linux image holding files to ref.
func pushFiles(t *testing.T, ref string, files map[string]string) v1.Hash {
	t.Helper()
	img := filesImage(t, files)
	n, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(n, img); err != nil {
		t.Fatal(err)
	}
	h, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func defaultPlatformForTest() string { return image.DefaultPlatform() }

func TestImageCommands(t *testing.T) {
	isolate(t)
	host := testRegistry(t)
	digest := pushFiles(t, host+"/tools/hello:1", map[string]string{"hello.txt": "hello from the registry\n"})
	cache := t.TempDir()
	ref := host + "/tools/hello:1"

	stdout, stderr, err := run(t, "", "image", "pull", "--cache-dir", cache, "--insecure", ref)
	if err != nil {
		t.Fatalf("pull: %v (stderr %q)", err, stderr)
	}
	if stdout != digest.String()+"\n" {
		t.Errorf("pull printed %q, want the digest %s", stdout, digest)
	}

	stdout, _, err = run(t, "", "image", "ls", "--cache-dir", cache)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "REFERENCE") || !strings.Contains(lines[1], ref+" ") ||
		!strings.Contains(lines[1], digest.Hex[:12]) || !strings.Contains(lines[1], "less than a minute ago") {
		t.Errorf("ls printed:\n%s", stdout)
	}

	stdout, _, err = run(t, "", "image", "ls", "--cache-dir", cache, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var entry struct {
		Reference, Digest, EROFS string
		Size                     int64
	}
	if err := json.Unmarshal([]byte(stdout), &entry); err != nil {
		t.Fatalf("ls --json: %v\n%s", err, stdout)
	}
	if entry.Reference != ref || entry.Digest != digest.String() || entry.Size == 0 {
		t.Errorf("ls --json: %+v", entry)
	}

	// build-erofs from the cached image, and look inside.
	out := filepath.Join(t.TempDir(), "hello.erofs")
	if _, stderr, err := run(t, "", "image", "build-erofs", "--cache-dir", cache, ref, "-o", out); err != nil {
		t.Fatalf("build-erofs: %v (stderr %q)", err, stderr)
	}
	stdout, _, err = run(t, "", "image", "cat", out, "hello.txt")
	if err != nil || stdout != "hello from the registry\n" {
		t.Errorf("cat: %q, %v", stdout, err)
	}
	// With --mtime: converted straight into the output.
	if _, _, err := run(t, "", "image", "build-erofs", "--cache-dir", cache, ref, "-o", out, "--mtime", "@0"); err != nil {
		t.Fatalf("build-erofs --mtime: %v", err)
	}
	stdout, _, err = run(t, "", "image", "files", out, "hello.txt")
	if err != nil || !strings.Contains(stdout, "1970-01-01") {
		t.Errorf("files after --mtime @0: %q, %v", stdout, err)
	}

	// Import a tarball over it and find it under its name.
	tarPath := filepath.Join(t.TempDir(), "tool.tar")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "tool-1.0/bin/tool", Mode: 0o755, Size: 3, Typeflag: tar.TypeReg})
	tw.Write([]byte("elf"))
	tw.Close()
	if err := os.WriteFile(tarPath, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err = run(t, "", "image", "import", "--cache-dir", cache, "--tar", tarPath, "--strip-components", "1",
		"--prefix", "/opt/tool", "--base", ref, "--tag", "tool:1")
	if err != nil || !strings.HasPrefix(stdout, "sha256:") {
		t.Fatalf("import: %q, %v (stderr %q)", stdout, err, stderr)
	}
	out2 := filepath.Join(t.TempDir(), "tool.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", "--cache-dir", cache, "tool:1", "-o", out2, "--pull", "never"); err != nil {
		t.Fatalf("build-erofs tool:1: %v", err)
	}
	for file, want := range map[string]string{"opt/tool/bin/tool": "elf", "hello.txt": "hello from the registry\n"} {
		if got, _, err := run(t, "", "image", "cat", out2, file); err != nil || got != want {
			t.Errorf("cat %s: %q, %v; want %q", file, got, err, want)
		}
	}
	// The tarball form of build-erofs.
	out3 := filepath.Join(t.TempDir(), "tool3.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", "--cache-dir", cache, "--tar", tarPath, "--strip-components", "1",
		"--prefix", "/opt/tool", "--base", ref, "-o", out3); err != nil {
		t.Fatalf("build-erofs --tar: %v", err)
	}
	if got, _, err := run(t, "", "image", "cat", out3, "opt/tool/bin/tool"); err != nil || got != "elf" {
		t.Errorf("cat from build-erofs --tar: %q, %v", got, err)
	}

	// rm by reference, then prune --all.
	stdout, _, err = run(t, "", "image", "rm", "--cache-dir", cache, ref)
	if err != nil || !strings.Contains(stdout, "Untagged: "+ref) || !strings.Contains(stdout, "Deleted: "+digest.String()) {
		t.Errorf("rm: %q, %v", stdout, err)
	}
	if _, _, err := run(t, "", "image", "rm", "--cache-dir", cache, ref); err == nil || !strings.Contains(err.Error(), "no such image") {
		t.Errorf("rm again: %v, want no such image", err)
	}
	stdout, _, err = run(t, "", "image", "prune", "--cache-dir", cache, "--all")
	if err != nil || !strings.Contains(stdout, "Total reclaimed space:") {
		t.Errorf("prune --all: %q, %v", stdout, err)
	}
	stdout, _, err = run(t, "", "image", "ls", "--cache-dir", cache)
	if err != nil || strings.Count(stdout, "\n") != 1 {
		t.Errorf("ls after prune --all: %q, %v", stdout, err)
	}
}

func TestImageErrors(t *testing.T) {
	isolate(t)
	host := testRegistry(t)
	cache := t.TempDir()
	for _, tc := range []struct {
		desc    string
		args    []string
		wantErr string
	}{
		{"not found", []string{"image", "pull", host + "/nope:1"}, host + "/nope:1 not found"},
		{"bad reference", []string{"image", "pull", "UPPER"}, "lowercase"},
		{"bad platform", []string{"image", "pull", "--platform", "linux", host + "/x:1"}, "platform \"linux\""},
		{"bad size", []string{"image", "pull", "--max-image-size", "lots", host + "/x:1"}, "--max-image-size"},
		{"bad pull policy", []string{"image", "build-erofs", "--pull", "sometimes", host + "/x:1", "-o", "x"}, "--pull"},
		{"source and tar", []string{"image", "build-erofs", "src", "--tar", "x.tar", "-o", "x"}, "not both"},
		{"missing path", []string{"image", "build-erofs", "./nothere", "-o", "x"}, "./nothere: no such file or directory"},
		{"import without tag", []string{"image", "import", "--tar", "x.tar"}, "--tar and --tag are required"},
		{"prune max-size 0", []string{"image", "prune", "--max-size", "0"}, "--all"},
		{"pull never", []string{"image", "build-erofs", "--pull", "never", host + "/x:1", "-o", "x"}, "not in the image cache"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, _, err := run(t, "", append(tc.args, "--cache-dir", cache)...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	isolate(t)
	host := testRegistry(t)
	pushFiles(t, host+"/cfg:1", map[string]string{"f": "x"})
	envCache := t.TempDir()
	fileCache := t.TempDir()
	cfgDir := filepath.Join(os.Getenv("XDG_CONFIG_HOME"), "pe")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeConfig := func(s string) {
		if err := os.WriteFile(filepath.Join(cfgDir, "config.toml"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	listed := func(dir string) int {
		stdout, _, err := run(t, "", "image", "ls", "--cache-dir", dir)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(stdout, "\n") - 1
	}

	// The config file's cache-dir.
	writeConfig("cache-dir = " + strconv.Quote(fileCache) + "\n")
	if _, _, err := run(t, "", "image", "pull", host+"/cfg:1"); err != nil {
		t.Fatal(err)
	}
	// PE_CACHE_DIR wins over the file.
	t.Setenv("PE_CACHE_DIR", envCache)
	if _, _, err := run(t, "", "image", "pull", host+"/cfg:1"); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{1, 1}, []int{listed(fileCache), listed(envCache)}); diff != "" {
		t.Errorf("images in the file's and the environment's caches (-want +got):\n%s", diff)
	}
	// PE_MAX_IMAGE_SIZE applies; a flag wins over it.
	t.Setenv("PE_MAX_IMAGE_SIZE", "1")
	fresh := t.TempDir()
	if _, _, err := run(t, "", "image", "pull", "--cache-dir", fresh, host+"/cfg:1"); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("PE_MAX_IMAGE_SIZE=1: %v, want too large", err)
	}
	if _, _, err := run(t, "", "image", "pull", "--cache-dir", fresh, "--max-image-size", "1GiB", host+"/cfg:1"); err != nil {
		t.Errorf("--max-image-size over PE_MAX_IMAGE_SIZE: %v", err)
	}
	os.Unsetenv("PE_MAX_IMAGE_SIZE")

	writeConfig("cache_dir = \"typo\"\n")
	if _, _, err := run(t, "", "image", "ls"); err == nil || !strings.Contains(err.Error(), `unknown setting "cache_dir"`) {
		t.Errorf("unknown key: %v", err)
	}
	writeConfig("cache-dir = \n")
	if _, _, err := run(t, "", "image", "ls"); err == nil || !strings.Contains(err.Error(), "config.toml") {
		t.Errorf("bad TOML: %v", err)
	}
}

// TestImageCompressedCache converts an image into the cache with
// --image-compress and checks the cached EROFS stores the compressible file
// compressed, and still reads back.
func TestImageCompressedCache(t *testing.T) {
	isolate(t)
	host := testRegistry(t)
	text := strings.Repeat("pe compresses the images it caches\n", 4000)
	ref := host + "/tools/text:1"
	pushFiles(t, ref, map[string]string{"text.txt": text})
	cache := t.TempDir()
	if _, stderr, err := run(t, "", "image", "pull", "--cache-dir", cache, "--insecure", "--image-compress", "lz4hc:12", ref); err != nil {
		t.Fatalf("pull: %v (stderr %q)", err, stderr)
	}
	if _, _, err := run(t, "", "image", "pull", "--cache-dir", t.TempDir(), "--insecure", "--image-compress", "zip", ref); err == nil ||
		!strings.Contains(err.Error(), "--image-compress") {
		t.Errorf("--image-compress zip: got %v, want an error naming the flag", err)
	}
	c, err := image.OpenCache(cache)
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := c.List(t.Context())
	if err != nil || len(imgs) != 1 {
		t.Fatalf("List: %v, %v", imgs, err)
	}
	f, err := os.Open(imgs[0].EROFSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := erofs.Open(f)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := fsys.Stat("text.txt")
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*erofs.Stat); st.Layout != 1 && st.Layout != 3 {
		t.Errorf("text.txt has data layout %d, want a compressed one (1 or 3)", st.Layout)
	}
	if got, err := fsys.ReadFile("text.txt"); err != nil || string(got) != text {
		t.Errorf("reading text.txt back: %d bytes, %v", len(got), err)
	}
}

// TestImageCompressWhereItActs checks --image-compress is offered by the
// commands that convert images into the cache, and by no other: on pe
// image ls, rm or prune it would do nothing.
func TestImageCompressWhereItActs(t *testing.T) {
	var got []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && c.Flags().Lookup("image-compress") != nil {
			got = append(got, c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(New())
	slices.Sort(got)
	want := []string{"pe image build-erofs", "pe image import", "pe image pull", "pe image push", "pe run", "pe serve", "pe snapshot create"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("commands with --image-compress (-want +got):\n%s", diff)
	}
	if _, _, err := run(t, "", "image", "ls", "--cache-dir", t.TempDir(), "--image-compress", "lz4"); err == nil ||
		!strings.Contains(err.Error(), "unknown flag: --image-compress") {
		t.Errorf("pe image ls --image-compress: %v, want an unknown flag error", err)
	}
}

// TestImportTarURL: pe image import and build-erofs take --tar as a URL,
// resume a transfer the server cut, and name a failing URL without its
// credentials.
func TestImportTarURL(t *testing.T) {
	isolate(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := bytes.Repeat([]byte("elf "), 50000)
	tw.WriteHeader(&tar.Header{Name: "tool-1.0/bin/tool", Mode: 0o755, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write(body)
	tw.Close()
	tarball := buf.Bytes()
	var requests, ranged atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/tool.tar" {
			http.NotFound(w, r)
			return
		}
		n := requests.Add(1)
		if r.Header.Get("Range") != "" {
			ranged.Add(1)
		}
		w.Header().Set("ETag", `"1"`)
		if n == 1 {
			// The first answer stops half-way: the connection drops.
			w.Header().Set("Content-Length", strconv.Itoa(len(tarball)))
			w.Write(tarball[:len(tarball)/2])
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(tarball))
	}))
	defer srv.Close()
	cache := t.TempDir()

	stdout, stderr, err := run(t, "", "image", "import", "--cache-dir", cache, "--tar", srv.URL+"/tool.tar",
		"--strip-components", "1", "--prefix", "/opt/tool", "--tag", "tool:1")
	if err != nil || !strings.HasPrefix(stdout, "sha256:") {
		t.Fatalf("import: %q, %v (stderr %q)", stdout, err, stderr)
	}
	if requests.Load() != 2 || ranged.Load() != 1 {
		t.Errorf("import: %d requests, %d with Range; want 2, 1", requests.Load(), ranged.Load())
	}
	out := filepath.Join(t.TempDir(), "tool.erofs")
	if _, _, err := run(t, "", "image", "build-erofs", "--cache-dir", cache, "tool:1", "-o", out, "--pull", "never"); err != nil {
		t.Fatalf("build-erofs tool:1: %v", err)
	}
	if got, _, err := run(t, "", "image", "cat", out, "opt/tool/bin/tool"); err != nil || got != string(body) {
		t.Errorf("cat: %d bytes, %v", len(got), err)
	}

	out2 := filepath.Join(t.TempDir(), "tool2.erofs")
	if _, stderr, err := run(t, "", "image", "build-erofs", "--cache-dir", cache, "--tar", srv.URL+"/tool.tar",
		"--strip-components", "1", "--prefix", "/opt/tool", "-o", out2); err != nil {
		t.Fatalf("build-erofs --tar URL: %v (stderr %q)", err, stderr)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(out2)
	if !bytes.Equal(a, b) {
		t.Errorf("build-erofs --tar URL wrote %d bytes, the imported image is %d", len(b), len(a))
	}

	missing := strings.Replace(srv.URL, "http://", "http://me:s3cret@", 1) + "/gone.tar.xz?X-Amz-Signature=t0ken"
	_, _, err = run(t, "", "image", "import", "--cache-dir", cache, "--tar", missing, "--tag", "gone:1")
	if err == nil || !strings.Contains(err.Error(), "/gone.tar.xz") || !strings.Contains(err.Error(), "404 Not Found") ||
		strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "t0ken") {
		t.Errorf("import of a missing URL: %v, want a 404 naming the URL without its credentials", err)
	}
}

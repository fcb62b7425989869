package cli

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/image"
	"github.com/pe-project/pe/server"
)

func TestListenIsLoopback(t *testing.T) {
	for _, c := range []struct {
		listen string
		want   bool
	}{
		{"127.0.0.1:8080", true},
		{"127.1.2.3:80", true},
		{"[::1]:8080", true},
		{"localhost:8080", true},
		{"[::ffff:127.0.0.1]:80", true},
		{":8080", false},
		{"0.0.0.0:8080", false},
		{"[::]:8080", false},
		{"192.168.1.2:8080", false},
		{"example.com:80", false},
		{"localhost.example.com:80", false},
		{"garbage", false},
	} {
		if got := listenIsLoopback(c.listen); got != c.want {
			t.Errorf("listenIsLoopback(%q) = %v, want %v", c.listen, got, c.want)
		}
	}
}

// TestServePresetsLoopbackOnly checks the cached images are offered as
// presets on a loopback address only: the cache may hold images the
// operator pulled with credentials.
func TestServePresetsLoopbackOnly(t *testing.T) {
	cache, err := image.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(t.TempDir(), "x.tar")
	f, err := os.Create(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	tw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o644, Size: 2, Typeflag: tar.TypeReg})
	tw.Write([]byte("hi"))
	tw.Close()
	f.Close()
	if _, err := cache.Import(t.Context(), image.ImportOptions{Tar: tarPath, Tag: "local/private:1"}); err != nil {
		t.Fatal(err)
	}
	names := func(ps []server.Preset) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	for _, c := range []struct {
		desc     string
		flags    []string
		loopback bool
		want     []string
	}{
		{"loopback: the cache", nil, true, []string{"local/private:1"}},
		{"public address: nothing", nil, false, nil},
		{"public address: the flags", []string{"demo=docker.io/library/busybox:1.36"}, false, []string{"demo"}},
	} {
		got, err := servePresets(t.Context(), c.flags, cache, c.loopback)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(c.want, names(got)); diff != "" {
			t.Errorf("%s: presets (-want +got):\n%s", c.desc, diff)
		}
	}
}

// TestServeSourceEROFSPreset checks a preset's EROFS file resolves as
// that file (it went to the image cache before, and every run of it
// failed), and that no other file does.
func TestServeSourceEROFSPreset(t *testing.T) {
	cache, err := image.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	preset := filepath.Join(dir, "preset.erofs")
	other := filepath.Join(dir, "other.erofs")
	os.WriteFile(preset, []byte("x"), 0o644)
	os.WriteFile(other, []byte("x"), 0o644)
	presets, err := servePresets(t.Context(), []string{"demo=" + preset}, cache, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, publicOnly := range []bool{false, true} {
		src := serveSource(&engine.Converter{Cache: cache, Options: image.PullOptions{Policy: image.PullNever}}, image.PullOptions{Policy: image.PullNever}, presets, publicOnly)
		img, err := src.Resolve(t.Context(), preset)
		if err != nil || img.EROFSPath != preset {
			t.Errorf("public only %v: the preset's file resolved to %+v, %v", publicOnly, img, err)
		}
		if img, err := src.Resolve(t.Context(), other); err == nil {
			t.Errorf("public only %v: a file that is no preset's resolved to %+v", publicOnly, img)
		}
	}
}

// TestServeEROFSPresetVM serves a --preset NAME=/path.erofs with pe serve
// over a real VM and runs it: the run used to fail with 500.
func TestServeEROFSPresetVM(t *testing.T) {
	dir := vmSetup(t)
	img := filepath.Join(dir, "busybox.erofs")
	pr, pw := io.Pipe()
	ctx, stop := context.WithCancel(t.Context())
	cmd := New()
	cmd.SetArgs([]string{"serve", "--listen", "127.0.0.1:0", "--accel", "tcg", "--cold", "--slots", "1", "--run-timeout", "2m", "--preset", "demo=" + img})
	cmd.SetOut(io.Discard)
	cmd.SetErr(pw)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx); pw.Close() }()
	defer func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("pe serve: %v", err)
		}
	}()
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`pe serve: (http://[^/]+)/`)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	var url string
	select {
	case url = <-addr:
	case <-time.After(time.Minute):
		t.Fatal("pe serve printed no address in a minute")
	}
	req, _ := http.NewRequestWithContext(t.Context(), "POST", url+"/api/v2/runi/amd64/linux/demo",
		strings.NewReader(`{"cmd":["sh","-c","echo from the preset"],"env":["A=1",""],"stdin":"/dev/null"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var got server.RunResponse
	json.Unmarshal(b, &got)
	if resp.StatusCode != 200 || got.Stdout == nil || *got.Stdout != "from the preset\n" || got.Image != "demo" || strings.Contains(string(b), dir) {
		t.Errorf("run of the EROFS preset: status %d: %s", resp.StatusCode, b)
	}
}

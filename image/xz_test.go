package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// xzDecoders are the two ways pe decodes xz, as PE_XZ selects them.
var xzDecoders = []struct{ name, env string }{
	{"system", ""},
	{"go", "go"},
}

// useXZDecoder selects the decoder for the rest of the test, skipping the
// system's when xz is not installed.
func useXZDecoder(t *testing.T, env string) {
	t.Helper()
	if env == "" {
		if _, err := exec.LookPath("xz"); err != nil {
			t.Skip("xz is not on PATH (Debian: xz-utils): the system decoder is not used here")
		}
	}
	t.Setenv(xzDecoderEnv, env)
}

// multiBlockXZ compresses b with the system's xz into blocks of 1 MiB, as
// `xz -T` writes them, and checks that it made several.
func multiBlockXZ(t *testing.T, b []byte) []byte {
	t.Helper()
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("xz is not on PATH (Debian: xz-utils): needed to make a multi-block .xz")
	}
	cmd := exec.CommandContext(t.Context(), "xz", "-T2", "--block-size=1MiB", "-1", "-c")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("xz: %v", err)
	}
	file := filepath.Join(t.TempDir(), "blocks.xz") // xz --list needs a file
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := exec.CommandContext(t.Context(), "xz", "--robot", "--list", file).Output()
	if err != nil {
		t.Fatalf("xz --list: %v", err)
	}
	for line := range strings.Lines(string(info)) {
		if f := strings.Fields(line); len(f) > 2 && f[0] == "file" {
			if n, _ := strconv.Atoi(f[2]); n < 2 {
				t.Fatalf("xz made %d block(s), want several", n)
			}
		}
	}
	return out
}

// TestXZDecoderErrors runs the same bad .tar.xz through both decoders:
// each gives an error naming the tarball and what is wrong with it.
func TestXZDecoderErrors(t *testing.T) {
	tarball := makeTar(t, []tarEntry{
		{hdr: tar.Header{Name: "ok", Typeflag: tar.TypeReg, Mode: 0o644}, data: "fine"},
		{hdr: tar.Header{Name: "big.bin", Typeflag: tar.TypeReg, Mode: 0o644}, data: noise(200000)},
	})
	good := compress(t, "xz", tarball)
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0x55
	badHeader := append(bytes.Clone(xzMagic), bytes.Repeat([]byte{0xee}, 100)...)
	tests := []struct {
		name    string
		in      []byte
		wantErr []string // substrings of the error message, from either decoder
	}{
		{"truncated", halve(good), []string{"xz: unexpected EOF"}},
		{"cut in the footer", good[:len(good)-3], []string{"xz: unexpected EOF"}},
		{"corrupt data", corrupt, []string{"xz: "}},
		{"bad stream header", badHeader, []string{"xz: "}},
	}
	for _, dec := range xzDecoders {
		t.Run(dec.name, func(t *testing.T) {
			useXZDecoder(t, dec.env)
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					src := filepath.Join(t.TempDir(), "gcc-bad.tar.xz")
					if err := os.WriteFile(src, tt.in, 0o644); err != nil {
						t.Fatal(err)
					}
					err := BuildEROFS(t.Context(), src, filepath.Join(t.TempDir(), "out.erofs"), BuildOptions{})
					if err == nil {
						t.Fatal("BuildEROFS succeeded, want an error")
					}
					t.Logf("%s: %v", dec.name, err)
					for _, want := range append(tt.wantErr, src) {
						if !strings.Contains(err.Error(), want) {
							t.Errorf("error %q does not contain %q", err, want)
						}
					}
				})
			}
		})
	}
}

// TestXZDecodersSameBytes decodes a multi-block .xz, as xz -T makes, with
// both decoders: both give back the bytes compressed.
func TestXZDecodersSameBytes(t *testing.T) {
	var plain bytes.Buffer
	for i := range 6 {
		plain.WriteString(noise(300000)) // incompressible, and
		plain.WriteString(strings.Repeat("compiler explorer "+strconv.Itoa(i), 40000))
	}
	packed := multiBlockXZ(t, plain.Bytes())
	for _, dec := range xzDecoders {
		t.Run(dec.name, func(t *testing.T) {
			useXZDecoder(t, dec.env)
			r, release, err := newXZReader(t.Context(), bytes.NewReader(packed))
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			if _, isProc := r.(*xzProcess); isProc != (dec.env == "") {
				t.Fatalf("decoder is %T, want the %s one", r, dec.name)
			}
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, plain.Bytes()) {
				t.Errorf("decoded %d bytes differing from the %d compressed", len(got), plain.Len())
			}
		})
	}
}

// TestXZProcessClosedEarly stops reading a long stream after a few bytes,
// or cancels it: release leaves no xz process behind, not even a zombie.
func TestXZProcessClosedEarly(t *testing.T) {
	useXZDecoder(t, "")
	packed := multiBlockXZ(t, []byte(strings.Repeat(noise(100000), 40)))
	for _, cancelFirst := range []bool{false, true} {
		t.Run("cancel="+strconv.FormatBool(cancelFirst), func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			// xz decodes concatenated streams, and this input never ends:
			// xz would run for ever if nobody stopped it.
			in := &cycle{b: packed}
			r, release, err := newXZReader(ctx, in)
			if err != nil {
				t.Fatal(err)
			}
			p := r.(*xzProcess)
			pid := p.cmd.Process.Pid
			if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if cancelFirst {
				cancel()
				if _, err := r.Read(make([]byte, 10)); !errors.Is(err, context.Canceled) {
					t.Errorf("Read after cancel: %v, want context.Canceled", err)
				}
			}
			done := make(chan struct{})
			go func() { release(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("release did not return")
			}
			if p.cmd.ProcessState == nil {
				t.Error("xz was not reaped")
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
				stat, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
				t.Errorf("xz (pid %d) still exists after release: %s", pid, stat)
			}
		})
	}
}

// cycle reads as b repeated for ever.
type cycle struct {
	b   []byte
	off int
}

func (c *cycle) Read(p []byte) (int, error) {
	n := copy(p, c.b[c.off:])
	c.off = (c.off + n) % len(c.b)
	return n, nil
}

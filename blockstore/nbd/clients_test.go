package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// These tests drive the server with independent NBD clients from Debian:
// qemu-utils (qemu-img, qemu-io: QEMU's own NBD client code, the one a VM
// uses) and libnbd-bin (nbdinfo, nbdcopy).

// run runs a client program and returns its output, failing the test when
// it fails.
func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := runErr(t, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

func TestQemuImgInfo(t *testing.T) {
	needTool(t, "qemu-img", "qemu-utils")
	data := randomBytes(3<<20+512, 1)
	ts := startServer(t, Options{}, Export{Name: "img", Data: bytes.NewReader(data), Size: int64(len(data))})
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	out := run(t, "qemu-img", "info", "--output=json", ts.url("img"))
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if info.VirtualSize != int64(len(data)) || info.Format != "raw" {
		t.Errorf("qemu-img info: size %d format %q, want %d raw\n%s", info.VirtualSize, info.Format, len(data), out)
	}
	// An export that does not exist is refused with the server's message.
	out, err := runErr(t, "qemu-img", "info", ts.url("nope"))
	if err == nil || !strings.Contains(string(out), `no export named "nope"`) {
		t.Errorf("qemu-img info of a missing export: %v, want an error naming it\n%s", err, out)
	}
}

// TestQemuImgConvert copies the whole export through QEMU's NBD client
// (many pipelined reads) and compares it with the data.
func TestQemuImgConvert(t *testing.T) {
	needTool(t, "qemu-img", "qemu-utils")
	// A multiple of 512: qemu-img 7.2's convert hangs after copying an
	// export whose size is not (it rounds the size up to a sector); the
	// unaligned tail is read by qemu-io and nbdcopy below.
	data := randomBytes(24<<20, 2) // not a multiple of 512: the tail must come through
	ts := startServer(t, Options{}, Export{Name: "img", Data: bytes.NewReader(data), Size: int64(len(data))})
	dst := filepath.Join(t.TempDir(), "copy.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", ts.url("img"), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("qemu-img convert copied %d bytes that differ from the export's %d", len(got), len(data))
	}
}

func TestQemuIo(t *testing.T) {
	needTool(t, "qemu-io", "qemu-utils")
	data := bytes.Repeat([]byte{0xab}, 1<<20+100)
	copy(data[512<<10:], bytes.Repeat([]byte{0xcd}, 512<<10+100))
	ts := startServer(t, Options{}, Export{Name: "img", Data: bytes.NewReader(data), Size: int64(len(data))})
	out := string(run(t, "qemu-io", "-r", "-f", "raw",
		"-c", "read -P 0xab 0 512k", "-c", "read -P 0xcd 512k 512k", "-c", "read -P 0xab 4095 2",
		"-c", "aio_read -P 0xab 0 64k", "-c", "aio_read -P 0xcd 640k 64k", "-c", "aio_flush",
		"-c", "read -P 0xcd 1048500 100", // the unaligned tail
		"-c", "flush", ts.url("img")))
	if strings.Contains(out, "fail") || strings.Count(out, "read ") != 6 {
		t.Errorf("qemu-io reads:\n%s", out)
	}
	// A read with the wrong pattern must fail: the check above means something.
	out3, _ := runErr(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0xcd 0 4k", ts.url("img"))
	if out = string(out3); !strings.Contains(out, "Pattern verification failed") {
		t.Errorf("qemu-io found the wrong pattern:\n%s", out)
	}
	// The export is read-only: QEMU refuses to open it for writing.
	out2, err := runErr(t, "qemu-io", "-f", "raw", "-c", "write 0 4k", ts.url("img"))
	if err == nil && !strings.Contains(string(out2), "read-only") && !strings.Contains(string(out2), "Operation not permitted") {
		t.Errorf("qemu-io write on a read-only export succeeded:\n%s", out2)
	}
}

// TestQemuIoReadError: a failing export gives the client EIO for the
// failing range, the rest still reads, and the server logs the failure.
func TestQemuIoReadError(t *testing.T) {
	needTool(t, "qemu-io", "qemu-utils")
	data := bytes.Repeat([]byte{7}, 1<<20)
	ts := startServer(t, Options{}, Export{Name: "img", Data: &failingReader{data: data, from: 256 << 10, to: 260 << 10}, Size: int64(len(data))})
	b, _ := runErr(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 7 0 64k", "-c", "read 256k 4k", "-c", "read -P 7 512k 4k", ts.url("img"))
	out := string(b)
	if !strings.Contains(out, "Input/output error") || strings.Count(out, "read 65536/65536") != 1 || strings.Count(out, "read 4096/4096") != 1 {
		t.Errorf("qemu-io with a failing range:\n%s", out)
	}
	if logs := ts.logs.String(); !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, errInjected.Error()) {
		t.Errorf("the read failure was not logged:\n%s", logs)
	}
	if st := ts.Stats(); st.ReadErrors == 0 || st.Reads < 2 {
		t.Errorf("Stats after a failed read: %+v", st)
	}
}

func TestNbdinfo(t *testing.T) {
	needTool(t, "nbdinfo", "libnbd-bin")
	ts := startServer(t, Options{MaxReadLength: 4 << 20},
		Export{Name: "img", Description: "an image", Data: bytes.NewReader(make([]byte, 8192)), Size: 8192},
		Export{Name: "other", Data: bytes.NewReader(make([]byte, 1<<20)), Size: 1 << 20},
	)
	type export struct {
		Name        string `json:"export-name"`
		Description string `json:"description"`
		Size        int64  `json:"export-size"`
		ReadOnly    bool   `json:"is_read_only"`
		MultiConn   bool   `json:"can_multi_conn"`
		CanFlush    bool   `json:"can_flush"`
		CanTrim     bool   `json:"can_trim"`
		MinBlock    int64  `json:"block_size_minimum"`
		PrefBlock   int64  `json:"block_size_preferred"`
		MaxBlock    int64  `json:"block_size_maximum"`
	}
	var list struct {
		Exports []export `json:"exports"`
	}
	out := run(t, "nbdinfo", "--list", "--json", "nbd+unix:///?socket="+ts.sock)
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	want := []export{
		{Name: "img", Description: "an image", Size: 8192, ReadOnly: true, MultiConn: true, CanFlush: true, MinBlock: 1, PrefBlock: 4096, MaxBlock: 4 << 20},
		{Name: "other", Size: 1 << 20, ReadOnly: true, MultiConn: true, CanFlush: true, MinBlock: 1, PrefBlock: 4096, MaxBlock: 4 << 20},
	}
	if diff := cmp.Diff(want, list.Exports); diff != "" {
		t.Errorf("nbdinfo --list (-want +got):\n%s\n%s", diff, out)
	}
}

func TestNbdcopy(t *testing.T) {
	needTool(t, "nbdcopy", "libnbd-bin")
	data := randomBytes(16<<20+777, 3)
	ts := startServer(t, Options{}, Export{Name: "img", Data: bytes.NewReader(data), Size: int64(len(data))})
	dst := filepath.Join(t.TempDir(), "copy.raw")
	// nbdcopy opens several connections (the export allows multi-conn) and
	// keeps many requests in flight on each.
	run(t, "nbdcopy", "--connections=4", "--requests=64", ts.url("img"), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("nbdcopy copied %d bytes that differ from the export's %d", len(got), len(data))
	}
}

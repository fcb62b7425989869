package cloudhypervisor

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/vmm"
)

// TestStreamStep checks the data channel's plumbing: pe connects to the
// console socket cloud-hypervisor listens on and copies both ways
// between it and the config's Stream, whose pe end reads EOF when the
// VMM's side goes.
func TestStreamStep(t *testing.T) {
	work := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(work, StreamSocketName))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "mine"), os.NewFile(uintptr(fds[1]), "theirs")
	defer mine.Close()
	l := &vmm.Launch{Config: &vmm.Config{Stream: theirs}, WorkDir: work}
	if err := stepStream.Fn(t.Context(), l); err != nil {
		t.Fatal(err)
	}
	theirs.Close() // the caller's copy, as the engine closes it after Start
	vmmSide, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	mine.SetDeadline(time.Now().Add(10 * time.Second))
	vmmSide.SetDeadline(time.Now().Add(10 * time.Second))
	mine.Write([]byte("to the guest"))
	buf := make([]byte, 12)
	if _, err := io.ReadFull(vmmSide, buf); err != nil || string(buf) != "to the guest" {
		t.Fatalf("the VMM read %q, %v", buf, err)
	}
	vmmSide.Write([]byte("from the guest"))
	vmmSide.Close()
	got, err := io.ReadAll(mine)
	if err != nil || string(got) != "from the guest" {
		t.Fatalf("pe read %q, %v; want the guest's bytes, then EOF", got, err)
	}
}

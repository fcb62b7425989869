package qemu

import (
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/pe-project/pe/vmm"
)

// TestStreamArgs checks the data channel's device: a virtio-serial port
// named for the guest, its chardev a copy of the caller's socket that
// QEMU inherits, by number, confined or not.
func TestStreamArgs(t *testing.T) {
	for _, confined := range []bool{false, true} {
		_, theirs := socketPair(t)
		cfg := (&vmm.Config{
			Kernel: "/k/vmlinuz", Cmdline: "quiet",
			Disks:  []vmm.Disk{{Path: "/tmp/io.img"}},
			Stream: theirs,
		}).WithDefaults()
		l := &vmm.Launch{Config: cfg}
		var a access
		var err error
		if confined {
			cfg.Kernel = "/proc/self/exe"
			cfg.Disks[0].Path = "/proc/self/exe"
			cfg.Disks[0].ReadOnly = true
			a, err = fdAccess(cfg, fdTable{l})
		} else {
			a, err = pathAccess(cfg, fdTable{l})
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range l.ExtraFiles {
			defer f.Close()
		}
		stream := l.ExtraFiles[len(l.ExtraFiles)-1]
		fd := 2 + len(l.ExtraFiles)
		args := argsWith(cfg, 0, a)
		i := slices.Index(args, "virtio-serial-device")
		want := []string{
			"virtio-serial-device",
			"-chardev", "socket,id=pe-stream,fd=" + strconv.Itoa(fd) + ",server=off",
			"-device", "virtserialport,chardev=pe-stream,name=" + vmm.StreamPortName,
		}
		if i < 0 || !slices.Equal(args[i:], want) {
			t.Errorf("confined %v: stream arguments %q, want %q", confined, args[max(i, 0):], want)
		}
		if stream.Fd() == theirs.Fd() {
			t.Fatalf("QEMU inherits the caller's socket, want a copy")
		}
		var st syscall.Stat_t
		if err := syscall.Fstat(int(stream.Fd()), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
			t.Errorf("the stream's descriptor is not a socket: %v %o", err, st.Mode)
		}
	}
}

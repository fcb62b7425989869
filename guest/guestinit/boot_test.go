package guestinit

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// TestMountTablesNodev: every file system the init and the stage-2 child
// mount from their tables is nosuid, and nodev but for those whose device
// nodes are the point (the init's devtmpfs, the program's devpts).
func TestMountTablesNodev(t *testing.T) {
	type flags struct{ NoSuid, NoDev bool }
	got := map[string]flags{}
	for _, m := range bootFileSystems {
		got[m.dir] = flags{m.flags&unix.MS_NOSUID != 0, m.flags&unix.MS_NODEV != 0}
	}
	for _, m := range devMounts(1 << 20) {
		got["/dev/"+m.dir+" (program)"] = flags{m.flags&unix.MS_NOSUID != 0, m.flags&unix.MS_NODEV != 0}
	}
	want := map[string]flags{
		"/proc":              {true, true},
		"/sys":               {true, true},
		"/dev":               {true, false},
		"/run":               {true, true},
		CgroupRoot:           {true, true},
		"/dev/pts (program)": {true, false},
		"/dev/shm (program)": {true, true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mount flags (-want +got):\n%s", diff)
	}
}

func TestParseCmdline(t *testing.T) {
	for _, tc := range []struct {
		in      string
		params  map[string]string
		modules map[string]string
	}{
		{
			in:      "console=ttyS0 quiet pe.io=/dev/vdc pe.debug=1\n",
			params:  map[string]string{"console": "ttyS0", "quiet": "", "pe.io": "/dev/vdc", "pe.debug": "1"},
			modules: map[string]string{},
		},
		{
			in:      `virtio_mmio.device=4K@0xfeb00000:12 virtio-mmio.device=4K@0xfeb01000:13 dyndbg="file foo.c +p" erofs.x`,
			params:  map[string]string{"virtio_mmio.device": "4K@0xfeb00000:12", "virtio-mmio.device": "4K@0xfeb01000:13", "dyndbg": "file foo.c +p", "erofs.x": ""},
			modules: map[string]string{"virtio_mmio": "device=4K@0xfeb00000:12 device=4K@0xfeb01000:13", "erofs": "x"},
		},
	} {
		c := parseCmdline(tc.in)
		if diff := cmp.Diff(tc.params, c.params); diff != "" {
			t.Errorf("%q params (-want +got):\n%s", tc.in, diff)
		}
		if diff := cmp.Diff(tc.modules, c.moduleParams); diff != "" {
			t.Errorf("%q module params (-want +got):\n%s", tc.in, diff)
		}
	}
	c := parseCmdline("pe.image=/dev/vdx")
	if c.imageDevice() != "/dev/vdx" || c.ioDevice() != "/dev/vdb" {
		t.Errorf("devices %q %q", c.imageDevice(), c.ioDevice())
	}
}

func TestProgramMemory(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct{ requested, total, want int64 }{
		{0, 512 * mib, 512*mib - 512*mib/10},
		{100 * mib, 512 * mib, 100 * mib},
		{1024 * mib, 512 * mib, 512*mib - 512*mib/10},
		{0, 128 * mib, 80 * mib}, // the init's 48 MiB reserve
		{0, 32 * mib, 16 * mib},  // never below 16 MiB
	} {
		if got := programMemory(tc.requested, tc.total); got != tc.want {
			t.Errorf("programMemory(%d, %d) = %d, want %d", tc.requested, tc.total, got, tc.want)
		}
	}
}

func TestLookupEnv(t *testing.T) {
	env := []string{"A=1", "PATH=/x", "B", "A=2", "EMPTY="}
	for key, want := range map[string]string{"A": "2", "PATH": "/x", "B": "", "EMPTY": "", "NONE": ""} {
		if got := lookupEnv(env, key); got != want {
			t.Errorf("lookupEnv(%q) = %q, want %q", key, got, want)
		}
	}
	if !hasEnv(env, "EMPTY") || hasEnv(env, "NONE") {
		t.Error("hasEnv")
	}
}

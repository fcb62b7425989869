package engine

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// rootfs is an image root with the usual user files.
var rootfs = fstest.MapFS{
	"etc/passwd": {Data: []byte(`root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:100::/home/bob:/bin/sh
broken line
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
`)},
	"etc/group": {Data: []byte(`root:x:0:
users:x:100:alice
staff:x:50:alice,bob
alice:x:1000:
wheel:x:10:bob
`)},
}

func TestMergeConfigCommand(t *testing.T) {
	img := func(ep, cmd []string) *v1.Config { return &v1.Config{Entrypoint: ep, Cmd: cmd} }
	for _, c := range []struct {
		desc string
		img  *v1.Config
		o    Overrides
		want []string
	}{
		{"cmd only", img(nil, []string{"sh"}), Overrides{}, []string{"sh"}},
		{"entrypoint and cmd", img([]string{"python3"}, []string{"app.py"}), Overrides{}, []string{"python3", "app.py"}},
		{"args replace cmd", img([]string{"python3"}, []string{"app.py"}), Overrides{Cmd: []string{"-V"}}, []string{"python3", "-V"}},
		{"args without entrypoint", img(nil, []string{"sh"}), Overrides{Cmd: []string{"echo", "hi"}}, []string{"echo", "hi"}},
		{"--entrypoint drops the image cmd", img([]string{"python3"}, []string{"app.py"}), Overrides{Entrypoint: []string{"sh"}}, []string{"sh"}},
		{"--entrypoint with args", img([]string{"python3"}, []string{"app.py"}), Overrides{Entrypoint: []string{"sh"}, Cmd: []string{"-c", "id"}}, []string{"sh", "-c", "id"}},
		{"--entrypoint '' with args", img([]string{"python3"}, []string{"app.py"}), Overrides{Entrypoint: []string{}, Cmd: []string{"ls"}}, []string{"ls"}},
		{"entrypoint only", img([]string{"/bin/app", "--serve"}, nil), Overrides{}, []string{"/bin/app", "--serve"}},
		{"no config", nil, Overrides{Cmd: []string{"true"}}, []string{"true"}},
		{"API entrypoint keeps the image cmd", img([]string{"python3"}, []string{"app.py"}), Overrides{Entrypoint: []string{"pypy"}, KeepImageCmd: true}, []string{"pypy", "app.py"}},
		{"API empty entrypoint keeps the image cmd", img([]string{"python3"}, []string{"app.py"}), Overrides{Entrypoint: []string{}, KeepImageCmd: true}, []string{"app.py"}},
		{"API entrypoint and cmd", img([]string{"python3"}, []string{"app.py"}), Overrides{Entrypoint: []string{}, Cmd: []string{"ls"}, KeepImageCmd: true}, []string{"ls"}},
	} {
		t.Run(c.desc, func(t *testing.T) {
			p, err := MergeConfig(c.img, c.o, rootfs)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, p.Argv); diff != "" {
				t.Errorf("argv (-want +got):\n%s", diff)
			}
		})
	}
	for _, c := range []struct {
		desc string
		img  *v1.Config
		o    Overrides
	}{
		{"nothing", img(nil, nil), Overrides{}},
		{"no config", nil, Overrides{}},
		{"--entrypoint '' and no args", img([]string{"sh"}, []string{"x"}), Overrides{Entrypoint: []string{}}},
	} {
		if _, err := MergeConfig(c.img, c.o, rootfs); !errors.Is(err, ErrNoCommand) {
			t.Errorf("%s: error %v, want ErrNoCommand", c.desc, err)
		}
	}
}

func TestMergeConfigEnvAndWorkdir(t *testing.T) {
	for _, c := range []struct {
		desc    string
		img     v1.Config
		o       Overrides
		wantEnv []string
		wantCwd string
	}{
		{
			"defaults", v1.Config{Cmd: []string{"sh"}}, Overrides{},
			[]string{"PATH=" + DefaultPath, "HOME=/root"}, "/",
		},
		{
			"image env kept, PATH not added", v1.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/opt/bin", "A=1"}, WorkingDir: "/app"}, Overrides{},
			[]string{"PATH=/opt/bin", "A=1", "HOME=/root"}, "/app",
		},
		{
			"overrides replace in place and append", v1.Config{Cmd: []string{"sh"}, Env: []string{"A=1", "B=2"}, WorkingDir: "/app"},
			Overrides{Env: []string{"B=3", "C=4", "A="}, Workdir: "/tmp/../srv"},
			[]string{"PATH=" + DefaultPath, "A=", "B=3", "C=4", "HOME=/root"}, "/srv",
		},
		{
			"ReplaceEnv drops the image's env", v1.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/opt/bin", "A=1"}},
			Overrides{Env: []string{"B=2"}, ReplaceEnv: true},
			[]string{"PATH=" + DefaultPath, "B=2", "HOME=/root"}, "/",
		},
		{
			"ReplaceEnv with no entries keeps only the defaults", v1.Config{Cmd: []string{"sh"}, Env: []string{"A=1"}},
			Overrides{Env: []string{}, ReplaceEnv: true},
			[]string{"PATH=" + DefaultPath, "HOME=/root"}, "/",
		},
		{
			"HOME from the request wins", v1.Config{Cmd: []string{"sh"}}, Overrides{Env: []string{"HOME=/x"}, User: "alice"},
			[]string{"PATH=" + DefaultPath, "HOME=/x"}, "/",
		},
		{
			"HOME of the user", v1.Config{Cmd: []string{"sh"}, User: "bob"}, Overrides{},
			[]string{"PATH=" + DefaultPath, "HOME=/home/bob"}, "/",
		},
		{
			"relative image working dir", v1.Config{Cmd: []string{"sh"}, WorkingDir: "app"}, Overrides{},
			[]string{"PATH=" + DefaultPath, "HOME=/root"}, "/app",
		},
	} {
		t.Run(c.desc, func(t *testing.T) {
			p, err := MergeConfig(&c.img, c.o, rootfs)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.wantEnv, p.Env); diff != "" {
				t.Errorf("env (-want +got):\n%s", diff)
			}
			if p.Cwd != c.wantCwd {
				t.Errorf("cwd %q, want %q", p.Cwd, c.wantCwd)
			}
		})
	}
	for _, c := range []struct {
		desc string
		img  v1.Config
		o    Overrides
		want string
	}{
		{"relative -w", v1.Config{Cmd: []string{"sh"}}, Overrides{Workdir: "tmp"}, "absolute"},
		{"env without =", v1.Config{Cmd: []string{"sh"}}, Overrides{Env: []string{"NOVALUE"}}, `"NOVALUE" from the request`},
		{"bad image env", v1.Config{Cmd: []string{"sh"}, Env: []string{"=x"}}, Overrides{}, "from the image"},
	} {
		if _, err := MergeConfig(&c.img, c.o, rootfs); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one with %q", c.desc, err, c.want)
		}
	}
}

func TestLookupUser(t *testing.T) {
	type ids struct {
		UID, GID uint32
		Groups   []uint32
		Home     string
	}
	for _, c := range []struct {
		spec string
		fs   fs.FS
		want ids
	}{
		{"", rootfs, ids{0, 0, nil, "/root"}},
		{"root", rootfs, ids{0, 0, nil, "/root"}},
		{"alice", rootfs, ids{1000, 1000, []uint32{100, 50}, "/home/alice"}},
		{"bob", rootfs, ids{1001, 100, []uint32{50, 10}, "/home/bob"}},
		{"1000", rootfs, ids{1000, 1000, []uint32{100, 50}, "/home/alice"}},
		{"alice:staff", rootfs, ids{1000, 50, nil, "/home/alice"}},
		{"alice:0", rootfs, ids{1000, 0, nil, "/home/alice"}},
		{"1000:50", rootfs, ids{1000, 50, nil, "/home/alice"}},
		{"4242", rootfs, ids{4242, 0, nil, ""}},
		{"4242:4343", rootfs, ids{4242, 4343, nil, ""}},
		{"4242:wheel", rootfs, ids{4242, 10, nil, ""}},
		{":wheel", rootfs, ids{0, 10, nil, "/root"}},
		{"65534", rootfs, ids{65534, 65534, nil, "/nonexistent"}},
		{"1000", nil, ids{1000, 0, nil, ""}},
		{"1000:1000", fstest.MapFS{}, ids{1000, 1000, nil, ""}},
	} {
		t.Run(c.spec, func(t *testing.T) {
			u, err := lookupUser(c.spec, c.fs)
			if err != nil {
				t.Fatal(err)
			}
			got := ids{u.uid, u.gid, u.groups, u.home}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("lookupUser(%q) (-want +got):\n%s", c.spec, diff)
			}
		})
	}
	for _, c := range []struct {
		spec string
		fs   fstest.MapFS
		want string
	}{
		{"mallory", rootfs, `user "mallory": unknown user or group: not in the image's /etc/passwd`},
		{"alice:nogroup", rootfs, `group "nogroup": unknown user or group: not in the image's /etc/group`},
		{"alice", fstest.MapFS{}, "no readable /etc/passwd"},
		{"alice:", rootfs, "empty group"},
		{"4294967295", rootfs, "not in the image's /etc/passwd"},
		{"-1", rootfs, "not in the image's /etc/passwd"},
	} {
		_, err := lookupUser(c.spec, c.fs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("lookupUser(%q): %v, want an error with %q", c.spec, err, c.want)
		}
		if err != nil && !strings.Contains(c.want, "empty") && !errors.Is(err, ErrUnknownUser) {
			t.Errorf("lookupUser(%q): %v does not wrap ErrUnknownUser", c.spec, err)
		}
	}
}

func TestMergeConfigUser(t *testing.T) {
	p, err := MergeConfig(&v1.Config{Cmd: []string{"id"}, User: "alice"}, Overrides{User: "bob:staff"}, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if p.UID != 1001 || p.GID != 50 || len(p.Groups) != 0 {
		t.Errorf("-u bob:staff over image user alice: %d:%d %v", p.UID, p.GID, p.Groups)
	}
	if _, err := MergeConfig(&v1.Config{Cmd: []string{"id"}, User: "ghost"}, Overrides{}, rootfs); !errors.Is(err, ErrUnknownUser) {
		t.Errorf("image user ghost: %v, want ErrUnknownUser", err)
	}
}

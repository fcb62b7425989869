package qemu

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pe-project/pe/vmm"
)

func snapshotConfig() *vmm.Config {
	return (&vmm.Config{
		Kernel: "/k/vmlinux", Initramfs: "/c/initramfs.cpio",
		Cmdline: "quiet pe.snapshot=1",
		Disks:   []vmm.Disk{{Path: "/images/rootfs.erofs", ReadOnly: true}, {Path: "/tmp/run/io.img"}},
		Accel:   vmm.AccelTCG, MemoryMiB: 256,
	}).WithDefaults()
}

func TestSnapshotArgs(t *testing.T) {
	cfg := snapshotConfig()
	golden(t, "snapshot-save", snapshotArgs(unconfinedArgs(cfg, 2000000), cfg, "/snap,1/mem", true, 7, false))
	golden(t, "snapshot-restore", snapshotArgs(unconfinedArgs(cfg, 2000000), cfg, "/snap,1/mem", false, 7, true))
}

// fakeQMP serves QMP on a Unix socket: a greeting, then answers from
// answer (by command name), with an event before each answer.
func fakeQMP(t *testing.T, answer func(cmd string, args json.RawMessage) string) (string, *[]string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var got []string
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\n"))
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var c struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
			}
			json.Unmarshal(line, &c)
			got = append(got, strings.TrimSpace(c.Execute+" "+string(c.Arguments)))
			conn.Write([]byte(`{"event": "RESUME", "timestamp": {"seconds": 1}}` + "\n" + answer(c.Execute, c.Arguments) + "\n"))
		}
	}()
	return sock, &got
}

func TestQMP(t *testing.T) {
	polls := 0
	sock, got := fakeQMP(t, func(cmd string, args json.RawMessage) string {
		switch cmd {
		case "query-migrate":
			polls++
			if polls < 3 {
				return `{"return": {"status": "active"}}`
			}
			return `{"return": {"status": "completed"}}`
		case "bogus":
			return `{"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}}`
		}
		return `{"return": {}}`
	})
	q, err := dialQMP(t, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Execute(t.Context(), "migrate-set-capabilities", ignoreShared); err != nil {
		t.Fatal(err)
	}
	if err := q.WaitMigration(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Execute(t.Context(), "bogus", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("bogus: %v, want CommandNotFound", err)
	}
	want := []string{
		"qmp_capabilities",
		`migrate-set-capabilities {"capabilities":[{"capability":"x-ignore-shared","state":true}]}`,
		"query-migrate", "query-migrate", "query-migrate",
		"bogus",
	}
	if diff := cmp.Diff(want, *got); diff != "" {
		t.Errorf("commands (-want +got):\n%s", diff)
	}
}

func TestQMPMigrationFailed(t *testing.T) {
	sock, _ := fakeQMP(t, func(cmd string, args json.RawMessage) string {
		if cmd == "query-migrate" {
			return `{"return": {"status": "failed", "error-desc": "disk full"}}`
		}
		return `{"return": {}}`
	})
	q, err := dialQMP(t, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.WaitMigration(t.Context()); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("WaitMigration: %v, want the failure's description", err)
	}
}

// dialQMP starts a QMP session on the socket at path.
func dialQMP(t *testing.T, path string) (*QMP, error) {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return NewQMP(t.Context(), conn)
}

package nbd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// BenchmarkNbdcopy copies a 256 MiB file-backed export to null: with
// nbdcopy, over 1 connection (as QEMU reads a disk) and over 4 (nbdcopy's
// default), 64 requests in flight each; BenchmarkFileCopy copies the same
// file directly, for comparison.
func BenchmarkNbdcopy(b *testing.B) {
	needToolB(b, "nbdcopy")
	f := benchFile(b)
	st, _ := f.Stat()
	ts := startServerB(b, Export{Name: "img", Data: f, Size: st.Size()})
	for _, conns := range []string{"1", "4"} {
		b.Run("connections="+conns, func(b *testing.B) {
			b.SetBytes(st.Size())
			for b.Loop() {
				if out, err := exec.Command("nbdcopy", "--connections="+conns, "--requests=64", ts.url("img"), "null:").CombinedOutput(); err != nil {
					b.Fatalf("nbdcopy: %v\n%s", err, out)
				}
			}
		})
	}
}

func BenchmarkFileCopy(b *testing.B) {
	needToolB(b, "nbdcopy")
	f := benchFile(b)
	st, _ := f.Stat()
	b.SetBytes(st.Size())
	for b.Loop() {
		if out, err := exec.Command("nbdcopy", f.Name(), "null:").CombinedOutput(); err != nil {
			b.Fatalf("nbdcopy: %v\n%s", err, out)
		}
	}
}

func needToolB(b *testing.B, name string) {
	if _, err := exec.LookPath(name); err != nil {
		b.Skipf("needs %s (libnbd-bin)", name)
	}
}

// benchFile writes a 256 MiB file of random bytes, in the page cache.
func benchFile(b *testing.B) *os.File {
	p := filepath.Join(b.TempDir(), "img")
	if err := os.WriteFile(p, randomBytes(256<<20, 11), 0o644); err != nil {
		b.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

// startServerB is startServer for benchmarks.
func startServerB(b *testing.B, exps ...Export) *testServer {
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	s := NewServer(Options{})
	for _, e := range exps {
		if err := s.AddExport(e); err != nil {
			b.Fatal(err)
		}
	}
	sock := filepath.Join(dir, "nbd.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(ln)
	b.Cleanup(func() { s.Close() })
	return &testServer{Server: s, sock: sock, logs: &logBuffer{}}
}

// BenchmarkQemuImgLatency reads a 256 MiB file-backed export with
// qemu-img bench, one 128 KiB request at a time (as a guest's page
// faults read its disk): the time per request of QEMU's NBD client and
// pe's server, against qemu-img reading the file itself.
func BenchmarkQemuImgLatency(b *testing.B) {
	needToolB(b, "qemu-img")
	f := benchFile(b)
	st, _ := f.Stat()
	ts := startServerB(b, Export{Name: "img", Data: f, Size: st.Size()})
	const requests = 2000
	for _, c := range []struct{ name, target string }{{"file", f.Name()}, {"nbd", ts.url("img")}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				out, err := exec.Command("qemu-img", "bench", "-f", "raw", "-c", strconv.Itoa(requests), "-d", "1", "-s", "131072", "-S", "131072", c.target).CombinedOutput()
				if err != nil {
					b.Fatalf("qemu-img bench: %v\n%s", err, out)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*requests), "µs/request")
		})
	}
}

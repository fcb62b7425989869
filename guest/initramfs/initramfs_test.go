package initramfs

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"
)

// fakeModule returns a minimal relocatable ELF64 file whose .modinfo holds
// name= and depends=, which is all resolveModules reads.
func fakeModule(t *testing.T, name, depends string) []byte {
	t.Helper()
	modinfo := []byte("license=GPL\x00name=" + name + "\x00depends=" + depends + "\x00vermagic=test\x00")
	shstrtab := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	modinfoOff := uint64(ehsize)
	shstrOff := modinfoOff + uint64(len(modinfo))
	shoff := (shstrOff + uint64(len(shstrtab)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shoff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, &hdr)
	b.Write(modinfo)
	b.Write(shstrtab)
	b.Write(make([]byte, shoff-uint64(b.Len())))
	for _, sh := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: modinfoOff, Size: uint64(len(modinfo)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstrtab)), Addralign: 1},
	} {
		binary.Write(&b, binary.LittleEndian, &sh)
	}
	return b.Bytes()
}

// writeModule writes a fake module under dir/sub, compressed by its suffix.
func writeModule(t *testing.T, dir, file, depends string) []byte {
	t.Helper()
	content := fakeModule(t, moduleName(file), depends)
	p := filepath.Join(dir, "kernel", "drivers", file)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	var w io.WriteCloser = nopCloser{&buf}
	var err error
	switch {
	case strings.HasSuffix(file, ".xz"):
		w, err = xz.NewWriter(&buf)
	case strings.HasSuffix(file, ".zst"):
		w, err = zstd.NewWriter(&buf)
	case strings.HasSuffix(file, ".gz"):
		w = gzip.NewWriter(&buf)
	}
	if err != nil {
		t.Fatal(err)
	}
	w.Write(content)
	w.Close()
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return content
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func TestModinfoDepends(t *testing.T) {
	deps, err := modinfoDepends(fakeModule(t, "a", "b,virtio-ring,"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"b", "virtio_ring"}, deps); diff != "" {
		t.Errorf("depends (-want +got):\n%s", diff)
	}
	if _, err := modinfoDepends([]byte("not an elf")); err == nil {
		t.Error("no error for a non-ELF module")
	}
}

func TestResolveModules(t *testing.T) {
	dir := t.TempDir()
	writeModule(t, dir, "a.ko.xz", "b,c")
	writeModule(t, dir, "b.ko.zst", "c")
	writeModule(t, dir, "c.ko", "")
	writeModule(t, dir, "d-dash.ko.gz", "builtin_one")
	writeModule(t, dir, "e.ko", "missing")
	writeModule(t, dir, "cyc1.ko", "cyc2")
	writeModule(t, dir, "cyc2.ko", "cyc3")
	writeModule(t, dir, "cyc3.ko", "cyc1")
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/fs/builtin-one.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	modulesDir := filepath.Join(dir, "kernel") // modules.builtin sits beside it

	for _, tc := range []struct {
		name      string
		request   []string
		want      []string
		errIs     error
		errHas    string
		neededBy  string
		errModule string
	}{
		{name: "dependencies first, each once", request: []string{"a", "c", "d_dash"}, want: []string{"c", "b", "a", "d_dash"}},
		{name: "request order kept", request: []string{"c", "b"}, want: []string{"c", "b"}},
		{name: "dashes and suffixes in requests", request: []string{"d-dash.ko"}, want: []string{"d_dash"}},
		{name: "built-in needs no file", request: []string{"builtin_one"}, want: nil},
		{name: "missing dependency", request: []string{"e"}, errIs: ErrModuleNotFound, errModule: "missing", neededBy: "e"},
		{name: "missing request", request: []string{"nope"}, errIs: ErrModuleNotFound, errModule: "nope"},
		{name: "cycle", request: []string{"cyc1"}, errHas: "dependency cycle cyc1 -> cyc2 -> cyc3 -> cyc1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mods, err := resolveModules(modulesDir, tc.request)
			if tc.errIs != nil || tc.errHas != "" {
				if err == nil {
					t.Fatalf("no error, got %d modules", len(mods))
				}
				if tc.errIs != nil && !errors.Is(err, tc.errIs) {
					t.Errorf("error %v, want %v", err, tc.errIs)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("error %q, want it to contain %q", err, tc.errHas)
				}
				var me *ModuleError
				if tc.errModule != "" && (!errors.As(err, &me) || me.Module != tc.errModule || me.NeededBy != tc.neededBy) {
					t.Errorf("error %#v, want module %q needed by %q", err, tc.errModule, tc.neededBy)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range mods {
				got = append(got, m.name)
				if _, err := elf.NewFile(bytes.NewReader(m.content)); err != nil {
					t.Errorf("%s: content is not the decompressed ELF: %v", m.name, err)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
		})
	}
}

// fakeInit is enough of an ELF file for Build.
var fakeInit = []byte("\x7fELF pretend static init")

func readCPIO(t *testing.T, p string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	recs := map[string]cpio.Record{}
	err = cpio.ForEachRecord(cpio.Newc.Reader(f), func(r cpio.Record) error {
		recs[r.Name] = r
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func recordContent(t *testing.T, r cpio.Record) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestBuild(t *testing.T) {
	dir := t.TempDir()
	a := writeModule(t, dir, "a.ko.xz", "b")
	b := writeModule(t, dir, "b.ko", "")
	initPath := filepath.Join(dir, "pe-init")
	if err := os.WriteFile(initPath, fakeInit, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initramfs.cpio")
	if err := Build(out, initPath, filepath.Join(dir, "kernel"), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	recs := readCPIO(t, out)
	type entry struct {
		Mode    uint64
		Content string
	}
	want := map[string]entry{
		"dev":               {cpio.S_IFDIR | 0o755, ""},
		"proc":              {cpio.S_IFDIR | 0o755, ""},
		"sys":               {cpio.S_IFDIR | 0o755, ""},
		"run":               {cpio.S_IFDIR | 0o755, ""},
		"mnt":               {cpio.S_IFDIR | 0o755, ""},
		"tmp":               {cpio.S_IFDIR | 0o755, ""},
		"lib":               {cpio.S_IFDIR | 0o755, ""},
		"lib/modules":       {cpio.S_IFDIR | 0o755, ""},
		"dev/console":       {cpio.S_IFCHR | 0o600, ""},
		"dev/null":          {cpio.S_IFCHR | 0o666, ""},
		"init":              {cpio.S_IFREG | 0o755, string(fakeInit)},
		"lib/modules/a.ko":  {cpio.S_IFREG | 0o644, string(a)},
		"lib/modules/b.ko":  {cpio.S_IFREG | 0o644, string(b)},
		"lib/modules/order": {cpio.S_IFREG | 0o644, "b\na\n"},
	}
	got := map[string]entry{}
	for n, r := range recs {
		c := ""
		if r.Mode&cpio.S_IFMT == cpio.S_IFREG {
			c = recordContent(t, r)
		}
		got[n] = entry{r.Mode, c}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("initramfs (-want +got):\n%s", diff)
	}
	if c := recs["dev/console"]; c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", c.Rmajor, c.Rminor)
	}

	// Same inputs, same bytes.
	out2 := filepath.Join(dir, "again.cpio")
	if err := Build(out2, initPath, filepath.Join(dir, "kernel"), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(out)
	b2, _ := os.ReadFile(out2)
	if !bytes.Equal(b1, b2) {
		t.Error("two builds from the same inputs differ")
	}

	// Failures leave nothing behind.
	bad := filepath.Join(dir, "bad.cpio")
	if err := Build(bad, initPath, filepath.Join(dir, "kernel"), []string{"nope"}); !errors.Is(err, ErrModuleNotFound) {
		t.Errorf("missing module: %v", err)
	}
	if err := Build(bad, filepath.Join(dir, "kernel", "drivers", "b.ko"), filepath.Join(dir, "kernel"), []string{"b"}); err != nil {
		t.Errorf("an ELF module as init: %v", err) // it is an ELF file: accepted
	}
	os.Remove(bad)
	if err := Build(bad, filepath.Join(dir, "initramfs.cpio"), "", []string{}); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Errorf("non-ELF init: %v", err)
	}
	if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed build left %s", bad)
	}
}

// pathFixture makes a guest init, a module tree with module b and the
// name of a cache directory for Path.
func pathFixture(t *testing.T) (initPath, cache, mods string) {
	t.Helper()
	dir := t.TempDir()
	writeModule(t, dir, "b.ko", "")
	initPath = filepath.Join(dir, "pe-init")
	if err := os.WriteFile(initPath, fakeInit, 0o755); err != nil {
		t.Fatal(err)
	}
	return initPath, filepath.Join(dir, "cache"), filepath.Join(dir, "kernel")
}

func TestPath(t *testing.T) {
	initPath, cache, mods := pathFixture(t)
	p1, err := Path(cache, "6.1.0-test", initPath, mods, []string{"b"})
	if err != nil {
		t.Fatal(err)
	}
	st1, err := os.Stat(p1)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := Path(cache, "6.1.0-test", initPath, mods, []string{"b"})
	if err != nil || p2 != p1 {
		t.Fatalf("second call: %s, %v; want %s", p2, err, p1)
	}
	if st2, _ := os.Stat(p2); !os.SameFile(st1, st2) {
		t.Error("a cached initramfs was rebuilt")
	}
	for name, change := range map[string]func() (string, error){
		"kernel":  func() (string, error) { return Path(cache, "6.1.0-other", initPath, mods, []string{"b"}) },
		"modules": func() (string, error) { return Path(cache, "6.1.0-test", initPath, mods, []string{}) },
		"init": func() (string, error) {
			os.WriteFile(initPath, append(fakeInit, '!'), 0o755)
			defer os.WriteFile(initPath, fakeInit, 0o755)
			return Path(cache, "6.1.0-test", initPath, mods, []string{"b"})
		},
	} {
		p, err := change()
		if err != nil {
			t.Fatal(err)
		}
		if p == p1 {
			t.Errorf("a different %s gives the same cache entry", name)
		}
	}
}

// TestRealKernelModules resolves DefaultModules against the kernel
// scripts/get-kernel.sh installs, when it is there.
// realModulesTree is the module tree of the kernel pe installed
// (PE_KERNEL or the default data dir); it skips the test without one.
func realModulesTree(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("PE_KERNEL")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".local/share/pe/kernel")
	}
	tree := filepath.Join(dir, "modules")
	if _, err := os.Stat(tree); err != nil {
		t.Skipf("no kernel modules in %s (run scripts/get-kernel.sh)", dir)
	}
	return tree
}

func TestRealKernelModules(t *testing.T) {
	mods, err := resolveModules(realModulesTree(t), DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range mods {
		pos[m.name] = i
	}
	for _, m := range mods {
		for _, d := range m.depends {
			if p, ok := pos[d]; ok && p > pos[m.name] {
				t.Errorf("%s loads before its dependency %s", m.name, d)
			}
		}
	}
	for _, want := range DefaultModules {
		if _, ok := pos[want]; !ok {
			t.Errorf("%s missing from %v", want, pos)
		}
	}
}

// Building an entry removes the ones unused for two weeks and abandoned
// temporary files; using an entry keeps it.
func TestPathPrunes(t *testing.T) {
	initPath, cache, mods := pathFixture(t)
	used, err := Path(cache, "6.1.0-used", initPath, mods, []string{"b"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	old := now.Add(-15 * 24 * time.Hour)
	files := map[string]time.Time{
		"initramfs-0123456789abcdef0123456789abcdef.cpio": old,                      // another build's, unused: goes
		"initramfs-fedcba9876543210fedcba9876543210.cpio": now.Add(-24 * time.Hour), // used yesterday: stays
		".initramfs-123.tmp":                              now.Add(-2 * time.Hour),  // abandoned: goes
		".initramfs-456.tmp":                              now,                      // a build under way: stays
		"notes.txt":                                       old,                      // not ours: stays
	}
	for name, mtime := range files {
		p := filepath.Join(cache, name)
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	// The entry in use is old too, but touched when used.
	if err := os.Chtimes(used, old, old); err != nil {
		t.Fatal(err)
	}
	if p, err := Path(cache, "6.1.0-used", initPath, mods, []string{"b"}); err != nil || p != used {
		t.Fatalf("Path = %s, %v; want the cached %s", p, err, used)
	}
	fresh, err := Path(cache, "6.1.0-new", initPath, mods, []string{"b"})
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := []string{
		".initramfs-456.tmp", filepath.Base(fresh), filepath.Base(used),
		"initramfs-fedcba9876543210fedcba9876543210.cpio", "notes.txt",
	}
	sort.Strings(want)
	if diff := cmp.Diff(want, left); diff != "" {
		t.Errorf("cache after a build (-want +got):\n%s", diff)
	}
}

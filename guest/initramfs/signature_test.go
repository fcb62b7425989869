package initramfs

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// signed appends a module signature trailer to content: the signature,
// struct module_signature (sig_len last, big-endian) and the magic.
func signed(content []byte, sig []byte, sigLen uint32) []byte {
	var b bytes.Buffer
	b.Write(content)
	b.Write(sig)
	info := make([]byte, 12)
	info[2] = 2 // PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], sigLen)
	b.Write(info)
	b.WriteString(moduleSigMagic)
	return b.Bytes()
}

func TestStripModuleSignature(t *testing.T) {
	content := []byte("\x7fELF module body")
	sig := bytes.Repeat([]byte{0xA5}, 40)
	for _, tc := range []struct {
		name string
		in   []byte
		want []byte
	}{
		{"signed", signed(content, sig, uint32(len(sig))), content},
		{"unsigned", content, content},
		{"signature longer than the file", signed(content, sig, 1<<20), nil},
		{"signature as long as the file", signed(nil, sig, uint32(len(sig))), nil},
		{"magic alone", []byte(moduleSigMagic), nil},
		{"empty", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.want
			if want == nil {
				want = tc.in // left as it is
			}
			if got := stripModuleSignature(tc.in); !bytes.Equal(got, want) {
				t.Errorf("stripModuleSignature = %q, want %q", got, want)
			}
		})
	}
}

func FuzzStripModuleSignature(f *testing.F) {
	f.Add(signed([]byte("\x7fELF body"), []byte("sig"), 3))
	f.Add([]byte("\x7fELF unsigned"))
	f.Add([]byte(moduleSigMagic))
	f.Fuzz(func(t *testing.T, in []byte) {
		out := stripModuleSignature(in)
		if !bytes.HasPrefix(in, out) {
			t.Fatalf("output is not a prefix of the input")
		}
		if len(out) != len(in) && (!bytes.HasSuffix(in, []byte(moduleSigMagic)) || len(out) == 0) {
			t.Fatalf("cut %d bytes of an input without a whole trailer", len(in)-len(out))
		}
	})
}

func TestUnsignedModulesLoad(t *testing.T) {
	for _, tc := range []struct {
		name   string
		config string // "" for no config file
		want   bool
	}{
		{"Debian's cloud kernel", "CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\nCONFIG_LOCK_DOWN_KERNEL_FORCE_NONE=y\n", true},
		{"signatures enforced", "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n", false},
		{"lockdown forced", "# CONFIG_MODULE_SIG_FORCE is not set\nCONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y\n", false},
		{"no signing at all", "# CONFIG_MODULE_SIG is not set\n", true},
		{"says nothing", "CONFIG_EROFS_FS=m\n", false},
		{"no config", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tree := filepath.Join(dir, "modules")
			if err := os.MkdirAll(tree, 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.config != "" {
				if err := os.WriteFile(filepath.Join(dir, "config"), []byte(tc.config), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := unsignedModulesLoad(tree); got != tc.want {
				t.Errorf("unsignedModulesLoad = %v, want %v", got, tc.want)
			}
		})
	}
	if unsignedModulesLoad("") {
		t.Error("no module tree: want false")
	}
}

// Build drops the signatures only where the kernel's config allows it.
func TestBuildModuleSignatures(t *testing.T) {
	for _, tc := range []struct {
		config   string
		stripped bool
	}{
		{"# CONFIG_MODULE_SIG_FORCE is not set\n", true},
		{"CONFIG_MODULE_SIG_FORCE=y\n", false},
	} {
		dir := t.TempDir()
		tree := filepath.Join(dir, "kernel")
		plain := fakeModule(t, "a", "")
		p := filepath.Join(tree, "drivers", "a.ko")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		withSig := signed(plain, []byte("signature"), 9)
		if err := os.WriteFile(p, withSig, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "config"), []byte(tc.config), 0o644); err != nil {
			t.Fatal(err)
		}
		initPath := filepath.Join(dir, "pe-init")
		if err := os.WriteFile(initPath, fakeInit, 0o755); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "initramfs.cpio")
		if err := Build(out, initPath, tree, []string{"a"}); err != nil {
			t.Fatal(err)
		}
		want := withSig
		if tc.stripped {
			want = plain
		}
		if got := recordContent(t, readCPIO(t, out)["lib/modules/a.ko"]); got != string(want) {
			t.Errorf("config %q: module in the initramfs is %d bytes, want %d", strings.TrimSpace(tc.config), len(got), len(want))
		}
	}
}

// The real kernel's modules: signed, and whole ELF files once stripped.
func TestRealKernelModuleSignatures(t *testing.T) {
	mods, err := resolveModules(realModulesTree(t), MMIOModules)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if !bytes.HasSuffix(m.content, []byte(moduleSigMagic)) {
			t.Logf("%s: not signed", m.name)
			continue
		}
		s := stripModuleSignature(m.content)
		if len(s) == len(m.content) {
			t.Errorf("%s: signed, but its signature was not stripped", m.name)
			continue
		}
		if _, err := elf.NewFile(bytes.NewReader(s)); err != nil {
			t.Errorf("%s: stripped module is no ELF file: %v", m.name, err)
			continue
		}
		// A module's section header table ends the ELF file: the cut
		// must fall exactly there.
		shoff := binary.LittleEndian.Uint64(s[0x28:])
		shnum := uint64(binary.LittleEndian.Uint16(s[0x3c:]))
		if end := shoff + 64*shnum; end != uint64(len(s)) {
			t.Errorf("%s: stripped to %d bytes, the ELF file ends at %d", m.name, len(s), end)
		}
	}
}

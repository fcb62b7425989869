package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/pe-project/pe/internal/atomicfile"
)

// CachedVersion returns the version of the VMM executable binary: from
// cacheDir when a run of version (binary --version, tens of milliseconds
// paid on every snapshot run) already answered for this very file (same
// path, inode, size and modification time), else by calling version and
// keeping its answer. An empty cacheDir or binary disables the cache.
func CachedVersion(ctx context.Context, cacheDir, binary string, version func(context.Context) (string, error)) (string, error) {
	path := versionCachePath(cacheDir, binary)
	if path != "" {
		if b, err := os.ReadFile(path); err == nil {
			if v := strings.TrimSpace(string(b)); v != "" && !strings.ContainsAny(v, "\n\x00") {
				return v, nil
			}
		}
	}
	v, err := version(ctx)
	if err != nil || path == "" {
		return v, err
	}
	storeAtomic(path, []byte(v+"\n"))
	return v, nil
}

// versionCachePath names the cache entry for binary as it is now; "" when
// there is no cache or binary cannot be described.
func versionCachePath(cacheDir, binary string) string {
	if cacheDir == "" || binary == "" {
		return ""
	}
	fi, err := os.Stat(binary)
	if err != nil {
		return ""
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	abs, err := filepath.Abs(binary)
	if err != nil {
		return ""
	}
	h := sha256.New()
	fmt.Fprintf(h, "pe-vmm-version-1\x00%s\x00%d\x00%d\x00%d", abs, ino, fi.Size(), fi.ModTime().UnixNano())
	return filepath.Join(cacheDir, "vmm-version", hex.EncodeToString(h.Sum(nil))[:32])
}

// storeAtomic writes b to path through a temporary file and a rename, so
// readers see all of it or nothing; failures only cost a later recompute.
func storeAtomic(path string, b []byte) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return
	}
	atomicfile.Write(path, b, atomicfile.Options{Pattern: ".tmp-*"})
}

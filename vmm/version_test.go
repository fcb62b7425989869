package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCachedVersion(t *testing.T) {
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	bin := filepath.Join(dir, "qemu")
	if err := os.WriteFile(bin, []byte("v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	calls := 0
	answer, fail := "7.2.22", error(nil)
	version := func(context.Context) (string, error) {
		calls++
		return answer, fail
	}
	get := func(cacheDir string) string {
		t.Helper()
		v, err := CachedVersion(t.Context(), cacheDir, bin, version)
		if err != nil {
			t.Fatalf("CachedVersion: %v", err)
		}
		return v
	}

	if v := get(cache); v != "7.2.22" || calls != 1 {
		t.Fatalf("first call: %q after %d runs, want 7.2.22 after 1", v, calls)
	}
	if v := get(cache); v != "7.2.22" || calls != 1 {
		t.Fatalf("second call: %q after %d runs, want the cached 7.2.22 and no new run", v, calls)
	}

	// An upgraded binary (new contents and time) is asked again.
	answer = "8.0.0"
	if err := os.WriteFile(bin, []byte("v2 longer"), 0o755); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(bin, later, later); err != nil {
		t.Fatal(err)
	}
	if v := get(cache); v != "8.0.0" || calls != 2 {
		t.Fatalf("after an upgrade: %q after %d runs, want 8.0.0 after 2", v, calls)
	}

	// A damaged entry is recomputed, not believed.
	entry := versionCachePath(cache, bin)
	if err := os.WriteFile(entry, []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if v := get(cache); v != "8.0.0" || calls != 3 {
		t.Fatalf("after damage: %q after %d runs, want 8.0.0 after 3", v, calls)
	}

	// No cache directory: every call runs the binary.
	get("")
	get("")
	if calls != 5 {
		t.Fatalf("without a cache: %d runs, want 5", calls)
	}

	// Failures are returned and not kept.
	fail = errors.New("no such binary")
	os.Remove(entry)
	if _, err := CachedVersion(t.Context(), cache, bin, version); err == nil {
		t.Fatal("a failing version run gave no error")
	}
	if _, err := os.Stat(entry); !os.IsNotExist(err) {
		t.Fatalf("a failure was cached: %v", err)
	}
}

// Package guesttest helps tests that build guest file systems: it sits in
// the guest layer, so the guest init's tests and the engine's test fixture
// (engine/enginetest) can both use it.
package guesttest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// InstallBusybox copies the static busybox binary to bin/busybox and links
// each of its applets to it in bin (which must exist).
func InstallBusybox(bin, busybox string) error {
	b, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(bin, "busybox"), b, 0o755); err != nil {
		return err
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return fmt.Errorf("%s --list: %w", busybox, err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(bin, applet)); err != nil {
			return err
		}
	}
	return nil
}

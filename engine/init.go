package engine

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pe-project/pe/vmm"
)

// InitBinaryName is the file name of pe's guest init.
const InitBinaryName = "pe-init"

// InitNotFoundError reports that pe's guest init binary is nowhere pe
// looked.
type InitNotFoundError struct {
	Looked []string
}

func (e *InitNotFoundError) Error() string {
	return fmt.Sprintf("guest init %s not found (looked in %s): run `make build`, which puts it next to bin/pe, or build it with `CGO_ENABLED=0 go build -o bin/pe-init ./guest/cmd/pe-init`, or name it with PE_INIT",
		InitBinaryName, strings.Join(e.Looked, ", "))
}

// FindInit returns the guest init binary: override when set, else
// $PE_INIT, else pe-init next to the running executable, else in
// vmm.DataDir(), else in PATH.
func FindInit(override string) (string, error) {
	if override == "" {
		override = os.Getenv("PE_INIT")
	}
	if override != "" {
		if _, err := os.Stat(override); err != nil {
			return "", fmt.Errorf("guest init: %w", err)
		}
		return filepath.Abs(override)
	}
	var looked []string
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			looked = append(looked, filepath.Join(filepath.Dir(exe), InitBinaryName))
		}
	}
	looked = append(looked, filepath.Join(vmm.DataDir(), InitBinaryName))
	for _, p := range looked {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	if p, err := exec.LookPath(InitBinaryName); err == nil {
		return filepath.Abs(p)
	}
	return "", &InitNotFoundError{Looked: append(looked, "PATH")}
}

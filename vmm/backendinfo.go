package vmm

import "context"

// BackendInfo is a backend's description of itself, for the code that
// finds, chooses and reports VMMs (engine.Choose, engine.Inspect, pe
// doctor): each backend package has one (qemu.Info, cloudhypervisor.Info)
// and package vmm/backends lists them, so that nothing above package vmm
// names a concrete backend.
type BackendInfo struct {
	// Name is the backend's name as the --vmm flag spells it, the one its
	// Backend.Name returns.
	Name string
	// Binary is the executable looked up in PATH by default.
	Binary string
	// Find returns the path of the executable: binary when set, else
	// Binary from PATH; its error says how to install it.
	Find func(binary string) (string, error)
	// Version runs the executable at path and returns the VMM's version.
	Version func(ctx context.Context, path string) (string, error)
	// New returns the backend using the executable at path.
	New func(path string) Backend
	// Install is the command (or step) that installs the VMM.
	Install string
	// Optional says what a host without the VMM misses ("faster VMs where
	// KVM works"); "" means pe run needs it.
	Optional string
	// NeedsKVM, when set, says the VMM runs guests only under KVM: it is
	// the error a run asking it for TCG gets. --vmm auto prefers such a
	// VMM where KVM works (it is made for KVM and starts VMs faster), and
	// falls back on one that can emulate the CPU.
	NeedsKVM error
	// GuestModules are the kernel modules the guest needs for the
	// machine's devices: its virtio transport and disk driver. The guest's
	// own (the file systems of the container root) come on top.
	GuestModules []string
	// Facts, when set, returns what else pe doctor shows about the VMM
	// installed at path (QEMU: its confinement).
	Facts func(path string) []Fact
}

// Fact is one thing about the host that pe depends on, as it was found:
// whether it is as pe needs it, in a sentence, and what fixes it.
type Fact struct {
	// Name names the thing: "qemu", "guest kernel", "/dev/kvm", ...
	Name string `json:"name"`
	// OK says it is as pe needs it.
	OK bool `json:"ok"`
	// Required says pe run cannot work without it.
	Required bool `json:"required"`
	// Detail says what was found, or what is wrong.
	Detail string `json:"detail"`
	// Fix is the command (or step) that fixes it.
	Fix string `json:"fix,omitempty"`
	// Err is the error behind a fact that is not OK, for callers that
	// stop on it (engine.New).
	Err error `json:"-"`
}

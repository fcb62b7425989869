// Package backends is the one place that lists pe's VMM backends. The
// engine (choosing a VMM, describing the host for pe doctor) knows them
// only through this list of vmm.BackendInfo, so adding a backend means a
// package under vmm and a line here.
package backends

import (
	"github.com/pe-project/pe/vmm"
	"github.com/pe-project/pe/vmm/cloudhypervisor"
	"github.com/pe-project/pe/vmm/qemu"
)

// All returns pe's backends in the order pe doctor shows them and the KVM
// probe tries them: QEMU, which every host needs, then cloud-hypervisor.
func All() []vmm.BackendInfo {
	return []vmm.BackendInfo{qemu.Info(), cloudhypervisor.Info()}
}

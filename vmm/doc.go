// Package vmm starts, watches and kills the micro-VMs pe runs programs in.
//
// A [Backend] turns a [Config] (kernel, initramfs, command line, disks,
// vCPUs, memory, acceleration) into a running [Machine]: a VMM process pe
// can wait for, kill, and whose guest console it keeps (the last 64 KiB).
// The backends live in subpackages: vmm/qemu (QEMU's microvm machine, KVM
// or TCG) and vmm/cloudhypervisor (cloud-hypervisor, KVM only). Each
// describes itself with a [BackendInfo] (name, discovery, version,
// constructor, the guest modules its machine needs), and vmm/backends lists
// them: the one place above a backend's own package that names it.
//
// A backend starts a machine by running a [Steps] chain, a named, editable
// list of [Step]s in the manner of firecracker-go-sdk's handler lists:
// validate the config, prepare the work directory, build the VMM's
// arguments, start the process. Tests and callers may replace or add steps
// by name. Whatever step fails, everything the earlier steps made (files,
// processes) is undone.
//
// A backend that is also a [Snapshotter] saves a booted VM into a directory
// and restores copies of it: the guest says it is ready to be saved with a
// line on its console and is woken, once restored, by a byte on the same
// console. QEMU keeps the guest RAM in a file (shared while it is saved,
// mapped copy-on-write by restored VMs) and migrates the device state;
// cloud-hypervisor uses its vm.snapshot and --restore.
//
// The package also finds the guest kernel ([FindKernel]) and decides
// whether KVM really works ([Prober]): on some hosts /dev/kvm exists but
// guests hang under it (a nested paravirtual hypervisor such as kvm-pvm),
// so the only reliable test is to boot the kernel under KVM with a short
// deadline, and that verdict is cached per kernel, VMM and host boot.
package vmm

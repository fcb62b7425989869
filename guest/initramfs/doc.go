// Package initramfs builds the guest's initramfs on the host: a newc cpio
// archive holding pe's static guest init as /init and the kernel modules
// it needs, resolved in dependency order from each module's .modinfo.
//
// It lives apart from package guest, which the guest init links, so that
// the init carries none of the builder's decompressors, cpio writer or ELF
// reader: every package the init links costs start-up time in the VM,
// twice per run (PID 1 and the sandbox's stage-2 child).
package initramfs

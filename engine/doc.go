// Package engine runs one program from an OCI image in a throw-away
// micro-VM, end to end. The CLI (pe run) and the server both call it.
//
// A run goes: resolve the image (an ImageSource: pe's image cache, or an
// EROFS file) → merge the image config with the request, the way docker run
// does (MergeConfig: entrypoint and cmd, environment with a default PATH,
// working directory, user names looked up in the image's /etc/passwd and
// /etc/group) → the initramfs for the kernel and guest init (built once,
// cached) → the I/O file (the request, stdin and input files) → boot the VM
// (package vmm; the backend and acceleration chosen once per Engine by
// Choose, which probes whether KVM really works) → wait, at most the time
// limit plus a grace period, then kill → read the guest's result and
// output files → remove every file the run made.
//
// Snapshots make the boot a one-off: CreateSnapshot boots a VM for an
// image until the guest init is ready for a request, and saves it into a
// directory with a manifest (image, kernel, guest init, pe build, VMM and
// its version, acceleration, memory); OpenSnapshot checks a snapshot against
// the engine (ErrSnapshotMismatch, ErrBadSnapshot), and a RunRequest with
// Snapshot set restores a copy of the VM instead of booting one, then runs
// exactly as a cold run does (same I/O file, limits, time-outs, clean-up).
// Each run's plan picks how its VM comes up (a boot, the boot snapshot, an
// image's snapshot); a restore that fails falls back to a boot in one place
// (see launch.go). A SnapshotPool keeps a server's per-preset snapshots.
//
// An Engine runs at most Options.MaxConcurrent VMs at once; other runs wait
// for a slot. A run holds its cached image (image.Lease) until its VM is
// gone, so no prune removes it meanwhile. A server resolves images with a
// Converter before its runs wait for a slot: pulls and conversions go a few
// at a time, within a deadline, and the cache is kept under a size. Each RunResult carries the program's exit status and output
// and the time each phase took, guest-side phases included.
package engine

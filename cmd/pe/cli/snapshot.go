package cli

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/guest"
)

// newSnapshotCmd returns "pe snapshot" and its subcommands.
func newSnapshotCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save a booted VM once, restore it for every run",
		Long: `A snapshot is a VM booted for an image until pe's guest is ready for a
program (kernel booted, modules loaded, image mounted), paused and saved to a
directory. pe run --snapshot DIR restores a copy of it instead of booting a VM:
every run gets its own copy (the saved RAM is mapped copy-on-write), its own
inputs and outputs, fresh random numbers and the current time.

A snapshot is tied to the pe build, the guest kernel, the VMM and its version,
the acceleration and the image file it was made with; pe refuses it elsewhere.
QEMU can save and restore VMs.`,
	}
	cmd.AddCommand(newSnapshotCreateCmd(a))
	return cmd
}

// snapshotCreateFlags are pe snapshot create's flags.
type snapshotCreateFlags struct {
	pullFlags
	vmFlags
	out    string
	memory memoryFlag
	cpus   cpusFlag
	force  bool
	asJSON bool
	debug  bool
	// chunkCache bounds the chunk cache of lazy s3:// images.
	chunkCache sizeFlag
}

// newSnapshotCreateCmd returns "pe snapshot create".
func newSnapshotCreateCmd(a *app) *cobra.Command {
	f := &snapshotCreateFlags{}
	cmd := &cobra.Command{
		Use:   "create IMAGE -o DIR",
		Short: "Boot a VM for IMAGE and save it to DIR",
		Long: `Boot a VM for IMAGE until the guest is ready for a program, pause it and
save it into DIR: manifest.json (what it was made from), mem (the guest's RAM,
a sparse file as big as --memory) and state (the device state). DIR is created
whole or not at all; an existing DIR is kept unless --force.

Runs from the snapshot have its --memory and --cpus.`,
		Example: `  pe snapshot create busybox -o ./busybox.snap
  pe run --snapshot ./busybox.snap echo hello`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runSnapshotCreate(cmd, a, f, args[0])
		},
	}
	fs := cmd.Flags()
	fs.StringVarP(&f.out, "output", "o", "", "the snapshot directory to create (required)")
	memoryVar(fs, &f.memory, "the VM's memory, for every run from the snapshot")
	cpusVar(fs, &f.cpus, "the VM's vCPUs, for every run from the snapshot")
	fs.BoolVar(&f.force, "force", false, "replace DIR if it exists")
	fs.BoolVar(&f.asJSON, "json", false, "print the manifest as JSON")
	fs.BoolVar(&f.debug, "debug", false, "show the guest console on standard error, and turn on the guest init's log in every run from the snapshot")
	chunkCacheVar(fs, &f.chunkCache)
	f.pullFlags.register(fs, true)
	f.vmFlags.register(cmd)
	return cmd
}

func runSnapshotCreate(cmd *cobra.Command, a *app, f *snapshotCreateFlags, ref string) error {
	if f.out == "" {
		return usageErrorf(cmd, "-o DIR is required")
	}
	popts, err := f.pullFlags.options(cmd, a)
	if err != nil {
		return err
	}
	cache, err := f.open()
	if err != nil {
		return err
	}
	e, err := f.vmFlags.newEngine(a, &engine.FileSource{Next: &engine.CacheSource{Cache: cache, Options: popts, ChunkCacheSize: f.chunkCache.Bytes()}}, f.cacheDir, guest.Limits{})
	if err != nil {
		return err
	}
	req := engine.SnapshotRequest{
		Image:     ref,
		Dir:       f.out,
		Force:     f.force,
		MemoryMiB: f.memory.MiB(),
		CPUs:      int(f.cpus),
		Debug:     f.debug,
	}
	if f.debug {
		req.Console = cmd.ErrOrStderr()
	}
	m, err := e.CreateSnapshot(cmd.Context(), req)
	cache.FlushChunkStore() // the chunks the boot fetched, for the runs
	if err != nil {
		return err
	}
	if f.asJSON {
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
		return err
	}
	_, err = fmt.Fprintf(cmd.OutOrStdout(), "snapshot of %s (%s) in %s: %s %s (%s), %d MiB, %d vCPU(s)\n",
		m.Image.Reference, m.Image.Digest, f.out, m.VMM, m.VMMVersion, m.Accel, m.MemoryMiB, m.CPUs)
	return err
}

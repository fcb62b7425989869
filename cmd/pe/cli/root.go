package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/internal/units"
)

// Version is pe's version, sent to registries as the user agent
// "pe/VERSION". Release builds set it with
// -ldflags "-X github.com/pe-project/pe/cmd/pe/cli.Version=...".
var Version = "dev"

// app is the state the commands share.
type app struct {
	// log writes to the command's standard error at the --log-level.
	log *slog.Logger
	// lookupEnv reads the environment (SOURCE_DATE_EPOCH).
	lookupEnv func(string) (string, bool)
	// runEngine makes an engine with opts and runs req (pe run); tests
	// replace it to see the request without booting a VM.
	runEngine func(ctx context.Context, opts engine.Options, req *engine.RunRequest) (*engine.RunResult, error)
}

// runEngine is app.runEngine's default: a new engine, one run.
func runEngine(ctx context.Context, opts engine.Options, req *engine.RunRequest) (*engine.RunResult, error) {
	e, err := engine.New(opts)
	if err != nil {
		return nil, err
	}
	return e.Run(ctx, req)
}

// New returns pe's root command with all its subcommands. It prints nothing
// on errors: ExecuteContext returns them for the caller to report.
func New() *cobra.Command {
	return newRoot(&app{lookupEnv: os.LookupEnv, runEngine: runEngine})
}

// newRoot returns the root command sharing a.
func newRoot(a *app) *cobra.Command {
	a.log = slog.New(slog.DiscardHandler)
	var logLevel string
	root := &cobra.Command{
		Use:   "pe",
		Short: "Run programs from OCI images in micro-VMs",
		Long: `pe runs programs from OCI container images inside throw-away micro-VMs.

pe run runs a program from an image in a new VM (QEMU, with KVM where it works
and TCG elsewhere, or cloud-hypervisor); pe doctor says what it needs; pe
snapshot create saves a booted VM that pe run --snapshot restores, faster than
a boot. The image
tools pull OCI images into a local cache as the read-only EROFS root file
systems pe boots, import tarballs (such as Compiler Explorer's compiler builds)
as images, build EROFS images from directories, tar files and images, and look
inside them. pe gist fetches and creates gists holding a pe.toml, pe's
shareable examples, which pe run --gist runs.

Settings come from flags, then PE_* environment variables (PE_CACHE_DIR,
PE_PLATFORM, PE_INSECURE, PE_MAX_IMAGE_SIZE, PE_MAX_IMAGE_UNPACKED,
PE_MAX_IMAGE_ENTRIES, PE_MAX_IMAGE_DEPTH, PE_IMAGE_COMPRESS, PE_LOG_LEVEL,
PE_VMM, PE_ACCEL, PE_KERNEL, PE_GITHUB_API), then ~/.config/pe/config.toml
(keys: cache-dir, platform, insecure, max-image-size, max-image-unpacked,
max-image-entries, max-image-depth, image-compress,
log-level, vmm, accel, kernel, github-api), then defaults.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if err := checkEmptyCompressFlags(cmd); err != nil {
				return err
			}
			if err := applyConfig(cmd); err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return usageErrorf(cmd, "--log-level %q: want debug, info, warn or error", logLevel)
			}
			a.log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "warn", "log messages from this level up to standard error: debug, info, warn or error")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		// A typed flag's message names the flag and the value already.
		var fe *flagValueError
		if errors.As(err, &fe) {
			err = fe
		}
		return &usageError{cmd: cmd.CommandPath(), err: err}
	})
	root.AddCommand(newRunCmd(a), newDoctorCmd(a), newImageCmd(a), newGistCmd(a), newSnapshotCmd(a), newServeCmd(a))
	return root
}

// usageError is a mistake in how pe was called. Its message points to the
// command's help.
type usageError struct {
	cmd string
	err error
}

func (e *usageError) Error() string {
	return fmt.Sprintf("%v (see '%s --help')", e.err, e.cmd)
}

func (e *usageError) Unwrap() error { return e.err }

// usageErrorf returns a usageError for cmd.
func usageErrorf(cmd *cobra.Command, format string, args ...any) error {
	return &usageError{cmd: cmd.CommandPath(), err: fmt.Errorf(format, args...)}
}

// usageArgs turns the errors of a cobra argument validator into usage
// errors.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			var ue *usageError
			if errors.As(err, &ue) {
				return err
			}
			return &usageError{cmd: cmd.CommandPath(), err: err}
		}
		return nil
	}
}

// isTerminal reports whether f is an *os.File open on a terminal.
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(file.Fd()), unix.TCGETS)
	return err == nil
}

// humanBytes formats a size with binary units: 512 B, 1.5 KiB, 12.0 MiB.
func humanBytes(n int64) string { return units.HumanSize(n) }

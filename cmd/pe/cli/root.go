package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// app is the state the commands share.
type app struct {
	// log writes to the command's standard error at the --log-level.
	log *slog.Logger
	// lookupEnv reads the environment (SOURCE_DATE_EPOCH).
	lookupEnv func(string) (string, bool)
}

// New returns pe's root command with all its subcommands. It prints nothing
// on errors: ExecuteContext returns them for the caller to report.
func New() *cobra.Command {
	a := &app{log: slog.New(slog.DiscardHandler), lookupEnv: os.LookupEnv}
	var logLevel string
	root := &cobra.Command{
		Use:   "pe",
		Short: "Run programs from OCI images in micro-VMs",
		Long: `pe runs programs from OCI container images inside throw-away micro-VMs.

This version has the image tools: building the read-only EROFS root file system
images pe boots, from a directory or a tar file, and looking inside them.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
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
		return &usageError{cmd: cmd.CommandPath(), err: err}
	})
	root.AddCommand(newImageCmd(a))
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
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n)/1024, 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}

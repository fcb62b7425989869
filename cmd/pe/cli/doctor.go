package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/engine"
)

// doctorReport is pe doctor's whole report: the engine's description of
// the host, printed as it is.
type doctorReport = engine.Host

// newDoctorCmd returns "pe doctor".
func newDoctorCmd(a *app) *cobra.Command {
	var (
		vf       vmFlags
		cacheDir string
		asJSON   bool
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what pe run needs: VMM, KVM, guest kernel, guest init",
		Long: `Check what pe run needs and say what to do about anything missing: QEMU and
cloud-hypervisor (with their versions), /dev/kvm and whether guests really
boot under it (a probe boot, cached per kernel, VMM and host boot), the guest
kernel, the guest init and the initramfs built from them, and the tools the
tests use (erofs-utils, loop mounts). Then which VMM and acceleration pe run
would use, and why.

Exits with status 1 when pe run cannot work.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			rep := engine.Inspect(cmd.Context(), engine.InspectOptions{
				VMM: vf.vmm, Accel: vf.accel, Kernel: vf.kernel, InitBinary: vf.init,
				CacheDir: engineCacheDir(cacheDir), Log: a.log,
			})
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else if err := printDoctor(out, rep); err != nil {
				return err
			}
			if !rep.Ready {
				return &ExitStatus{Code: 1}
			}
			return nil
		},
	}
	vf.register(cmd)
	cmd.Flags().StringVar(&cacheDir, "cache-dir", "", "the cache directory (default $XDG_CACHE_HOME/pe or ~/.cache/pe)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as one JSON object")
	return cmd
}

// printDoctor prints the report for people.
func printDoctor(w io.Writer, rep *doctorReport) error {
	width := 0
	for _, c := range rep.Checks {
		width = max(width, len(c.Name))
	}
	var b strings.Builder
	for _, c := range rep.Checks {
		mark := "ok"
		switch {
		case !c.OK && c.Required:
			mark = "!!"
		case !c.OK:
			mark = "--"
		}
		fmt.Fprintf(&b, "[%s] %-*s  %s\n", mark, width, c.Name, c.Detail)
		if !c.OK && c.Fix != "" {
			fmt.Fprintf(&b, "     %-*s  fix: %s\n", width, "", c.Fix)
		}
	}
	b.WriteString("\n")
	if rep.VMM != "" {
		fmt.Fprintf(&b, "pe run will use %s with %s: %s.\n", rep.VMM, rep.Accel, rep.Reason)
	} else {
		fmt.Fprintf(&b, "pe run has no VMM: %s.\n", rep.Reason)
	}
	if rep.Ready {
		b.WriteString("pe run is ready.\n")
	} else {
		b.WriteString("pe run cannot work yet: fix the [!!] lines.\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

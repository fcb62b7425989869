package cli

import (
	"fmt"
	"io"

	"github.com/pe-project/pe/erofs"
	"github.com/spf13/cobra"
)

// newCatCmd returns "pe image cat".
func newCatCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "cat IMAGE.erofs PATH",
		Short: "Write a file from an EROFS image to standard output",
		Long: `Write the contents of the regular file PATH inside an EROFS image to standard
output, read with pe's own reader. PATH may start with "/".`,
		Example: `  pe image cat rootfs.erofs /etc/os-release`,
		Args:    usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := openImage(args[0])
			if err != nil {
				return err
			}
			defer img.Close()
			p := imagePath(args[1])
			f, err := img.Open(p)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if !fi.Mode().IsRegular() {
				return fmt.Errorf("%s: %s is not a regular file (%v)", args[0], args[1], erofs.TypeName(fi.Mode()))
			}
			a.log.Debug("copying file", "image", args[0], "path", p, "bytes", fi.Size())
			if _, err := io.Copy(cmd.OutOrStdout(), f); err != nil {
				return fmt.Errorf("%s: reading %s: %w", args[0], args[1], err)
			}
			return nil
		},
	}
}

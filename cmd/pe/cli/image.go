package cli

import (
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/erofs"
)

// newImageCmd returns "pe image", the group of image commands.
func newImageCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Pull, import, build and inspect root file system images",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf(cmd, "unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(newPullCmd(a), newLsCmd(a), newRmCmd(a), newPruneCmd(a), newImportCmd(a),
		newBuildEROFSCmd(a), newFilesCmd(a), newCatCmd(a), newPushCmd(a))
	return cmd
}

// imageFile is an EROFS image file open for reading.
type imageFile struct {
	*erofs.FS
	file *os.File
}

// openImage opens the EROFS image file name with pe's reader.
func openImage(name string) (*imageFile, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	fsys, err := erofs.Open(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &imageFile{FS: fsys, file: f}, nil
}

// Close closes the image file.
func (img *imageFile) Close() error { return img.file.Close() }

// imagePath turns a path given on the command line ("/etc/passwd",
// "etc/passwd", "/") into an io/fs path inside an image ("etc/passwd", ".").
func imagePath(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	if p == "" {
		return "."
	}
	return p
}

package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/image"
)

// newLsCmd returns "pe image ls".
func newLsCmd(a *app) *cobra.Command {
	var (
		f      cacheFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the images in the cache",
		Long: `List the images in the cache: one line per reference recorded for an image
(an image pulled under two tags shows twice), and <none> for an image no
reference points to any more (pe image prune removes those). SIZE is the
EROFS image's. An s3:// image that runs read lazily (without pe image pull)
is listed by its tag or pinned digest with SIZE "CACHED of SIZE (lazy)": how
much of it the chunk cache holds.

--json prints one JSON object per image and reference: reference (canonical),
digest, platform, size, cached_bytes, created, last_used, local (made by
pe image import), lazy and erofs (the image file's path; "" when lazy).`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.open()
			if err != nil {
				return err
			}
			list, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				for _, img := range list {
					err := enc.Encode(struct {
						Reference   string    `json:"reference"`
						Digest      string    `json:"digest"`
						Platform    string    `json:"platform"`
						Size        int64     `json:"size"`
						CachedBytes int64     `json:"cached_bytes"`
						Created     time.Time `json:"created"`
						LastUsed    time.Time `json:"last_used"`
						Local       bool      `json:"local"`
						Lazy        bool      `json:"lazy"`
						EROFS       string    `json:"erofs"`
					}{img.Reference, img.Digest.String(), img.Platform, img.Size, cachedBytes(img), img.Created, img.LastUsed, img.Local, img.Lazy, img.EROFSPath})
					if err != nil {
						return err
					}
				}
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, "REFERENCE\tPLATFORM\tDIGEST\tSIZE\tLAST USED")
			now := time.Now()
			for _, img := range list {
				ref := image.FamiliarName(img.Reference)
				if ref == "" {
					ref = "<none>"
				}
				size := humanBytes(img.Size)
				if img.Lazy {
					size = fmt.Sprintf("%s of %s (lazy)", humanBytes(img.CachedBytes), size)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ref, img.Platform, img.Digest.Hex[:12], size, ago(now, img.LastUsed))
			}
			return tw.Flush()
		},
	}
	f.register(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

// cachedBytes is how much of img is on local disk: all of it, unless a
// lazy image's chunks are partly cached.
func cachedBytes(img image.CachedImage) int64 {
	if img.Lazy {
		return img.CachedBytes
	}
	return img.Size
}

// ago says how long before now t was, as docker does: "3 minutes ago".
func ago(now, t time.Time) string {
	d := now.Sub(t)
	unit := func(n int, what string) string {
		if n == 1 {
			return fmt.Sprintf("1 %s ago", what)
		}
		return fmt.Sprintf("%d %ss ago", n, what)
	}
	switch {
	case t.IsZero():
		return "never"
	case d < time.Minute:
		return "less than a minute ago"
	case d < time.Hour:
		return unit(int(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return unit(int(d/time.Hour), "hour")
	}
	return unit(int(d/(24*time.Hour)), "day")
}

// imageID matches what pe image ls shows as DIGEST, or a full digest.
var imageID = regexp.MustCompile(`^(sha256:[0-9a-f]{64}|[0-9a-f]{4,64})$`)

// newRmCmd returns "pe image rm".
func newRmCmd(a *app) *cobra.Command {
	var f cacheFlags
	cmd := &cobra.Command{
		Use:     "rm IMAGE...",
		Aliases: []string{"remove", "rmi"},
		Short:   "Remove images from the cache",
		Long: `Remove each IMAGE's reference from the cache, and the image itself unless
another reference still points to it, like docker rmi. IMAGE is a reference as
given to pe image pull, or an image ID (the DIGEST column of pe image ls, or
sha256:...), which removes the image and all its references. Layer blobs no
remaining image needs are removed too.

An s3:// reference also removes what runs that read it lazily left: its tag
(or pinned digest) record and, once no record names the image, its index and
the cached chunks no other lazily read image lists. A run reading that image
at the same time fetches again the chunks it needs.`,
		Args: usageArgs(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.open()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var errs []error
			for _, arg := range args {
				rep, err := removeOne(cmd, c, arg)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				for _, r := range rep.Untagged {
					fmt.Fprintf(out, "Untagged: %s\n", image.FamiliarName(r))
				}
				for _, h := range rep.Deleted {
					fmt.Fprintf(out, "Deleted: %s\n", h)
				}
				if rep.Chunks > 0 {
					chunks := "chunks"
					if rep.Chunks == 1 {
						chunks = "chunk"
					}
					fmt.Fprintf(out, "Reclaimed space: %s (%d cached %s)\n", humanBytes(rep.Bytes), rep.Chunks, chunks)
				}
			}
			// One line, as main prints it after "pe: ".
			switch len(errs) {
			case 0:
				return nil
			case 1:
				return errs[0]
			}
			msgs := make([]string, len(errs))
			for i, err := range errs {
				msgs[i] = err.Error()
			}
			return fmt.Errorf("%d images not removed: %s", len(errs), strings.Join(msgs, "; "))
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// removeOne removes an image by ID or by reference.
func removeOne(cmd *cobra.Command, c *image.Cache, arg string) (*image.RemoveReport, error) {
	if imageID.MatchString(arg) {
		rep, err := c.RemoveID(cmd.Context(), arg)
		if !errors.Is(err, image.ErrNotFound) {
			return rep, err
		}
	}
	ref, err := image.ParseReference(arg)
	if err != nil {
		return nil, err
	}
	return c.Remove(cmd.Context(), ref)
}

// newPruneCmd returns "pe image prune".
func newPruneCmd(a *app) *cobra.Command {
	var (
		f         cacheFlags
		maxSize   sizeFlag
		olderThan time.Duration
		all       bool
	)
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove unused images from the cache",
		Long: `Remove the images no reference points to any more (a tag that moved on
leaves its old image behind), and what interrupted pe processes left. With
--max-size, also remove the least recently used images until the cache (images
and their layer blobs) fits in SIZE; with --older-than, images not used for
that long; with --all, every image. Layer blobs no remaining image needs go
too. The s3:// images runs read lazily go likewise (once no record names
them, not used for --older-than, or with --all), with the cached chunks no
remaining one lists; --max-size does not count them: the chunk cache has its
own bound, pe run's --chunk-cache-size.`,
		Example: `  pe image prune
  pe image prune --max-size 20GiB
  pe image prune --older-than 720h`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := image.PruneOptions{OlderThan: olderThan, All: all}
			opts.MaxSize = maxSize.Bytes()
			if olderThan < 0 {
				return usageErrorf(cmd, "--older-than %s is negative", olderThan)
			}
			c, err := f.open()
			if err != nil {
				return err
			}
			rep, err := c.Prune(cmd.Context(), opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, h := range rep.Deleted {
				fmt.Fprintf(out, "Deleted: %s\n", h)
			}
			for _, h := range rep.InUse {
				fmt.Fprintf(out, "Kept (in use by a run): %s\n", h)
			}
			fmt.Fprintf(out, "Total reclaimed space: %s\n", humanBytes(rep.Bytes))
			return nil
		},
	}
	f.register(cmd.Flags())
	sizeVar(cmd.Flags(), &maxSize, "max-size", "", sizeSpec{min: 1, want: "a size such as 20GiB", small: "use --all to remove every image", allowEmpty: true}, "remove least recently used images until the cache takes at most this, such as 20GiB")
	cmd.Flags().DurationVar(&olderThan, "older-than", 0, "remove images not used for this long, such as 720h")
	cmd.Flags().BoolVarP(&all, "all", "a", false, "remove every image")
	return cmd
}

// newImportCmd returns "pe image import".
func newImportCmd(a *app) *cobra.Command {
	var (
		f   pullFlags
		imp importFlags
		tag string
	)
	cmd := &cobra.Command{
		Use:   "import --tar FILE|URL --tag NAME [--base IMAGE] [--strip-components N] [--prefix DIR]",
		Short: "Import a tarball into the cache as an image",
		Long: `Lay the tarball FILE (plain, gzip, zstd or xz), with --strip-components leading
path components dropped and re-rooted under --prefix, over the flattened
layers of the base image, and store the result in the cache under NAME, in one
streaming pass. This is how Compiler Explorer's compiler builds become images.

The tarball may be an http:// or https:// URL: it is read as it downloads,
never stored whole, with the proxy environment variables honoured. A dropped or
stalled connection is resumed where it stopped, a few times with a growing
wait, when the server supports Range requests and gives an ETag or
Last-Modified; a file that changed on the server meanwhile is an error. The
tarball counts against --max-image-size with the base's layers. Importing the
same URL again, when the server gives the same strong ETag, finds the image in
the cache without downloading it.

NAME (such as clang:20 or local/clang:20) is a local image: pe run and
pe image build-erofs take it from the cache and never look it up in a
registry. The image config is the base's (or a minimal linux one), with
PREFIX/bin put first in PATH when PATH does not have it already. In the
tarball, a .wh. name is an ordinary file, not a whiteout. Prints the image
digest; importing the same tarball over the same base again finds it cached.`,
		Example: `  pe image import --tar clang-20.1.0.tar.xz --strip-components 1 --prefix /usr --base ubuntu:22.04 --tag clang:20
  pe image import --tar https://example.com/gcc-14.2.0.tar.xz --strip-components 1 --prefix /opt/gcc --tag gcc:14
  pe run clang:20 clang --version`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			if imp.tar == "" || tag == "" {
				return usageErrorf(cmd, "--tar and --tag are required")
			}
			opts, err := imp.options(cmd, a, &f)
			if err != nil {
				return err
			}
			opts.Tag = tag
			c, err := f.open()
			if err != nil {
				return err
			}
			img, err := c.Import(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), img.Digest)
			return nil
		},
	}
	f.register(cmd.Flags(), true)
	imp.register(cmd.Flags())
	cmd.Flags().StringVarP(&tag, "tag", "t", "", "the name to store the image under, such as clang:20 (required)")
	return cmd
}

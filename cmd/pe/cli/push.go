package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pe-project/pe/image"
)

// newPushCmd returns "pe image push".
func newPushCmd(a *app) *cobra.Command {
	var f pullFlags
	var concurrency int
	var chunkCodec string
	cmd := &cobra.Command{
		Use:   "push IMAGE s3://BUCKET/[PREFIX/]NAME[:TAG]",
		Short: "Store an image in an S3 bucket",
		Long: `Store IMAGE in an S3 bucket (AWS S3 or any S3-compatible server), from where
pe image pull and pe run take it as s3://BUCKET/[PREFIX/]NAME[:TAG|@sha256:...].
IMAGE is anything pe runs: a registry reference, an imported name, oci:PATH,
docker-archive:PATH or an .erofs file (pushed with an empty config: linux on
this machine's architecture, no entrypoint).

The image's EROFS file is stored once per prefix as PREFIX/blobs/sha256/<hex>,
with an index of its 512 KiB chunks' digests and its config as
PREFIX/indexes/sha256/<digest>.json, and the tag as PREFIX/NAME/tags/TAG.
The chunks are also stored LZ4-compressed one by one, as one more blob,
which is what runs that read the image lazily fetch: about half the bytes
over the link, for about half the image's size again in the bucket
(--chunk-compression none stores the image only). Objects the bucket
already has are not sent again. The image goes up in
parts, --jobs at a time, with a progress bar on a terminal. An interrupted
push (Ctrl-C, a lost connection) leaves its parts in the bucket: running the
same push again sends only the parts missing there. Prints the image digest.

The endpoint and credentials come from the environment, as for every S3 tool:
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
AWS_PROFILE and ~/.aws/credentials and ~/.aws/config.`,
		Example: `  pe image push gcc:14 s3://images/ce/gcc:14
  AWS_ENDPOINT_URL=http://127.0.0.1:7070 pe image push ./rootfs.erofs s3://images/tools/rootfs:v1`,
		Args: usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			dest, err := image.ParseReference(args[1])
			if err != nil {
				return err
			}
			if dest.Transport() != image.TransportS3 {
				return usageErrorf(cmd, "the destination %q is not an s3:// reference", args[1])
			}
			pull, err := f.options(cmd, a)
			if err != nil {
				return err
			}
			if chunkCodec != image.ChunkCodecLZ4 && chunkCodec != image.ChunkCodecNone {
				return usageErrorf(cmd, "--chunk-compression %q: want lz4 or none", chunkCodec)
			}
			opts := image.PushOptions{PullOptions: pull, Concurrency: concurrency, ChunkCodec: chunkCodec}
			var res *image.PushResult
			if path, ok := image.EROFSFile(args[0]); ok {
				res, err = image.PushEROFS(cmd.Context(), path, image.DefaultEROFSConfig(), dest, opts)
			} else {
				src, perr := image.ParseReference(args[0])
				if perr != nil {
					return perr
				}
				c, oerr := f.open()
				if oerr != nil {
					return oerr
				}
				res, err = c.Push(cmd.Context(), src, dest, opts)
			}
			if err != nil {
				if cmd.Context().Err() != nil {
					// main reports only "interrupted"; say what is left.
					fmt.Fprintf(cmd.ErrOrStderr(), "pe image push: interrupted; any parts sent so far stay in the bucket: run the same push again to continue it\n")
				}
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), res.Digest)
			if stderr := cmd.ErrOrStderr(); isTerminal(stderr) {
				sent := "sent"
				switch {
				case !res.BlobSent:
					sent = "already in the bucket"
				case res.Resumed:
					sent = fmt.Sprintf("resumed: %s sent, %s already in the bucket", humanBytes(res.BytesSent), humanBytes(res.BytesReused))
				}
				packed := ""
				if res.PackedSize > 0 {
					packed = fmt.Sprintf("; its chunks packed: %s", humanBytes(res.PackedSize))
				}
				fmt.Fprintf(stderr, "%s: %s EROFS image, %s%s\n", dest.Familiar(), humanBytes(res.Size), sent, packed)
			}
			return nil
		},
	}
	f.register(cmd.Flags(), false)
	cmd.Flags().IntVar(&concurrency, "jobs", 4, "parts of the image uploaded at once")
	cmd.Flags().StringVar(&chunkCodec, "chunk-compression", image.ChunkCodecLZ4, "how the chunks lazy runs fetch are stored besides the image: lz4 or none")
	return cmd
}

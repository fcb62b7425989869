package image

// Prefetch traces beside an image in its bucket (issue 16): a run records
// the order in which it first read the image's chunks
// (blockstore.Image.StartTrace) and stores it under
//
//	PREFIX/traces/sha256/<image index hex>/<command key hex>.json
//
// so that the next run of the same command, on any machine, prefetches
// those chunks in that order from its start. A trace is only a hint: a
// missing one costs speed, and one that does not fit the image is refused
// (blockstore.DecodeTrace), never followed.

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pe-project/pe/blockstore"
	"github.com/pe-project/pe/blockstore/s3"
)

// TraceKey returns the key of the trace of one command: the sha256 of its
// parts (say the argv, then the working directory), each prefixed with
// its length so that {"a b"} and {"a", "b"} differ.
func TraceKey(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(p))))
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// traceKey returns the object key of image's trace for key, checking what
// it is built from.
func traceKey(ref Reference, image v1.Hash, key string) (string, error) {
	if ref.transport != TransportS3 {
		return "", fmt.Errorf("prefetch traces live beside s3:// images, not %s", ref.Familiar())
	}
	if image.Algorithm != "sha256" || len(image.Hex) != 64 || !isLowerHex(image.Hex) {
		return "", fmt.Errorf("prefetch trace: image digest %q is not sha256:<64 hex digits>", image)
	}
	if len(key) != 64 || !isLowerHex(key) {
		return "", fmt.Errorf("prefetch trace key %q is not 64 lowercase hex digits (TraceKey makes one)", key)
	}
	return ref.s3.key("traces", "sha256", image.Hex, key+".json"), nil
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// LoadS3Trace reads the trace stored for the command key of the image
// whose index digest is image and index ix, beside ref (an s3://
// reference to that image) in its bucket. It returns nil and no error
// when there is none. A trace that is not valid for ix (corrupt,
// truncated, recorded for other chunks) is an error wrapping
// blockstore.ErrInvalidTrace that names the object; callers should log it
// and run without. At most blockstore.MaxTraceBytes are read.
func LoadS3Trace(ctx context.Context, client *s3.Client, ref Reference, image v1.Hash, ix *blockstore.Index, key string) (*blockstore.Trace, error) {
	k, err := traceKey(ref, image, key)
	if err != nil {
		return nil, err
	}
	obj := fmt.Sprintf("s3://%s/%s", ref.s3.bucket, k)
	b, err := client.ReadAll(ctx, ref.s3.bucket, k, blockstore.MaxTraceBytes)
	if errors.Is(err, s3.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, s3Error(err, "reading the prefetch trace "+obj)
	}
	t, err := blockstore.DecodeTrace(b, ix)
	if err != nil {
		return nil, fmt.Errorf("prefetch trace %s: %w", obj, err)
	}
	return t, nil
}

// SaveS3Trace stores t as the trace of the command key of the image whose
// index digest is image, beside ref in its bucket, unless the bucket has
// one already (a conditional write: the first run's trace stays, and two
// machines saving at once do not both write). It reports whether it wrote.
// An empty trace is not stored. Saving is best effort: callers log an
// error and go on.
func SaveS3Trace(ctx context.Context, client *s3.Client, ref Reference, image v1.Hash, ix *blockstore.Index, key string, t *blockstore.Trace) (bool, error) {
	k, err := traceKey(ref, image, key)
	if err != nil {
		return false, err
	}
	if t == nil || len(t.Chunks) == 0 {
		return false, nil
	}
	b, err := t.Encode(ix)
	if err != nil {
		return false, err
	}
	obj := fmt.Sprintf("s3://%s/%s", ref.s3.bucket, k)
	// A HEAD first: servers without conditional writes would otherwise
	// replace the trace every run.
	if _, err := client.HeadObject(ctx, ref.s3.bucket, k); err == nil {
		return false, nil
	} else if !errors.Is(err, s3.ErrNotFound) {
		return false, s3Error(err, "checking for the prefetch trace "+obj)
	}
	_, err = client.PutObject(ctx, ref.s3.bucket, k, b, s3.PutOptions{ContentType: "application/json", IfNoneMatch: true})
	if errors.Is(err, s3.ErrExists) {
		return false, nil
	}
	if err != nil {
		return false, s3Error(err, "storing the prefetch trace "+obj)
	}
	return true, nil
}

// LoadTraces returns up to max of the prefetch traces stored beside the
// lazy image (every command's whose first run left one), for warming the
// chunk cache before runs come (pe serve's presets). Traces that do not
// fit the image are skipped, as a run skips them; a listing that fails is
// an error naming the prefix.
func (s *S3Image) LoadTraces(ctx context.Context, max int) ([]*blockstore.Trace, error) {
	if s.Lazy == nil || s.client == nil || max <= 0 {
		return nil, nil
	}
	prefix := s.ref.s3.key("traces", "sha256", s.Digest.Hex) + "/"
	var out []*blockstore.Trace
	for o, err := range s.client.ListObjects(ctx, s.ref.s3.bucket, prefix) {
		if err != nil {
			return out, s3Error(err, fmt.Sprintf("listing the prefetch traces s3://%s/%s", s.ref.s3.bucket, prefix))
		}
		key, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), ".json")
		if !ok || len(key) != 64 || !isLowerHex(key) {
			continue // not a trace pe wrote
		}
		t, err := LoadS3Trace(ctx, s.client, s.ref, s.Digest, s.Lazy.Index(), key)
		if err != nil || t == nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			continue
		}
		if out = append(out, t); len(out) >= max {
			break
		}
	}
	return out, nil
}

package engine

import (
	"context"

	"github.com/pe-project/pe/blockstore"
)

// Warming bounds: the traces read, and the chunks they add beyond the
// metadata (a trace lists what one command read first; many commands'
// together approach the whole image).
const (
	warmTraces       = 16
	maxWarmFromTrace = 64 << 20
)

// TraceLister is a TraceStore that can list its traces
// (image.S3Image): WarmImage prefetches what they list.
type TraceLister interface {
	LoadTraces(ctx context.Context, max int) ([]*blockstore.Trace, error)
}

// WarmImage fetches into the chunk cache what the first runs of a lazily
// read image (img.Lazy, an s3:// image) read before anything else: its
// metadata chunks, up to the bound a run's prefetch has, then the chunks
// the prefetch traces stored beside it list (the first reads of each
// command whose first run left one: at most warmTraces traces and
// maxWarmFromTrace bytes), all below demand reads. A server warms its
// presets so at start-up, so that their first runs do not wait for the
// bucket. It returns what it did, when done or when ctx is; an image that
// is not lazy needs nothing (a zero result).
func WarmImage(ctx context.Context, img *ResolvedImage) blockstore.PrefetchResult {
	if img == nil || img.Lazy == nil {
		return blockstore.PrefetchResult{}
	}
	ix := img.Lazy.Index()
	plan := metadataPlan(ix)
	if tl, ok := img.Traces.(TraceLister); ok {
		traces, _ := tl.LoadTraces(ctx, warmTraces) // only a speed-up: what was read serves
		seen := map[int]bool{}
		for _, c := range plan {
			seen[c] = true
		}
		budget := int64(maxWarmFromTrace)
		for _, t := range traces {
			for _, c := range t.Chunks {
				if seen[c] || budget <= 0 {
					continue
				}
				seen[c] = true
				plan = append(plan, c)
				budget -= ix.ChunkSize
			}
		}
	}
	if len(plan) == 0 {
		return blockstore.PrefetchResult{}
	}
	return img.Lazy.PrefetchOrder(ctx, plan, prefetchWorkers).Wait()
}

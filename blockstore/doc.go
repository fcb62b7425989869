// Package blockstore reads big read-only images lazily from remote storage
// through a bounded local cache of verified chunks: the chunk store under
// pe's lazy disks (issue 16). The NBD server (blockstore/nbd) and the S3
// fetcher (blockstore/s3) sit on top of it; it imports nothing of pe's.
//
// An image is cut into fixed-size chunks (512 KiB by default). Its Index
// lists the image's digest and size, the chunk size and each chunk's
// sha256; BuildIndexFile makes one from a local image (for push) and
// DecodeIndex reads one back, rejecting anything malformed. A Fetcher reads
// byte ranges of the image's remote object.
//
// An index may also describe the chunks packed (Packed: each one LZ4
// block, or raw where LZ4 does not shrink it, one after the other in one
// object; BuildPacked and NewPackedReader make it). The Fetcher of such
// an image reads that object: the store fetches a chunk's stored range
// and decodes it (UnpackChunk) into exactly the chunk's length before the
// digest check below, so a chunk that does not decode is treated as one
// that does not match.
//
// Store.Open returns an Image, an io.ReaderAt over the image: a read copies
// cached chunks from disk and fetches missing ones. Every chunk is checked
// against its sha256 before any of its bytes is used:
//   - one fetch per missing chunk, however many reads wait for it (single
//     flight), cancelled when every waiting read has given up;
//   - each request has a timeout; failures are retried with exponential
//     backoff unless the Fetcher marks them Permanent; a request that has
//     not answered after Options.HedgeAfter gets a twin, and the first
//     answer wins;
//   - a chunk whose bytes do not match is fetched once more, then the read
//     fails with a *DigestError naming it; bad bytes are never returned.
//
// # The cache directory
//
// Each verified chunk is one file, Dir/chunks/<sha256 hex>. A fetched
// chunk first waits in memory, serving reads, until the fetches pause
// (Options.CommitDelay) or too many wait (Options.MaxPendingBytes); the
// waiting chunks are then written as temporary files under Dir/tmp,
// flushed to the disk together (one syncfs) and only then renamed into
// place, so a name never holds partial or unverified content, whatever
// crash happens, and a run's burst of fetches costs no file system work
// while its guest starts; a cached file shorter than its chunk is
// dropped and fetched again, and Options.VerifyCached also hashes each
// cached file on its first use in a process, against a damaged disk.
// Naming chunks by content shares identical chunks between images
// (runs of zeros, common files) and lets any number of processes share the
// directory without locks: two writers of a chunk write the same bytes.
//
// The cache is bounded by Options.MaxBytes. A file's mtime is its last use
// (hits refresh it at most once a minute); past the limit the oldest files
// are removed down to 90 %. Removing a file a reader has open does not
// disturb that reader and a later read fetches the chunk again, so nothing
// is pinned. An Image keeps up to 64 chunk files open for its next reads;
// their disk space outlives an eviction until the image lets them go. This layout was chosen over one sparse file per image with a
// chunk bitmap (lazy-blocks.md §6) because eviction by hole punching must
// never hit a chunk in use, and a bitmap shared by processes needs locking
// and its own crash consistency; one file per chunk costs an inode per
// 512 KiB (20,480 for a 10 GiB cache) and an open per chunk an image reads.
//
// # Prefetch
//
// Image.PrefetchOrder fetches a list of chunks in the background, in its
// order: an Index's MetadataChunks (what a mount and the first lookups
// read) and a recorded Trace (the order in which an earlier run of the
// same command first read chunks: Image.StartTrace, Image.Trace,
// DecodeTrace). Prefetches rank below demand reads, which never wait for
// a slot; a prefetch starts a fetch only while the image's demand fetches
// and prefetches in flight are fewer than its worker budget. A prefetch
// fetches neighbouring chunks listed close together with one request (up
// to 4 chunks, 16 places ahead in its order, while the chunks in flight
// are fewer than twice its workers): one request's work and round trip
// instead of several, for the store, the link and pe. A Fetcher that can
// stream (StreamFetcher, as the fetcher of pe's s3:// images does) serves
// each chunk of such a request as soon as its bytes are in.
//
// Counters (GETs, bytes, hits, misses, joined waits, time stalled...) are
// read as a Stats struct from the Store (all images) or one Image.
package blockstore

// Package s3 is pe's small client for S3 and S3-compatible object stores
// (AWS S3, Ceph RGW, SeaweedFS, R2, versitygw): the calls lazy images need
// and nothing more. HeadObject, ranged reads (ReadRange, and Object.Fetch,
// which has the shape of blockstore.Fetcher: the chunk store's hot path),
// whole reads, small PutObjects for indexes and tags, parallel
// multipart uploads for images (UploadResumable continues one left
// unfinished, after ListMultipartUploads and ListParts), ListObjectsV2,
// DeleteObject and CreateBucket.
//
// It is net/http plus the SigV4 signer of aws-sdk-go-v2 (two small modules
// rather than the dozen the full SDK brings), so timeouts, retries and
// connection reuse stay in our hands. Every request carries
// X-Amz-Content-Sha256: S3 signs it, and versitygw refuses requests
// without it. Uploads are signed with their body's SHA-256, so a corrupted
// upload is refused by the server.
//
// Configuration comes the way every S3 tool takes it (LoadConfig):
// AWS_ENDPOINT_URL(_S3), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_SESSION_TOKEN, AWS_REGION, AWS_PROFILE and the shared files
// ~/.aws/credentials and ~/.aws/config. A configured endpoint means a
// self-hosted server, addressed path-style; without one, AWS is addressed
// with virtual hosts.
//
// Failures are *Error values that match ErrNotFound, ErrAccessDenied (whose
// message names the bucket and endpoint and says which keys to check),
// ErrThrottled and ErrInvalidRange through errors.Is; throttling and server
// errors are retried with backoff (Options.MaxAttempts). Deadlines come from
// the caller's context, which bounds a read's body as well as its headers.
//
// The package imports nothing of pe's, like erofs: it sits at the bottom.
package s3

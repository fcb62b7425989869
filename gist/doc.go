// Package gist fetches and creates GitHub gists, pe's shareable examples,
// and parses pe.toml, the file of a gist (or of a directory given to pe
// run) that says how to run the files beside it.
//
// A Client talks to the GitHub REST API (GET /gists/{id},
// GET /gists/{id}/{sha}, POST /gists) at api.github.com or a GitHub
// Enterprise server, with a timeout on every request, size limits on
// files and on the whole gist, and an optional disk cache bounded in size
// (least recently used entries go first): a revision is kept until
// evicted, the latest revision is revalidated with its ETag. Errors
// say what went wrong in terms a user can act on: ErrNotFound, a
// *RateLimitError saying when to retry, an *APIError with GitHub's
// message.
//
// Nothing from GitHub is trusted as a path: Fetch refuses file names that
// are not one plain path element, and Gist.WriteDir writes through an
// os.Root into a fresh directory renamed into place.
//
// ParseConfig reads pe.toml (reference: docs/pe-toml.md); its errors are
// *ConfigError values naming the key and its line. ParseID reads the ways
// users write a gist: an ID, ID/REVISION, a gist.github.com or API URL, a
// #gist=ID/REVISION link.
//
// The package imports nothing else of pe's, so the CLI and the server
// share it.
package gist

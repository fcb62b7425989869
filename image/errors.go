package image

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Errors callers can tell apart with errors.Is. The errors pe returns wrap
// them with the reference and the registry's own message.
var (
	// ErrNotFound: the registry, layout or archive has no such image (or
	// repository, or blob).
	ErrNotFound = errors.New("not found")
	// ErrUnauthorized: the registry wants credentials, or refused the ones
	// given (HTTP 401 or 403).
	ErrUnauthorized = errors.New("authentication required or denied")
	// ErrRateLimited: the registry still answered 429 Too Many Requests
	// after the retries.
	ErrRateLimited = errors.New("rate limited by the registry")
	// ErrPlatformNotFound: the image has no manifest for the platform asked
	// for. The message lists the platforms it has.
	ErrPlatformNotFound = errors.New("no image for the platform")
	// ErrTooLarge: the image's layers add up to more than the size limit.
	ErrTooLarge = errors.New("image too large")
	// ErrDigestMismatch: a blob's content does not match its digest or its
	// size.
	ErrDigestMismatch = errors.New("digest or size mismatch")
	// ErrNotCached: the image is not in the cache and the pull policy
	// forbids fetching it.
	ErrNotCached = errors.New("image not in the cache")
	// ErrUnsupported: the reference names something pe cannot run (an
	// artifact that is not a container image, a Windows image, an old
	// schema 1 manifest…).
	ErrUnsupported = errors.New("not supported")
)

// kindError is an error of one of the kinds above, with a message written
// for the user and the underlying cause.
type kindError struct {
	kind error
	msg  string
	err  error
}

func (e *kindError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}

func (e *kindError) Unwrap() []error {
	if e.err == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.err}
}

// kindErrorf returns an error of kind with a formatted message and no
// cause.
func kindErrorf(kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// plainHTTPMessage is what net/http reports when an HTTPS request gets a
// plain HTTP answer: the registry has no TLS.
const plainHTTPMessage = "server gave HTTP response to HTTPS client"

// registryError describes the failure of a registry request that was
// doing action ("resolving", "fetching") to what (a reference, or "layer
// sha256:… of REF"), naming what once. When the HTTP status or the
// registry's error code says which, the error is one of the kinds above,
// so the user reads what to do rather than a status code; when the registry
// answered plain HTTP to HTTPS, the message suggests --insecure.
func registryError(action, what string, err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		if strings.Contains(err.Error(), plainHTTPMessage) {
			return fmt.Errorf("%s %s: %w (the registry speaks plain HTTP, not HTTPS: use --insecure to allow that)", action, what, err)
		}
		return fmt.Errorf("%s %s: %w", action, what, err)
	}
	status := te.StatusCode
	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			status = http.StatusNotFound
		case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
			status = http.StatusUnauthorized
		case transport.TooManyRequestsErrorCode:
			status = http.StatusTooManyRequests
		}
	}
	// Keep the registry's message but not the whole transport error, which
	// repeats the URL.
	cause := fmt.Errorf("HTTP %d", te.StatusCode)
	if len(te.Errors) > 0 {
		cause = fmt.Errorf("HTTP %d: %s", te.StatusCode, te.Errors[0].String())
	}
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return &kindError{kind: ErrUnauthorized, msg: fmt.Sprintf("authentication required or denied for %s: log in with docker login", what), err: cause}
	case http.StatusNotFound:
		return &kindError{kind: ErrNotFound, msg: what + " not found", err: cause}
	case http.StatusTooManyRequests:
		return &kindError{kind: ErrRateLimited, msg: fmt.Sprintf("the registry rate-limits requests for %s; try again later", what), err: cause}
	}
	return fmt.Errorf("%s %s: %w", action, what, err)
}

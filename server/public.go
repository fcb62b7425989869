package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/pe-project/pe/engine"
	"github.com/pe-project/pe/image"
)

// PublicOnly is an image source for visitors: before handing a registry
// reference to Next, it asks the registry, anonymously, whether the
// reference is there for anyone. Anonymous pulls alone do not keep
// private images from visitors: the image cache the server shares with
// pe run may hold images the operator pulled with credentials, and it
// serves a cached image without asking the registry (a pinned digest, a
// fresh tag record, or a registry that refused the lookup). A positive
// answer is remembered for TTL. References in Exempt (the presets, which
// the operator chose) and references that are not registry references
// (the presets' files and layouts: visitors cannot name those) go
// straight to Next.
type PublicOnly struct {
	// Next resolves the references that passed.
	Next engine.ImageSource
	// Exempt are the references not checked.
	Exempt map[string]bool
	// Insecure talks plain HTTP to registries, as image.PullOptions does.
	Insecure bool
	// Transport carries the requests (nil: ggcr's default).
	Transport http.RoundTripper
	// TTL is how long a reference found public stays so (default 10
	// minutes).
	TTL time.Duration

	mu     sync.Mutex
	public map[string]time.Time // reference → when its answer expires
}

// errRegistryUnreachable means PublicOnly could not get an answer from
// the registry (network, TLS, a 5xx): the server answers 502.
var errRegistryUnreachable = errors.New("the image registry could not be asked")

// maxPublicEntries bounds PublicOnly's memory of public references.
const maxPublicEntries = 10000

// Resolve implements engine.ImageSource.
func (p *PublicOnly) Resolve(ctx context.Context, ref string) (*engine.ResolvedImage, error) {
	if !p.Exempt[ref] {
		if err := p.check(ctx, ref); err != nil {
			return nil, err
		}
	}
	return p.Next.Resolve(ctx, ref)
}

// check asks the registry whether ref can be read anonymously, unless a
// recent answer said so.
func (p *PublicOnly) check(ctx context.Context, ref string) error {
	parsed, err := image.ParseReference(ref)
	if err != nil || parsed.Transport() != image.TransportRegistry {
		return nil // not a registry reference: Next decides
	}
	key := parsed.String()
	now := time.Now()
	p.mu.Lock()
	exp, ok := p.public[key]
	p.mu.Unlock()
	if ok && now.Before(exp) {
		return nil
	}
	var opts []name.Option
	if p.Insecure {
		opts = append(opts, name.Insecure)
	}
	n, err := name.ParseReference(key, opts...)
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, err)
	}
	ropts := []remote.Option{remote.WithAuth(authn.Anonymous), remote.WithContext(ctx)}
	if p.Transport != nil {
		ropts = append(ropts, remote.WithTransport(p.Transport))
	}
	if _, err := remote.Head(n, ropts...); err != nil {
		return publicError(ref, err)
	}
	ttl := p.TTL
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	p.mu.Lock()
	if p.public == nil || len(p.public) >= maxPublicEntries {
		p.public = map[string]time.Time{}
	}
	p.public[key] = now.Add(ttl)
	p.mu.Unlock()
	return nil
}

// publicError is the error of a reference the registry would not show
// an anonymous client, of the image package's kinds so that the server
// answers it as such.
func publicError(ref string, err error) error {
	var te *transport.Error
	if !errors.As(err, &te) {
		return fmt.Errorf("checking that %s is public: %w: %w", ref, errRegistryUnreachable, err)
	}
	status := te.StatusCode
	for _, d := range te.Errors {
		switch d.Code {
		case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
			status = http.StatusUnauthorized
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
			status = http.StatusNotFound
		case transport.TooManyRequestsErrorCode:
			status = http.StatusTooManyRequests
		}
	}
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%s: the registry does not show it to anonymous clients: %w", ref, image.ErrUnauthorized)
	case http.StatusNotFound:
		return fmt.Errorf("%s: %w", ref, image.ErrNotFound)
	case http.StatusTooManyRequests:
		return fmt.Errorf("%s: %w", ref, image.ErrRateLimited)
	}
	return fmt.Errorf("checking that %s is public: %w: %w", ref, errRegistryUnreachable, err)
}

package server

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// clientKeys finds who sent a request: the peer address, or, when the peer
// is a trusted proxy, the last address in X-Forwarded-For that is not one.
// The original keyed every client behind its proxy the same; believing the
// header from anyone would let a client pick its own key.
type clientKeys struct {
	trusted []netip.Prefix
}

// clientAddr returns the request's client address ("" when unknown).
func (k *clientKeys) clientAddr(r *http.Request) netip.Addr {
	peer := remoteAddr(r.RemoteAddr)
	if !peer.IsValid() || !k.isTrusted(peer) {
		return peer
	}
	// Walk X-Forwarded-For from the right: each trusted proxy appended the
	// address it got the request from.
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		client = a.Unmap()
		if !k.isTrusted(client) {
			break
		}
	}
	return client
}

func (k *clientKeys) isTrusted(a netip.Addr) bool {
	for _, p := range k.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// rateKey is the rate-limit bucket of an address: IPv4 addresses alone,
// IPv6 ones by /64, as one host usually owns a whole /64.
func rateKey(a netip.Addr) string {
	if !a.IsValid() {
		return "unknown"
	}
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

func remoteAddr(s string) netip.Addr {
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		host = s
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// rateLimiter is a token bucket per client key, forgotten after idle.
type rateLimiter struct {
	limit rate.Limit
	burst int
	idle  time.Duration

	mu      sync.Mutex
	clients map[string]*clientBucket
	swept   time.Time
}

type clientBucket struct {
	lim  *rate.Limiter
	seen time.Time
}

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	return &rateLimiter{
		limit:   rate.Limit(perSecond),
		burst:   max(1, burst),
		idle:    10 * time.Minute,
		clients: map[string]*clientBucket{},
	}
}

// allow takes a token for key, or says how long until one is there.
func (l *rateLimiter) allow(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if l == nil || l.limit <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.bucket(key, now).ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// available reports whether key's bucket holds a token, without taking
// it, or says how long until it does: for requests whose cost is known
// only once done (charge).
func (l *rateLimiter) available(key string, now time.Time) (ok bool, retryAfter time.Duration) {
	if l == nil || l.limit <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	tokens := l.bucket(key, now).TokensAt(now)
	if tokens >= 1 {
		return true, 0
	}
	return false, time.Duration((1 - tokens) / float64(l.limit) * float64(time.Second))
}

// charge takes n more tokens from key's bucket, into debt when it holds
// fewer: the client then waits longer for its next token.
func (l *rateLimiter) charge(key string, n int, now time.Time) {
	if l == nil || l.limit <= 0 || n <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bucket(key, now).ReserveN(now, min(n, l.burst))
}

// bucket returns key's bucket, forgetting the idle ones now and then;
// l.mu is held.
func (l *rateLimiter) bucket(key string, now time.Time) *rate.Limiter {
	if now.Sub(l.swept) > l.idle {
		for k, c := range l.clients {
			if now.Sub(c.seen) > l.idle {
				delete(l.clients, k)
			}
		}
		l.swept = now
	}
	c := l.clients[key]
	if c == nil {
		c = &clientBucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.clients[key] = c
	}
	c.seen = now
	return c.lim
}

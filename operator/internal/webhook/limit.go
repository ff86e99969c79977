package webhook

import (
	"container/list"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Defaults of the per-source limit of refused deliveries (nio-operator's flags).
const (
	// DefaultRefusedBurst is how many refused deliveries a source may send in a row.
	DefaultRefusedBurst = 10
	// DefaultRefusedInterval is how long a source takes to earn one more back.
	DefaultRefusedInterval = 6 * time.Second
	// DefaultMaxSources bounds the table of sources (about 100 bytes each).
	DefaultMaxSources = 10000
)

// sourceOf names the sender of a delivery: the TCP peer, or, when the peer is one of
// the trusted proxies, the right-most address of X-Forwarded-For that is not a
// trusted proxy itself (the left part of the header is whatever the client wrote).
// The zero Addr means the peer address did not parse (a test's RemoteAddr).
func sourceOf(r *http.Request, trusted []netip.Prefix) netip.Addr {
	peer := parseAddr(r.RemoteAddr)
	if !peer.IsValid() || !contains(trusted, peer) {
		return peer
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		hop := parseAddr(strings.TrimSpace(hops[i]))
		if !hop.IsValid() {
			// The proxy wrote what it received; garbage there is the client's, and
			// the proxy is the last sender known.
			return peer
		}
		if !contains(trusted, hop) {
			return hop
		}
		peer = hop
	}
	return peer
}

// parseAddr reads an address with or without a port ("192.0.2.1:80", "[2001:db8::1]:80",
// "2001:db8::1").
func parseAddr(s string) netip.Addr {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap()
	}
	if host, _, err := net.SplitHostPort(s); err == nil {
		if a, err := netip.ParseAddr(host); err == nil {
			return a.Unmap()
		}
	}
	return netip.Addr{}
}

func contains(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// sourceKey is what the limit counts per: an IPv4 address, or an IPv6 /64 (one
// host's, or one customer's, allocation: an attacker holds a whole /64).
func sourceKey(a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// limiter is a token bucket per source for refused deliveries: burst in a row, then
// one per interval. Sources are kept in least-recently-used order and the oldest is
// forgotten when the table is full; a forgotten source starts again with a full
// bucket, as one that stayed quiet for burst × interval would.
type limiter struct {
	burst    float64
	interval time.Duration
	max      int

	mu      sync.Mutex
	buckets map[netip.Prefix]*list.Element
	lru     *list.List // of *bucket, most recent first
}

type bucket struct {
	key       netip.Prefix
	tokens    float64
	at        time.Time
	throttled bool // answered 429 since it last had a token (logged once)
}

func newLimiter(burst int, interval time.Duration, max int) *limiter {
	if max <= 0 {
		max = DefaultMaxSources
	}
	return &limiter{burst: float64(burst), interval: interval, max: max,
		buckets: map[netip.Prefix]*list.Element{}, lru: list.New()}
}

func (l *limiter) refill(b *bucket, now time.Time) {
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = min(l.burst, b.tokens+float64(elapsed)/float64(l.interval))
	}
	b.at = now
}

// wait is how long until b holds a token again.
func (l *limiter) wait(b *bucket) time.Duration {
	return time.Duration((1 - b.tokens) * float64(l.interval))
}

// blocked reports whether key has no refused delivery left; if so, first says
// whether this is the first 429 since it last had one, and retry how long until it
// has one again.
func (l *limiter) blocked(key netip.Prefix, now time.Time) (blocked, first bool, retry time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.buckets[key]
	if e == nil {
		return false, false, 0
	}
	l.lru.MoveToFront(e)
	b := e.Value.(*bucket)
	l.refill(b, now)
	if b.tokens >= 1 {
		return false, false, 0
	}
	first, b.throttled = !b.throttled, true
	return true, first, l.wait(b)
}

// charge takes one refused delivery from key's bucket. When none was left, ok is
// false, first says whether this is the first such answer since the source last had
// one, and retry how long until it has one.
func (l *limiter) charge(key netip.Prefix, now time.Time) (ok, first bool, retry time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.buckets[key]
	if e == nil {
		for l.lru.Len() >= l.max {
			oldest := l.lru.Back()
			delete(l.buckets, oldest.Value.(*bucket).key)
			l.lru.Remove(oldest)
		}
		e = l.lru.PushFront(&bucket{key: key, tokens: l.burst, at: now})
		l.buckets[key] = e
	} else {
		l.lru.MoveToFront(e)
	}
	b := e.Value.(*bucket)
	l.refill(b, now)
	if b.tokens >= 1 {
		b.tokens--
		b.throttled = false
		return true, false, 0
	}
	first, b.throttled = !b.throttled, true
	return false, first, l.wait(b)
}

// len is the number of sources in the table.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

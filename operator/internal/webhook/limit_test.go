package webhook

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
)

const attacker, forge = "203.0.113.7:40000", "198.51.100.1:50000"

// clock is a settable time for the limiter and the replay window.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// limitedHarness is a harness whose sources may send burst refused deliveries, then
// one per 10 s of its clock.
func limitedHarness(t *testing.T, burst int, edit func(*Options)) (*harness, *clock) {
	t.Helper()
	h := newHarness(t, func(o *Options) {
		o.RefusedBurst, o.RefusedInterval = burst, 10*time.Second
		if edit != nil {
			edit(o)
		}
	})
	c := &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h.rc.now = c.Now
	return h, c
}

// from sends a delivery as peer (an "address:port"), with extra headers.
func (h *harness) from(peer, provider string, header http.Header, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, PathPrefix+provider, bytes.NewReader(body))
	req.RemoteAddr = peer
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	rec := httptest.NewRecorder()
	h.rc.ServeHTTP(rec, req)
	return rec
}

func signedGeneric(body []byte) http.Header {
	return http.Header{GenericSignatureHeader: {"sha256=" + hexHMAC(testSecret, body)}}
}

func TestRefusedDeliveriesPastTheBurstAreAnswered429WithRetryAfter(t *testing.T) {
	h, clk := limitedHarness(t, 3, nil)
	body := fixture(t, "generic-push.json")
	for i := range 3 {
		if rec := h.from(attacker, ProviderGeneric, nil, body); rec.Code != http.StatusUnauthorized {
			t.Fatalf("refusal %d: status %d, want 401", i+1, rec.Code)
		}
	}
	rec := h.from(attacker, ProviderGeneric, nil, body)
	expectStatus(t, rec, http.StatusTooManyRequests)
	if got := rec.Header().Get("Retry-After"); got != "10" {
		t.Errorf("Retry-After %q, want 10", got)
	}
	if !strings.Contains(rec.Body.String(), `"reason":"throttled"`) {
		t.Errorf("body %s", rec.Body.String())
	}
	clk.Advance(4 * time.Second)
	if got := h.from(attacker, ProviderGeneric, nil, body).Header().Get("Retry-After"); got != "6" {
		t.Errorf("Retry-After after 4 s: %q, want 6", got)
	}
	// One refusal earned back per interval.
	clk.Advance(6 * time.Second)
	expectStatus(t, h.from(attacker, ProviderGeneric, nil, body), http.StatusUnauthorized)
	expectStatus(t, h.from(attacker, ProviderGeneric, nil, body), http.StatusTooManyRequests)

	m := h.rc.metrics
	if got := h.counter(m.rejected, ProviderGeneric, ReasonSignature); got != 4 {
		t.Errorf("rejected{signature} %v, want 4", got)
	}
	if got := h.counter(m.rejected, ProviderGeneric, ReasonThrottled); got != 3 {
		t.Errorf("rejected{throttled} %v, want 3", got)
	}
	expectNothingTriggered(t, h)
}

// Every unauthenticated refusal counts against the source, whatever the provider.
func TestEveryUnauthenticatedRefusalCosts(t *testing.T) {
	h, _ := limitedHarness(t, 4, nil)
	body := fixture(t, "github-push.json")
	expectStatus(t, h.do(http.MethodGet, ProviderGitHub, nil, nil), http.StatusMethodNotAllowed) // from 192.0.2.1
	expectStatus(t, h.post(ProviderGitHub, http.Header{"X-Hub-Signature-256": {"sha256=00"}}, body), http.StatusUnauthorized)
	expectStatus(t, h.post(ProviderGitLab, http.Header{"X-Gitlab-Token": {"guess"}}, body), http.StatusUnauthorized)
	expectStatus(t, h.post(ProviderGitea, nil, bytes.Repeat([]byte("x"), int(DefaultMaxBodyBytes)+1)), http.StatusRequestEntityTooLarge)
	expectStatus(t, h.post(ProviderForgejo, nil, body), http.StatusTooManyRequests)
}

// A throttled source that sends no signature costs nothing: its body is not read
// and the secret is not asked for.
func TestThrottledUnsignedDeliveryIsAnsweredUnread(t *testing.T) {
	var secretReads atomic.Int64
	h, _ := limitedHarness(t, 1, func(o *Options) {
		o.Secret = func(context.Context) ([]byte, error) { secretReads.Add(1); return []byte(testSecret), nil }
	})
	expectStatus(t, h.from(attacker, ProviderGitHub, nil, []byte("{}")), http.StatusUnauthorized)
	reads := secretReads.Load()

	body := &countingReader{}
	req := httptest.NewRequest(http.MethodPost, PathPrefix+ProviderGitHub, body)
	req.RemoteAddr = attacker
	req.ContentLength = 1000
	rec := httptest.NewRecorder()
	h.rc.ServeHTTP(rec, req)
	expectStatus(t, rec, http.StatusTooManyRequests)
	if body.n != 0 || secretReads.Load() != reads {
		t.Fatalf("a throttled unsigned delivery read %d body bytes and the secret %d times", body.n, secretReads.Load()-reads)
	}
}

// A valid delivery goes through from a throttled address (a forge behind the same
// proxy as the attacker), and other addresses are not throttled at all.
func TestValidDeliveriesAreNeverStarvedByAnAttacker(t *testing.T) {
	h, _ := limitedHarness(t, 2, nil)
	body := fixture(t, "generic-push.json")
	for range 50 {
		h.from(attacker, ProviderGeneric, http.Header{GenericSignatureHeader: {"sha256=" + hexHMAC("guess", body)}}, body)
	}
	expectStatus(t, h.from(attacker, ProviderGeneric, nil, body), http.StatusTooManyRequests)
	expectStatus(t, h.from(attacker, ProviderGeneric, signedGeneric(body), body), http.StatusAccepted)
	expectStatus(t, h.from(forge, ProviderGeneric, signedGeneric(body), body), http.StatusAccepted)
	// A mistyped secret elsewhere is still told so.
	expectStatus(t, h.from(forge, ProviderGeneric, nil, body), http.StatusUnauthorized)
	if calls, _ := h.trigger.result(); calls != 2 {
		t.Fatalf("trigger called %d times, want 2", calls)
	}
}

func TestForwardedForNamesTheSourceOnlyBehindATrustedProxy(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	h, _ := limitedHarness(t, 1, func(o *Options) { o.TrustedProxies = trusted })
	body := fixture(t, "generic-push.json")
	xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }

	// From an untrusted peer the header is the client's own words: ignored.
	expectStatus(t, h.from(attacker, ProviderGeneric, xff("192.0.2.50"), body), http.StatusUnauthorized)
	expectStatus(t, h.from(attacker, ProviderGeneric, xff("192.0.2.51"), body), http.StatusTooManyRequests)

	// Through the proxy, each client is its own source; what the client prepended
	// to the header (left of the proxy's entry) is not believed.
	viaProxy := "10.0.0.9:31000"
	expectStatus(t, h.from(viaProxy, ProviderGeneric, xff("203.0.113.20"), body), http.StatusUnauthorized)
	expectStatus(t, h.from(viaProxy, ProviderGeneric, xff("198.51.100.77, 203.0.113.20"), body), http.StatusTooManyRequests)
	expectStatus(t, h.from(viaProxy, ProviderGeneric, xff("203.0.113.21"), body), http.StatusUnauthorized)
	// Two proxies in a row: the right-most untrusted hop is the client.
	expectStatus(t, h.from(viaProxy, ProviderGeneric, http.Header{"X-Forwarded-For": {"192.0.2.99", "203.0.113.22, 10.1.2.3"}}, body), http.StatusUnauthorized)
	expectStatus(t, h.from(viaProxy, ProviderGeneric, xff("203.0.113.22"), body), http.StatusTooManyRequests)

	for _, c := range []struct {
		peer, xff, want string
	}{
		{"10.0.0.9:1", "", "10.0.0.9"},
		{"10.0.0.9:1", "not-an-address", "10.0.0.9"},
		{"10.0.0.9:1", "203.0.113.5:4711", "203.0.113.5"},
		{"10.0.0.9:1", "10.0.0.1, 10.0.0.2", "10.0.0.1"},
		{"[2001:db8::1]:443", "203.0.113.5", "2001:db8::1"},
		{"[::ffff:10.0.0.9]:1", "[2001:db8::7]:1", "2001:db8::7"},
	} {
		req := httptest.NewRequest(http.MethodPost, "/hook/generic", nil)
		req.RemoteAddr = c.peer
		if c.xff != "" {
			req.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := sourceOf(req, trusted).String(); got != c.want {
			t.Errorf("peer %s, X-Forwarded-For %q: source %s, want %s", c.peer, c.xff, got, c.want)
		}
	}
}

// An IPv6 attacker holds a /64: rotating addresses inside it does not help.
func TestIPv6SourcesAreLimitedPerSlash64(t *testing.T) {
	h, _ := limitedHarness(t, 2, nil)
	body := []byte("{}")
	for i := range 2 {
		expectStatus(t, h.from(fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1), ProviderGeneric, nil, body), http.StatusUnauthorized)
	}
	expectStatus(t, h.from("[2001:db8:1:2:ffff::9]:443", ProviderGeneric, nil, body), http.StatusTooManyRequests)
	expectStatus(t, h.from("[2001:db8:1:3::1]:443", ProviderGeneric, nil, body), http.StatusUnauthorized)
}

func TestSourceTableIsBounded(t *testing.T) {
	h, _ := limitedHarness(t, 1, func(o *Options) { o.MaxSources = 100 })
	for i := range 1000 {
		h.from(fmt.Sprintf("198.18.%d.%d:1", i/256, i%256), ProviderGeneric, nil, []byte("{}"))
	}
	if n := h.rc.limiter.len(); n != 100 {
		t.Fatalf("%d sources remembered, want 100", n)
	}
	// The most recent are the ones kept.
	expectStatus(t, h.from("198.18.3.231:1", ProviderGeneric, nil, []byte("{}")), http.StatusTooManyRequests)
}

// A throttled source leaves one line in the log, not one per request.
func TestThrottledSourceIsLoggedOnce(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	logger := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		lines = append(lines, args)
	}, funcr.Options{})
	h, _ := limitedHarness(t, 3, func(o *Options) { o.Logger = logger })
	body := []byte("{}")
	for range 100 {
		h.from(attacker, ProviderGeneric, http.Header{GenericSignatureHeader: {"sha256=00"}}, body)
	}
	mu.Lock()
	defer mu.Unlock()
	var refused, throttled int
	for _, l := range lines {
		switch {
		case strings.Contains(l, `"msg"="delivery refused"`):
			refused++
		case strings.Contains(l, "source throttled"):
			throttled++
			if !strings.Contains(l, `"source"="203.0.113.7"`) {
				t.Errorf("throttle line names no source: %s", l)
			}
		}
	}
	if refused != 3 || throttled != 1 || len(lines) != 4 {
		t.Fatalf("%d refusal lines, %d throttle lines of %d; want 3, 1 of 4:\n%s", refused, throttled, len(lines), strings.Join(lines, "\n"))
	}
}

func TestNewReceiverRefusesABurstWithoutInterval(t *testing.T) {
	src := func(context.Context) ([]byte, error) { return []byte("x"), nil }
	trig := func(context.Context, []string) (int, error) { return 0, nil }
	for _, o := range []Options{{RefusedBurst: 5}, {RefusedBurst: -1, RefusedInterval: time.Second}} {
		o.Secret, o.Trigger = src, trig
		if _, err := NewReceiver(o); err == nil {
			t.Errorf("NewReceiver(burst %d, interval %v) succeeded", o.RefusedBurst, o.RefusedInterval)
		}
	}
}

// The header the early 429 looks at is the one verify checks.
func TestAuthHeaderIsTheVerifiedHeader(t *testing.T) {
	for _, pc := range providerCases {
		if got := providers[pc.provider].authHeader; got != pc.authHeader {
			t.Errorf("%s: authHeader %q, want %q", pc.provider, got, pc.authHeader)
		}
		body := fixture(t, pc.fixture)
		hdr := pc.headers(testSecret, "", body)
		if err := providers[pc.provider].verify(hdr, body, []byte(testSecret)); err != nil {
			t.Errorf("%s: %v", pc.provider, err)
		}
		hdr.Del(pc.authHeader)
		if err := providers[pc.provider].verify(hdr, body, []byte(testSecret)); err != errNoSignature {
			t.Errorf("%s without %s: %v, want %v", pc.provider, pc.authHeader, err, errNoSignature)
		}
	}
}

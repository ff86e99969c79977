package health

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// runHTTP validates a one-check spec (loopback only) and runs it, with a watchdog
// far beyond its deadline.
func runHTTP(t *testing.T, h HTTPCheck, timeout time.Duration) (Report, []string, time.Duration) {
	t.Helper()
	spec := Spec{Timeout: timeout, Interval: MinInterval, Checks: []Check{{Name: "web", HTTP: &h}}}
	if err := Validate(spec, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	var lines []string
	start := time.Now()
	r := (&Checker{}).Run(ctx, spec, nil, func(l string) { lines = append(lines, l) })
	if ctx.Err() != nil {
		t.Fatalf("Run outlived its %s deadline by far", timeout)
	}
	return r, lines, time.Since(start)
}

func TestHTTPOKPasses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1<<20))) // more than is read
	}))
	defer srv.Close()
	r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL + "/health"}, 5*time.Second)
	if !r.Passed || r.Results[0].Attempts != 1 || !strings.Contains(r.Results[0].Message, "200") {
		t.Fatalf("report = %+v", r)
	}
}

func TestHTTPServerErrorFailsNamingTheStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer srv.Close()
	r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL}, 400*time.Millisecond)
	res := r.Results[0]
	if r.Passed || res.Attempts < 2 || !strings.Contains(res.Message, "status 500 Internal Server Error, want 200") {
		t.Fatalf("report = %+v", r)
	}
}

// The attempt the deadline cuts short says only that; the report keeps what the
// attempt before it saw.
func TestHTTPLastAttemptCutShortKeepsThePreviousStatus(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		<-r.Context().Done()
	}))
	defer srv.Close()
	r, lines, _ := runHTTP(t, HTTPCheck{URL: srv.URL}, 400*time.Millisecond)
	msg := r.Results[0].Message
	if r.Passed || r.Results[0].Attempts != 2 || !strings.Contains(msg, "status 500") || !strings.Contains(msg, "attempt 2 was cut short by the deadline") {
		t.Fatalf("report = %+v", r)
	}
	for _, l := range lines {
		if strings.Contains(l, "failing (attempt 2)") {
			t.Errorf("the cut-short attempt was logged as a failure of its own: %q", lines)
		}
	}
}

func TestHTTPExpectStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	if r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL, ExpectStatus: 204}, 5*time.Second); !r.Passed {
		t.Fatalf("report = %+v", r)
	}
}

func TestHTTPBecomingHealthyPassesWithinTheDeadline(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= 3 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	r, lines, _ := runHTTP(t, HTTPCheck{URL: srv.URL}, 10*time.Second)
	if !r.Passed || r.Results[0].Attempts != 4 {
		t.Fatalf("report = %+v", r)
	}
	// One line when it starts failing, one when it passes: not one per attempt.
	var about []string
	for _, l := range lines {
		if strings.HasPrefix(l, "health check web ") {
			about = append(about, l)
		}
	}
	if len(about) != 2 || !strings.Contains(about[0], "failing (attempt 1)") || !strings.Contains(about[0], "503") ||
		!strings.Contains(about[1], "passed (attempt 4)") {
		t.Fatalf("log lines about the check = %q", about)
	}
}

func TestHTTPNothingListeningFailsAtTheDeadline(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	timeout := 500 * time.Millisecond
	r, _, took := runHTTP(t, HTTPCheck{URL: "http://" + addr + "/"}, timeout)
	res := r.Results[0]
	if r.Passed || res.Attempts < 2 || !strings.Contains(res.Message, "connection refused") || !strings.Contains(res.Message, "did not pass within 500ms") {
		t.Fatalf("report = %+v", r)
	}
	if took < timeout {
		t.Fatalf("gave up after %s, before the %s deadline", took, timeout)
	}
}

func TestHTTPHangingServerFailsAtTheDeadline(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer once.Do(func() { close(release) })
	r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL}, 300*time.Millisecond)
	if r.Passed || r.Results[0].Attempts != 1 || !strings.Contains(r.Results[0].Message, "no response before the deadline") {
		t.Fatalf("report = %+v", r)
	}
}

func TestHTTPRedirectToAnotherHostIsNotFollowed(t *testing.T) {
	var remoteHits atomic.Int32
	remote := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { remoteHits.Add(1) }))
	defer remote.Close()
	for _, target := range []string{remote.URL + "/health", "http://example.com/health"} {
		srv := httptest.NewServer(http.RedirectHandler(target, http.StatusFound))
		r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL}, 300*time.Millisecond)
		if r.Passed || !strings.Contains(r.Results[0].Message, "status 302 Found, want 200") || !strings.Contains(r.Results[0].Message, "not followed") {
			t.Errorf("redirect to %s: report = %+v", target, r)
		}
		// Who expects the redirect gets it.
		if r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL, ExpectStatus: 302}, 5*time.Second); !r.Passed {
			t.Errorf("redirect to %s, 302 expected: report = %+v", target, r)
		}
		srv.Close()
	}
	if n := remoteHits.Load(); n != 0 {
		t.Fatalf("the other host got %d requests", n)
	}
}

func TestHTTPRedirectOnTheSameHostIsFollowed(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle("/old", http.RedirectHandler("/health", http.StatusMovedPermanently))
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	if r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL + "/old"}, 5*time.Second); !r.Passed {
		t.Fatalf("report = %+v", r)
	}
}

// TLS is verified: a loopback server with a certificate of its own fails.
func TestHTTPSVerifiesTheCertificate(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake errors are the point
	srv.StartTLS()
	defer srv.Close()
	r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL}, 300*time.Millisecond)
	if r.Passed || !strings.Contains(r.Results[0].Message, "certificate") {
		t.Fatalf("report = %+v", r)
	}
}

func TestHTTPLoopbackIPv6(t *testing.T) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no IPv6 loopback here:", err) // CI machines have it: never skip there
		}
		t.Skip("no IPv6 loopback here:", err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	defer srv.Close()
	if r, _, _ := runHTTP(t, HTTPCheck{URL: srv.URL}, 5*time.Second); !r.Passed {
		t.Fatalf("report = %+v", r)
	}
}

// The dial guard holds the connection to what Validate judged, whatever a name
// resolves to: loopback, or the URL's own address.
func TestDialGuard(t *testing.T) {
	own := netip.MustParseAddr("192.0.2.10")
	cases := []struct {
		literal netip.Addr
		address string
		ok      bool
	}{
		{netip.Addr{}, "127.0.0.1:80", true},
		{netip.Addr{}, "[::1]:80", true},
		{netip.Addr{}, "192.0.2.10:80", false},
		{netip.Addr{}, "[::ffff:192.0.2.10]:80", false},
		{own, "192.0.2.10:80", true},
		{own, "[::ffff:192.0.2.10]:80", true},
		{own, "192.0.2.11:80", false},
	}
	for _, tc := range cases {
		err := dialGuard(tc.literal)("tcp", tc.address, nil)
		if (err == nil) != tc.ok {
			t.Errorf("literal %v, connect to %s: %v", tc.literal, tc.address, err)
		}
	}
}

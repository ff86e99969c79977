package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
)

// logRecord is the part of the agent's JSON log lines these tests read.
type logRecord struct {
	Msg, Peer, Reason, Err string
	Suppressed             uint64
}

func (a *agentProcess) records(t *testing.T, msg string) []logRecord {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []logRecord
	for _, line := range a.log {
		var r logRecord
		if json.Unmarshal([]byte(line), &r) == nil && r.Msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// handshakeAs connects to the agent as a peer presenting certs (or, with plain, as
// an HTTP client) and returns the peer address the agent sees. It waits for the
// agent's verdict: in TLS 1.3 the client's side ends before the server checked it.
func handshakeAs(t *testing.T, a *agentProcess, plain bool, certs ...tls.Certificate) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", a.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if plain {
		_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: agent\r\n\r\n")
		_, _ = conn.Read(make([]byte, 1))
		return conn.LocalAddr().String()
	}
	tc := tls.Client(conn, &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: a.ca.Pool(), NextProtos: []string{"h2"},
		ServerName: identity.MachineDNSName("prod", "web-1"), Certificates: certs})
	if err := tc.Handshake(); err == nil {
		if _, err := tc.Read(make([]byte, 1)); err == nil {
			t.Fatal("the agent accepted the handshake")
		}
	}
	return conn.LocalAddr().String()
}

func statusOf(t *testing.T, c agentv1.AgentServiceClient) *agentv1.StatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx, &agentv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// eventually polls cond for up to 20 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Each forged or missing client certificate is refused by the real nio-agent, which
// logs the peer and the reason and counts it in Status.
func TestRefusedHandshakesAreLoggedWithPeerAndReasonAndCounted(t *testing.T) {
	a := startAgent(t, nixtest.New(t))
	other := certtest.NewCA(t)
	expiredCrt, expiredKey := a.ca.Issue(t, certtest.Options{
		CommonName: "nio-operator", URIs: []*url.URL{identity.OperatorURL()}, ClientAuth: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
	})
	plainCrt, plainKey := a.ca.Issue(t, certtest.Options{CommonName: "nio-operator", ClientAuth: true})

	cases := []struct {
		name   string
		plain  bool
		certs  []tls.Certificate
		reason string
	}{
		{"no client certificate", false, nil, "no_certificate"},
		{"certificate of another CA", false, []tls.Certificate{other.OperatorClient(t)}, "unknown_ca"},
		{"expired certificate", false, []tls.Certificate{certtest.KeyPair(t, expiredCrt, expiredKey)}, "expired"},
		{"no operator identity", false, []tls.Certificate{certtest.KeyPair(t, plainCrt, plainKey)}, "wrong_identity"},
		{"plain HTTP", true, nil, "other"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			peer := handshakeAs(t, a, c.plain, c.certs...)
			eventually(t, "a log line for "+peer, func() bool {
				for _, r := range a.records(t, "refused TLS handshake") {
					if r.Peer == peer {
						if r.Reason != c.reason || r.Err == "" {
							t.Fatalf("logged %+v, want reason %s and the error", r, c.reason)
						}
						return true
					}
				}
				return false
			})
		})
	}

	got := statusOf(t, a.client(t)).GetRefusedHandshakes()
	want := map[string]uint64{"no_certificate": 1, "unknown_ca": 1, "expired": 1, "wrong_identity": 1, "other": 1}
	if len(got) != len(want) {
		t.Errorf("refused_handshakes %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("refused_handshakes[%s] = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
}

// A flood of 1000 bad handshakes leaves --handshake-log-limit lines and a summary
// per window in the log, while Status counts every one.
func TestHandshakeFloodKeepsTheLogBounded(t *testing.T) {
	const flood, limit, window = 1000, 10, 5 * time.Second
	a := startAgent(t, nixtest.New(t), "--handshake-log-window="+window.String())
	other := certtest.NewCA(t).OperatorClient(t)

	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range next {
				if i%2 == 0 {
					handshakeAs(t, a, false)
				} else {
					handshakeAs(t, a, false, other)
				}
			}
		})
	}
	for i := range flood {
		next <- i
	}
	close(next)
	wg.Wait()
	took := time.Since(start)

	st := statusOf(t, a.client(t)).GetRefusedHandshakes()
	if st["no_certificate"] != flood/2 || st["unknown_ca"] != flood/2 {
		t.Errorf("refused_handshakes %v, want %d no_certificate and %d unknown_ca", st, flood/2, flood/2)
	}
	// Every refusal is either a line of its own or in a summary, once the last
	// window has ended.
	var lines, summaries []logRecord
	eventually(t, "the summary of the flood", func() bool {
		lines, summaries = a.records(t, "refused TLS handshake"), a.records(t, "refused TLS handshakes suppressed")
		n := uint64(len(lines))
		for _, s := range summaries {
			n += s.Suppressed
		}
		return n == flood
	})
	windows := int(took/window) + 2 // the flood may straddle window boundaries
	if len(lines) > limit*windows || len(summaries) > windows {
		t.Fatalf("%d refusal lines and %d summaries for a flood of %v (window %v), want at most %d and %d",
			len(lines), len(summaries), took, window, limit*windows, windows)
	}
	t.Logf("flood of %d in %v: %d lines, %d summaries", flood, took, len(lines), len(summaries))
}

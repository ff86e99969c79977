package handshake

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/certs"
	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/testkit/certtest"
)

// serverHandshake runs the agent's real server TLS configuration against a client
// over loopback TCP and returns the server's handshake error.
func serverHandshake(t *testing.T, store *certs.Store, client func(net.Conn)) error {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := net.Dial("tcp", lis.Addr().String())
		if err != nil {
			return
		}
		defer c.Close()
		client(c)
	}()
	conn, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	srv := tls.Server(conn, store.ServerConfig())
	herr := srv.Handshake()
	srv.Close()
	<-done
	return herr
}

// tlsClient is a client that completes its side of the handshake and waits for the
// server's verdict.
func tlsClient(ca *certtest.CA, cfg *tls.Config) func(net.Conn) {
	return func(c net.Conn) {
		cfg.RootCAs = ca.Pool()
		cfg.ServerName = identity.MachineDNSName("prod", "web-1")
		if cfg.MinVersion == 0 {
			cfg.MinVersion = tls.VersionTLS13
		}
		tc := tls.Client(c, cfg)
		if tc.Handshake() == nil {
			_, _ = tc.Read(make([]byte, 1)) // the server's alert, or its close
		}
	}
}

func loadStore(t *testing.T) (*certs.Store, *certtest.CA) {
	t.Helper()
	ca := certtest.NewCA(t)
	crt, key := ca.MachineServer(t, "prod", "web-1")
	store, err := certs.Load(certtest.WriteFiles(t, filepath.Join(t.TempDir(), "tls"), ca.CertPEM, crt, key))
	if err != nil {
		t.Fatal(err)
	}
	return store, ca
}

// The reasons come from what crypto/tls really returns for each kind of peer —
// including the one it reports only as text (no certificate).
func TestClassifyTheTLSStacksOwnErrors(t *testing.T) {
	store, ca := loadStore(t)
	other := certtest.NewCA(t)
	operatorURI := []*url.URL{identity.OperatorURL()}
	issue := func(o certtest.Options) tls.Certificate {
		crt, key := ca.Issue(t, o)
		return certtest.KeyPair(t, crt, key)
	}
	machineCrt, machineKey := ca.MachineServer(t, "prod", "web-2")

	cases := []struct {
		name   string
		client func(net.Conn)
		want   string
	}{
		{"no certificate", tlsClient(ca, &tls.Config{}), ReasonNoCertificate},
		{"certificate of another CA", tlsClient(ca, &tls.Config{Certificates: []tls.Certificate{other.OperatorClient(t)}}), ReasonUnknownCA},
		{"expired", tlsClient(ca, &tls.Config{Certificates: []tls.Certificate{issue(certtest.Options{
			CommonName: "nio-operator", URIs: operatorURI, ClientAuth: true,
			NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})}}), ReasonExpired},
		{"not yet valid", tlsClient(ca, &tls.Config{Certificates: []tls.Certificate{issue(certtest.Options{
			CommonName: "nio-operator", URIs: operatorURI, ClientAuth: true,
			NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})}}), ReasonExpired},
		{"no operator identity", tlsClient(ca, &tls.Config{Certificates: []tls.Certificate{issue(certtest.Options{
			CommonName: "nio-operator", ClientAuth: true})}}), ReasonWrongIdentity},
		{"a machine's server certificate", tlsClient(ca, &tls.Config{Certificates: []tls.Certificate{certtest.KeyPair(t, machineCrt, machineKey)}}), ReasonWrongIdentity},
		{"TLS 1.2", tlsClient(ca, &tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12,
			Certificates: []tls.Certificate{ca.OperatorClient(t)}}), ReasonOther},
		{"plain HTTP", func(c net.Conn) {
			_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")
			_, _ = c.Read(make([]byte, 1))
		}, ReasonOther},
		{"connect and hang up", func(net.Conn) {}, ReasonOther},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := serverHandshake(t, store, c.client)
			if err == nil {
				t.Fatal("the handshake succeeded")
			}
			if got := Classify(err); got != c.want {
				t.Fatalf("Classify(%v) = %s, want %s", err, got, c.want)
			}
		})
	}
	t.Run("the operator", func(t *testing.T) {
		if err := serverHandshake(t, store, tlsClient(ca, &tls.Config{Certificates: []tls.Certificate{ca.OperatorClient(t)}})); err != nil {
			t.Fatalf("the operator was refused: %v", err)
		}
	})
}

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// records are the JSON log lines written so far.
func (b *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func byMsg(recs []map[string]any, msg string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r["msg"] == msg {
			out = append(out, r)
		}
	}
	return out
}

var errForeignCA = &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}

// A flood is logged as Limit lines and one summary per window, and counted exactly.
func TestFloodIsLoggedBoundedAndCountedExactly(t *testing.T) {
	var sink syncBuffer
	r := NewRecorder(slog.New(slog.NewJSONHandler(&sink, nil)), 10, time.Hour)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r.now = func() time.Time { return now }

	for i := range 1000 {
		err := errors.New("tls: client didn't provide a certificate")
		if i%2 == 1 {
			err = errForeignCA
		}
		r.Refused("203.0.113.9:41000", err)
	}
	recs := sink.records(t)
	if len(recs) != 10 {
		t.Fatalf("%d log lines for 1000 refusals in one window, want 10", len(recs))
	}
	first := recs[0]
	if first["msg"] != "refused TLS handshake" || first["peer"] != "203.0.113.9:41000" || first["reason"] != ReasonNoCertificate ||
		!strings.Contains(first["err"].(string), "didn't provide a certificate") || first["level"] != "WARN" {
		t.Errorf("first line %v", first)
	}

	// The next window starts with the summary of the last one.
	now = now.Add(time.Hour)
	r.Refused("198.51.100.4:5000", errForeignCA)
	recs = sink.records(t)
	sums := byMsg(recs, "refused TLS handshakes suppressed")
	if len(sums) != 1 || len(recs) != 12 {
		t.Fatalf("after the window: %d lines, %d summaries; want 12 and 1:\n%v", len(recs), len(sums), recs)
	}
	s := sums[0]
	if s["suppressed"] != 990.0 || s[ReasonNoCertificate] != 495.0 || s[ReasonUnknownCA] != 495.0 || s["window"] != "1h0m0s" {
		t.Errorf("summary %v", s)
	}
	if last := recs[11]; last["peer"] != "198.51.100.4:5000" || last["reason"] != ReasonUnknownCA {
		t.Errorf("first line of the new window %v", last)
	}
	want := map[string]uint64{ReasonNoCertificate: 500, ReasonUnknownCA: 501, ReasonExpired: 0, ReasonWrongIdentity: 0, ReasonOther: 0}
	got := r.Counts()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("Counts()[%s] = %d, want %d (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("Counts() = %v, want every reason and no other", got)
	}
}

// When the flood stops, its summary still comes at the end of the window.
func TestSummaryComesAtTheWindowsEndWhenTheFloodStops(t *testing.T) {
	var sink syncBuffer
	r := NewRecorder(slog.New(slog.NewJSONHandler(&sink, nil)), 2, 200*time.Millisecond)
	for range 50 {
		r.Refused("192.0.2.1:1", certs.ErrNotOperator)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := sink.records(t)
		if sums := byMsg(recs, "refused TLS handshakes suppressed"); len(sums) == 1 {
			if sums[0]["suppressed"] != 48.0 || sums[0][ReasonWrongIdentity] != 48.0 || len(recs) != 3 {
				t.Fatalf("lines %v", recs)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no summary after the window; lines %v", recs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An error text is bounded: x509 errors quote names the peer chose.
func TestLoggedErrorIsBounded(t *testing.T) {
	var sink syncBuffer
	r := NewRecorder(slog.New(slog.NewJSONHandler(&sink, nil)), 1, time.Hour)
	r.Refused("192.0.2.1:1", errors.New("x509: "+strings.Repeat("é", 1000)))
	recs := sink.records(t)
	if msg := recs[0]["err"].(string); len(msg) > maxErrText+len("…") || strings.ContainsRune(msg, '\uFFFD') {
		t.Errorf("logged error of %d bytes: %q", len(msg), msg)
	}
}

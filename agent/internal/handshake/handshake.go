// Package handshake records the TLS handshakes the agent refuses. Each refusal is
// classified (no certificate, unknown CA, expired, wrong identity, other), counted
// for Status, and logged with the peer's address — at most Limit lines per Window,
// the rest summed up in one line at the window's end — so that a host under attack,
// or an operator whose CA is not the host's, leaves a trace without filling the disk.
package handshake

import (
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/homystack/nio/agent/internal/certs"
)

// Reasons a handshake is refused: the keys of StatusResponse.refused_handshakes and
// the reason of the log lines.
const (
	// ReasonNoCertificate: the client sent no certificate.
	ReasonNoCertificate = "no_certificate"
	// ReasonUnknownCA: the certificate does not chain to the operator CA in ca.crt
	// (another CA, a self-signed one, a forged signature).
	ReasonUnknownCA = "unknown_ca"
	// ReasonExpired: the certificate is expired or not yet valid (also: a skewed clock).
	ReasonExpired = "expired"
	// ReasonWrongIdentity: the certificate chains to the CA but is not the operator's
	// (no operator URI, or not issued for client authentication, like a machine's).
	ReasonWrongIdentity = "wrong_identity"
	// ReasonOther: anything else — not TLS (a plain HTTP client, a port scan that
	// hangs up), an old TLS version, no ALPN, a timeout.
	ReasonOther = "other"
)

// Reasons lists every reason, in the order of the summary line.
var Reasons = [numReasons]string{ReasonNoCertificate, ReasonUnknownCA, ReasonExpired, ReasonWrongIdentity, ReasonOther}

const numReasons = 5

// Defaults of the log's rate limit.
const (
	DefaultLimit  = 10
	DefaultWindow = time.Minute
)

// crypto/tls reports a missing client certificate with this error text only (no
// typed error); TestClassifyTheTLSStacksOwnErrors pins it.
const noCertificateText = "client didn't provide a certificate"

// maxErrText bounds the handshake error in a log line: x509 errors quote the
// subject names of the peer's certificate, which the peer chooses.
const maxErrText = 200

// Classify names the reason of a server-side handshake error.
func Classify(err error) string {
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case err == nil:
		return ReasonOther
	case errors.Is(err, certs.ErrNotOperator):
		return ReasonWrongIdentity
	case errors.As(err, &unknown):
		return ReasonUnknownCA
	case errors.As(err, &invalid):
		switch invalid.Reason {
		case x509.Expired:
			return ReasonExpired
		case x509.IncompatibleUsage:
			return ReasonWrongIdentity
		}
		return ReasonUnknownCA
	case strings.Contains(err.Error(), noCertificateText):
		return ReasonNoCertificate
	}
	return ReasonOther
}

// Recorder counts and logs refused handshakes; safe for concurrent use.
type Recorder struct {
	log    *slog.Logger
	limit  int
	window time.Duration
	now    func() time.Time

	counts [numReasons]atomic.Uint64 // by index in Reasons

	mu         sync.Mutex
	start      time.Time          // of the current window
	logged     int                // lines logged in it
	suppressed [numReasons]uint64 // refusals not logged in it, by index in Reasons
	flush      *time.Timer
}

// NewRecorder logs to log at most limit refusals per window (limit 0: none, only
// the summaries); window 0 means DefaultWindow. A nil log discards.
func NewRecorder(log *slog.Logger, limit int, window time.Duration) *Recorder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if window <= 0 {
		window = DefaultWindow
	}
	return &Recorder{log: log, limit: max(limit, 0), window: window, now: time.Now}
}

// Refused records one refused handshake from peer.
func (r *Recorder) Refused(peer string, err error) {
	reason := Classify(err)
	i := index(reason)
	r.counts[i].Add(1)

	r.mu.Lock()
	now := r.now()
	if now.Sub(r.start) >= r.window {
		r.summarizeLocked()
		r.start, r.logged = now, 0
	}
	if r.logged < r.limit {
		r.logged++
		r.mu.Unlock()
		r.log.Warn("refused TLS handshake", "peer", peer, "reason", reason, "err", errText(err))
		return
	}
	r.suppressed[i]++
	if r.flush == nil {
		// The summary comes at the window's end even when the flood stops.
		r.flush = time.AfterFunc(r.start.Add(r.window).Sub(now), r.summarize)
	}
	r.mu.Unlock()
}

func (r *Recorder) summarize() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.summarizeLocked()
}

// summarizeLocked logs the one line of the refusals suppressed in the window.
func (r *Recorder) summarizeLocked() {
	if r.flush != nil {
		r.flush.Stop()
		r.flush = nil
	}
	var total uint64
	attrs := []any{}
	for i, n := range r.suppressed {
		if n > 0 {
			total += n
			attrs = append(attrs, Reasons[i], n)
		}
	}
	if total == 0 {
		return
	}
	r.suppressed = [numReasons]uint64{}
	r.log.Warn("refused TLS handshakes suppressed", append([]any{"suppressed", total, "window", r.window.String(), "logged", r.logged}, attrs...)...)
}

// Counts returns the refusals since the start, by reason; every reason is present.
func (r *Recorder) Counts() map[string]uint64 {
	m := make(map[string]uint64, len(Reasons))
	for i, reason := range Reasons {
		m[reason] = r.counts[i].Load()
	}
	return m
}

// Credentials wraps the agent's TLS credentials so that every failed server
// handshake is recorded; what it accepts is unchanged.
func (r *Recorder) Credentials(c credentials.TransportCredentials) credentials.TransportCredentials {
	return &recordingCreds{TransportCredentials: c, r: r}
}

type recordingCreds struct {
	credentials.TransportCredentials
	r *Recorder
}

func (c *recordingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		c.r.Refused(conn.RemoteAddr().String(), err)
	}
	return out, info, err
}

func (c *recordingCreds) Clone() credentials.TransportCredentials {
	return &recordingCreds{TransportCredentials: c.TransportCredentials.Clone(), r: c.r}
}

func index(reason string) int {
	for i, r := range Reasons {
		if r == reason {
			return i
		}
	}
	return len(Reasons) - 1
}

func errText(err error) string {
	s := err.Error()
	if len(s) > maxErrText {
		s = strings.ToValidUTF8(s[:maxErrText], "") + "…"
	}
	return s
}

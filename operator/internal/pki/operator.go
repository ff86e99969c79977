package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync"
	"time"
)

// OperatorCredentials is the operator's side of mTLS to agents: its client
// certificate, issued in memory and re-issued at 2/3 of its life on the next
// handshake, and the CA pool agents' server certificates must chain to. Safe for
// concurrent use; one value serves every connection.
type OperatorCredentials struct {
	issuer *Issuer
	pool   *x509.CertPool

	mu   sync.Mutex
	cert *tls.Certificate
}

// OperatorCredentials returns the operator's credentials, backed by this Issuer.
// The first certificate is issued on first use.
func (i *Issuer) OperatorCredentials() *OperatorCredentials {
	return &OperatorCredentials{issuer: i, pool: i.ca.Pool()}
}

// GetClientCertificate is a tls.Config.GetClientCertificate callback. It hands out
// the current certificate, re-issuing it once it reaches 2/3 of its life, so
// long-running operators never present an expired one.
func (c *OperatorCredentials) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return c.Certificate()
}

// Certificate returns the current client certificate, issuing or renewing it first
// when needed. If renewal fails while the old one is still valid, the old one is
// returned: an unreachable renewal must not cut the fleet off early.
func (c *OperatorCredentials) Certificate() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.issuer.now()
	if c.cert != nil && !NeedsRenewal(c.cert.Leaf.NotBefore, c.cert.Leaf.NotAfter, now) {
		return c.cert, nil
	}
	fresh, err := c.issuer.issueOperatorClient()
	if err != nil {
		if c.cert != nil && now.Before(c.cert.Leaf.NotAfter) {
			return c.cert, nil
		}
		return nil, err
	}
	c.cert = fresh
	return c.cert, nil
}

// RootCAs is the pool holding only the operator CA, for tls.Config.RootCAs.
func (c *OperatorCredentials) RootCAs() *x509.CertPool { return c.pool }

// ClientTLSConfig is the configuration for dialing the agent of Machine
// namespace/name: TLS 1.3, the operator CA as the only root, the Machine's DNS name
// as the name the server certificate must carry (so one host cannot answer for
// another), and the operator's client certificate.
func (c *OperatorCredentials) ClientTLSConfig(namespace, name string) (*tls.Config, error) {
	dns, err := machineDNSName(namespace, name)
	if err != nil {
		return nil, fmt.Errorf("agent TLS config: %w", err)
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		RootCAs:              c.pool,
		ServerName:           dns,
		GetClientCertificate: c.GetClientCertificate,
	}, nil
}

// NeedsRenewal reports whether a certificate valid from notBefore to notAfter should
// be renewed at now: from 2/3 of its life on (and when it has expired).
func NeedsRenewal(notBefore, notAfter, now time.Time) bool {
	life := notAfter.Sub(notBefore)
	if life <= 0 {
		return true
	}
	return !now.Before(notBefore.Add(life / 3 * 2))
}

// CertificateNeedsRenewal is NeedsRenewal for a parsed certificate.
func CertificateNeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	return NeedsRenewal(cert.NotBefore, cert.NotAfter, now)
}

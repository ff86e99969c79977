package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/homystack/nio/api/identity"
)

// DefaultLogServerValidity: the log endpoint's certificate lives in memory only.
const DefaultLogServerValidity = 30 * 24 * time.Hour

// LogServerCredentials is the serving certificate of the operator's log endpoint
// (`nio logs`), issued by the operator CA in memory and re-issued at 2/3 of its
// life on the next handshake. It names only the endpoint's own hosts: never a
// Machine's name (identity.MachineDomain) and never the operator's identity, so the
// key can't stand in for an agent or for the operator towards an agent.
type LogServerCredentials struct {
	issuer *Issuer
	dns    []string
	ips    []net.IP

	mu   sync.Mutex
	cert *tls.Certificate
}

// LogServerCredentials returns credentials for hosts: DNS names and IP addresses.
func (i *Issuer) LogServerCredentials(hosts []string) (*LogServerCredentials, error) {
	c := &LogServerCredentials{issuer: i}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		switch {
		case h == "":
		case net.ParseIP(h) != nil:
			c.ips = append(c.ips, net.ParseIP(h))
		case strings.HasSuffix(strings.TrimSuffix(strings.ToLower(h), "."), "."+identity.MachineDomain):
			return nil, fmt.Errorf("log server host %q: names under %s are Machines'", h, identity.MachineDomain)
		default:
			c.dns = append(c.dns, h)
		}
	}
	if len(c.dns)+len(c.ips) == 0 {
		return nil, fmt.Errorf("log server certificate: no host names")
	}
	if _, err := c.Certificate(); err != nil {
		return nil, err
	}
	return c, nil
}

// GetCertificate is a tls.Config.GetCertificate callback.
func (c *LogServerCredentials) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.Certificate()
}

// Certificate returns the current certificate, issuing or renewing it when needed
// (the old one while it is valid if renewal fails).
func (c *LogServerCredentials) Certificate() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.issuer.now()
	if c.cert != nil && !NeedsRenewal(c.cert.Leaf.NotBefore, c.cert.Leaf.NotAfter, now) {
		return c.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "nio-operator-logs"},
		DNSNames:    c.dns,
		IPAddresses: c.ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	cert, err := c.issuer.sign(tmpl, key.Public(), DefaultLogServerValidity)
	if err != nil {
		if c.cert != nil && now.Before(c.cert.Leaf.NotAfter) {
			return c.cert, nil
		}
		return nil, fmt.Errorf("issue log server certificate: %w", err)
	}
	c.cert = &tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
	return c.cert, nil
}

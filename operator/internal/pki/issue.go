package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/homystack/nio/api/identity"
)

// Default certificate lifetimes. Both renew at 2/3 of their life (NeedsRenewal).
const (
	// DefaultOperatorClientValidity: the operator's client certificate lives in
	// memory only, so it can be short.
	DefaultOperatorClientValidity = 30 * 24 * time.Hour
	// DefaultMachineServerValidity leaves a month between the renewal point and
	// expiry, for hosts that are off for a while.
	DefaultMachineServerValidity = 90 * 24 * time.Hour
)

// OperatorCommonName is the subject CN of the operator's client certificate. The
// agent identifies the operator by the URI SAN identity.OperatorURI, not by this.
const OperatorCommonName = "nio-operator"

// Issuer signs certificates with a CA.
type Issuer struct {
	ca *CA
	// Now is the clock; tests replace it. Defaults to time.Now.
	Now func() time.Time
	// OperatorClientValidity is the life of the operator's client certificate.
	OperatorClientValidity time.Duration
	// MachineServerValidity is the life of a Machine's server certificate.
	MachineServerValidity time.Duration
}

// NewIssuer returns an Issuer for ca with the default lifetimes.
func NewIssuer(ca *CA) *Issuer {
	return &Issuer{
		ca:                     ca,
		Now:                    time.Now,
		OperatorClientValidity: DefaultOperatorClientValidity,
		MachineServerValidity:  DefaultMachineServerValidity,
	}
}

// CA returns the issuing CA.
func (i *Issuer) CA() *CA { return i.ca }

// MachineIdentity is a Machine agent's TLS identity in the files of its --tls-dir.
type MachineIdentity struct {
	// CertPEM is tls.crt: the server certificate.
	CertPEM []byte
	// KeyPEM is tls.key: the private key (PKCS#8). Secret: never log it.
	KeyPEM []byte
	// CAPEM is ca.crt: the operator CA the agent trusts for client certificates.
	CAPEM []byte
	// NotAfter is the certificate's expiry.
	NotAfter time.Time
}

// IssueMachineServer generates a key and a server certificate for Machine
// namespace/name, for the first delivery only (over SSH, or in nixos-anywhere's
// extra files): afterwards the agent renews with its own key through a CSR
// (SignMachineCSR), so the operator's copy of this key goes out of use.
func (i *Issuer) IssueMachineServer(namespace, name string) (MachineIdentity, error) {
	dns, err := machineDNSName(namespace, name)
	if err != nil {
		return MachineIdentity{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return MachineIdentity{}, fmt.Errorf("generate key for %s: %w", dns, err)
	}
	cert, err := i.signMachine(dns, key.Public())
	if err != nil {
		return MachineIdentity{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return MachineIdentity{}, fmt.Errorf("marshal key for %s: %w", dns, err)
	}
	return MachineIdentity{
		CertPEM:  pemEncode("CERTIFICATE", cert.Raw),
		KeyPEM:   pemEncode("PRIVATE KEY", keyDER),
		CAPEM:    i.ca.CertPEM,
		NotAfter: cert.NotAfter,
	}, nil
}

// SignMachineCSR signs a renewal CSR from the agent of Machine namespace/name and
// returns the PEM certificate. Only the CSR's public key is used; the certificate is
// built from scratch with server auth and the Machine's DNS name only. The CSR is
// refused when its signature is wrong, or when it asks for anything else: another
// DNS name, an IP address, URI or email, a CN other than the Machine's name, client
// auth or any usage but server auth, or a CA certificate. A compromised host can
// thus renew only its own serving identity.
func (i *Issuer) SignMachineCSR(csrPEM []byte, namespace, name string) ([]byte, error) {
	dns, err := machineDNSName(namespace, name)
	if err != nil {
		return nil, err
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", dns, err)
	}
	if err := checkMachineCSR(csr, dns); err != nil {
		return nil, fmt.Errorf("sign CSR for %s: %w", dns, err)
	}
	cert, err := i.signMachine(dns, csr.PublicKey)
	if err != nil {
		return nil, err
	}
	return pemEncode("CERTIFICATE", cert.Raw), nil
}

// issueOperatorClient generates a key and the operator's client certificate.
func (i *Issuer) issueOperatorClient() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate operator client key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: OperatorCommonName},
		URIs:        []*url.URL{identity.OperatorURL()},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cert, err := i.sign(tmpl, key.Public(), i.OperatorClientValidity)
	if err != nil {
		return nil, fmt.Errorf("issue operator client certificate: %w", err)
	}
	return &tls.Certificate{
		Certificate: [][]byte{cert.Raw},
		PrivateKey:  key,
		Leaf:        cert,
	}, nil
}

func (i *Issuer) signMachine(dns string, pub crypto.PublicKey) (*x509.Certificate, error) {
	usage := x509.KeyUsageDigitalSignature
	if _, ok := pub.(*rsa.PublicKey); ok {
		// RSA key exchange in TLS 1.2 encrypts to the key; harmless to allow.
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: dns},
		DNSNames:    []string{dns},
		KeyUsage:    usage,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	cert, err := i.sign(tmpl, pub, i.MachineServerValidity)
	if err != nil {
		return nil, fmt.Errorf("issue server certificate for %s: %w", dns, err)
	}
	return cert, nil
}

// sign fills the validity and serial of tmpl and signs it. The end is capped at the
// CA's own expiry: a certificate outliving its CA would not verify anyway.
func (i *Issuer) sign(tmpl *x509.Certificate, pub crypto.PublicKey, validity time.Duration) (*x509.Certificate, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("validity %s must be positive", validity)
	}
	now := i.now()
	if now.After(i.ca.Cert.NotAfter) {
		return nil, fmt.Errorf("the CA expired at %s; replace the CA secret", i.ca.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-clockSkew)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(i.ca.Cert.NotAfter) {
		tmpl.NotAfter = i.ca.Cert.NotAfter
	}
	tmpl.BasicConstraintsValid = true
	tmpl.IsCA = false
	der, err := x509.CreateCertificate(rand.Reader, tmpl, i.ca.Cert, pub, i.ca.key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func (i *Issuer) now() time.Time {
	if i.Now == nil {
		return time.Now()
	}
	return i.Now()
}

// machineDNSName validates the Machine's namespace and name as the API server does
// and returns its certificate name.
func machineDNSName(namespace, name string) (string, error) {
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return "", fmt.Errorf("namespace %q: %s", namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return "", fmt.Errorf("machine name %q: %s", name, strings.Join(errs, "; "))
	}
	dns := identity.MachineDNSName(namespace, name)
	if len(dns) > validation.DNS1123SubdomainMaxLength {
		return "", errors.New("machine DNS name " + dns + " is longer than 253 characters")
	}
	return dns, nil
}

// Package pki is the operator's certificate authority: the CA kept in a Secret of
// the operator's namespace, the operator's own client certificate, the server
// certificates of Machines (issued whole for the first delivery, or signed from the
// agent's CSR on renewal), and the rule for when a certificate is renewed.
package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultCASecretName is the name of the Secret holding the CA when none is configured.
const DefaultCASecretName = "nio-ca"

// CAValidity is how long a newly created CA is valid. It is long on purpose: every
// agent trusts it, and replacing it means re-delivering ca.crt to every host.
const CAValidity = 10 * 365 * 24 * time.Hour

// clockSkew backdates every certificate so a host whose clock runs a little behind
// the operator's accepts it at once.
const clockSkew = 5 * time.Minute

// CA is the operator's certificate authority.
type CA struct {
	// Cert is the self-signed CA certificate.
	Cert *x509.Certificate
	// CertPEM is Cert in PEM form, as written to the agents' ca.crt.
	CertPEM []byte
	key     crypto.Signer
}

// NewCA generates a self-signed ECDSA P-256 CA valid for CAValidity from now.
// P-256 because every Go TLS stack and OpenSSL accept it for both signatures and
// handshakes.
func NewCA(now time.Time) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "nio CA", Organization: []string{"nio.homystack.com"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaves only; it never delegates to an intermediate.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA: %w", err)
	}
	return &CA{Cert: cert, CertPEM: pemEncode("CERTIFICATE", der), key: key}, nil
}

// ParseCA reads a CA from PEM certificate and PEM private key (PKCS#8, SEC 1 or
// PKCS#1). It checks that the certificate is a CA and that the key belongs to it.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("CA certificate is not a CA (basicConstraints cA and keyUsage certSign required)")
	}
	key, err := parsePrivateKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, errors.New("CA key does not match the CA certificate")
	}
	// Keep the certificate's own PEM encoding canonical (one block, no extra text).
	return &CA{Cert: cert, CertPEM: pemEncode("CERTIFICATE", cert.Raw), key: key}, nil
}

// KeyPEM returns the CA private key as PKCS#8 PEM, for storing in the Secret.
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("marshal CA key: %w", err)
	}
	return pemEncode("PRIVATE KEY", der), nil
}

// Pool returns a CertPool holding only this CA: what the operator verifies agents
// against (never the system roots).
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// LoadOrCreateCA returns the CA kept in Secret namespace/name (keys tls.crt and
// tls.key), creating it when absent. Several operator replicas, or goroutines,
// starting at once end up with the same CA: each tries to create the Secret, the
// API server accepts exactly one, and the others read the winner back.
//
// c must read from the API server, not from an informer cache that may not have
// started or may lag (use client.New, not the manager's cached client). An existing
// Secret that does not hold a valid CA is an error, never overwritten: every agent
// trusts the CA in it.
func LoadOrCreateCA(ctx context.Context, c client.Client, namespace, name string, now time.Time) (*CA, error) {
	key := client.ObjectKey{Namespace: namespace, Name: name}
	ca, err := readCASecret(ctx, c, key)
	if err == nil {
		return ca, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, err
	}

	ca, err = NewCA(now)
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	immutable := true
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: namespace,
			Name:      name,
			Labels:    map[string]string{"app.kubernetes.io/managed-by": "nio-operator", "app.kubernetes.io/component": "ca"},
		},
		Type: corev1.SecretTypeTLS,
		// Immutable: an edit would silently split the fleet between two CAs.
		// Replacing the CA is a deliberate delete and restart.
		Immutable: &immutable,
		Data:      map[string][]byte{corev1.TLSCertKey: ca.CertPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}
	err = c.Create(ctx, secret)
	switch {
	case err == nil:
		return ca, nil
	case apierrors.IsAlreadyExists(err):
		// Another replica won the race: its CA is the one every agent will trust.
		ca, err := readCASecret(ctx, c, key)
		if err != nil {
			return nil, fmt.Errorf("read CA secret %s created concurrently: %w", key, err)
		}
		return ca, nil
	default:
		return nil, fmt.Errorf("create CA secret %s: %w", key, err)
	}
}

// readCASecret returns the CA in the Secret; a missing Secret is returned as the
// API's NotFound error, unwrapped enough for apierrors.IsNotFound.
func readCASecret(ctx context.Context, c client.Client, key client.ObjectKey) (*CA, error) {
	var secret corev1.Secret
	if err := c.Get(ctx, key, &secret); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, err
		}
		return nil, fmt.Errorf("get CA secret %s: %w", key, err)
	}
	ca, err := ParseCA(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("CA secret %s (keys %s, %s) does not hold a usable CA; fix or delete it: %w",
			key, corev1.TLSCertKey, corev1.TLSPrivateKeyKey, err)
	}
	return ca, nil
}

func newSerial() (*big.Int, error) {
	// 128 random bits: unique without a counter shared between replicas.
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func pemEncode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func parseCertificatePEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		// The parse error never quotes key bytes.
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", key)
	}
	return signer, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

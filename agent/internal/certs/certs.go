// Package certs holds the agent's TLS identity: the mTLS server configuration that
// admits only the operator, and the serving certificate that RenewCertificate swaps
// without a restart.
package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/homystack/nio/api/identity"
)

// File names inside the TLS directory.
const (
	CAFile   = "ca.crt"
	CertFile = "tls.crt"
	KeyFile  = "tls.key"
)

// Store holds the CA and the serving certificate of one TLS directory.
type Store struct {
	dir  string
	pool *x509.CertPool

	mu   sync.RWMutex
	cert *tls.Certificate
	leaf *x509.Certificate
}

// Load reads ca.crt, tls.crt and tls.key from dir.
func Load(dir string) (*Store, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("read operator CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", filepath.Join(dir, CAFile))
	}
	kp, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("load serving certificate from %s: %w", dir, err)
	}
	s := &Store{dir: dir, pool: pool}
	if err := s.set(&kp); err != nil {
		return nil, err
	}
	return s, nil
}

// WaitLoad is Load once the identity is there. A host's agent can start before the
// operator has delivered ca.crt, tls.crt and tls.key (over SSH, followed by `systemctl
// restart nio-agent`): it waits, checking every poll, instead of exiting, so systemd
// neither restarts it in a loop nor gives up on it. waiting is called once, with the
// first error, when it has to wait. Other errors (a file that exists but is not a
// certificate) return at once.
func WaitLoad(ctx context.Context, dir string, poll time.Duration, waiting func(error)) (*Store, error) {
	told := false
	for {
		s, err := Load(dir)
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return s, err
		}
		if !told && waiting != nil {
			waiting(err)
			told = true
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func (s *Store) set(kp *tls.Certificate) error {
	leaf, err := x509.ParseCertificate(kp.Certificate[0])
	if err != nil {
		return fmt.Errorf("parse serving certificate: %w", err)
	}
	kp.Leaf = leaf
	s.mu.Lock()
	s.cert, s.leaf = kp, leaf
	s.mu.Unlock()
	return nil
}

// NotAfter is the expiry of the certificate served now.
func (s *Store) NotAfter() time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leaf.NotAfter
}

// ServerConfig is the agent's TLS configuration: TLS 1.3 only, a client certificate
// chained to the CA is required, and it must carry the operator identity. The
// identity check runs in VerifyConnection, during the handshake, so a refused peer
// never reaches a gRPC handler. The serving certificate is read per handshake, so a
// renewed one is served at once.
func (s *Store) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  s.pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			s.mu.RLock()
			defer s.mu.RUnlock()
			return s.cert, nil
		},
		VerifyConnection: VerifyOperator,
		NextProtos:       []string{"h2"},
	}
}

// ErrNotOperator is the handshake error of a client certificate that chains to the
// CA but lacks the operator identity: another of the CA's certificates (a machine's),
// or a misissued one.
var ErrNotOperator = errors.New("client certificate lacks the operator identity " + identity.OperatorURI)

// VerifyOperator refuses a connection whose verified client certificate lacks the
// operator identity (identity.OperatorURI as a URI SAN).
func VerifyOperator(cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return errors.New("no verified client certificate")
	}
	if !identity.IsOperator(cs.VerifiedChains[0][0]) {
		return ErrNotOperator
	}
	return nil
}

// Renewal is one certificate renewal in progress: a fresh key that never leaves the
// host, and the CSR for it.
type Renewal struct {
	store   *Store
	dnsName string
	key     *ecdsa.PrivateKey
	CSRPEM  []byte
}

// BeginRenewal generates a new key and a CSR for dnsName.
func (s *Store) BeginRenewal(dnsName string) (*Renewal, error) {
	if _, _, err := identity.ParseMachineDNSName(dnsName); err != nil {
		return nil, fmt.Errorf("renew certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: dnsName},
		DNSNames: []string{dnsName},
	}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	return &Renewal{
		store:   s,
		dnsName: dnsName,
		key:     key,
		CSRPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}),
	}, nil
}

// Install checks the signed certificate (it is for this renewal's key, chains to the
// CA, names the machine and is valid now), writes tls.crt and tls.key (0600,
// atomically) and serves it from the next handshake on.
func (r *Renewal) Install(certPEM []byte) (notAfter time.Time, err error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return time.Time{}, errors.New("signed certificate is not a PEM CERTIFICATE")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse signed certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&r.key.PublicKey) {
		return time.Time{}, errors.New("signed certificate is not for the key of the CSR")
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		DNSName:   r.dnsName,
		Roots:     r.store.pool,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return time.Time{}, fmt.Errorf("verify signed certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(r.key)
	if err != nil {
		return time.Time{}, fmt.Errorf("marshal key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	kp, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return time.Time{}, fmt.Errorf("pair certificate and key: %w", err)
	}
	// The key goes first: a crash between the two writes leaves a mismatched pair
	// that Load refuses loudly, never a served certificate for a lost key.
	if err := writeAtomic(filepath.Join(r.store.dir, KeyFile), keyPEM); err != nil {
		return time.Time{}, err
	}
	if err := writeAtomic(filepath.Join(r.store.dir, CertFile), certPEM); err != nil {
		return time.Time{}, err
	}
	if err := r.store.set(&kp); err != nil {
		return time.Time{}, err
	}
	return cert.NotAfter, nil
}

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

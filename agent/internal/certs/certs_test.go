package certs

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/testkit/certtest"
)

func loadStore(t *testing.T) (*Store, *certtest.CA, string) {
	t.Helper()
	ca := certtest.NewCA(t)
	crt, key := ca.MachineServer(t, "prod", "web-1")
	dir := certtest.WriteFiles(t, t.TempDir(), ca.CertPEM, crt, key)
	s, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s, ca, dir
}

// sign issues a server certificate for pub with the given DNS names.
func sign(t *testing.T, ca *certtest.CA, pub any, dns ...string) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		DNSNames:     dns,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestInstallRefusesCertificatesThatDoNotFitTheRenewal(t *testing.T) {
	s, ca, dir := loadStore(t)
	dns := identity.MachineDNSName("prod", "web-1")
	before, _ := os.ReadFile(filepath.Join(dir, CertFile))

	r, err := s.BeginRenewal(dns)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := s.BeginRenewal(dns)
	cases := map[string][]byte{
		"another key":       sign(t, ca, &other.key.PublicKey, dns),
		"another machine":   sign(t, ca, &r.key.PublicKey, identity.MachineDNSName("prod", "web-2")),
		"another CA":        sign(t, certtest.NewCA(t), &r.key.PublicKey, dns),
		"not a certificate": []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
	}
	for name, pemBytes := range cases {
		if _, err := r.Install(pemBytes); err == nil {
			t.Errorf("%s: installed", name)
		}
	}
	after, _ := os.ReadFile(filepath.Join(dir, CertFile))
	if !bytes.Equal(before, after) {
		t.Error("a refused certificate was written")
	}
	if _, err := r.Install(sign(t, ca, &r.key.PublicKey, dns)); err != nil {
		t.Fatalf("the right certificate: %v", err)
	}
	key, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	if !strings.Contains(string(key), "PRIVATE KEY") {
		t.Error("key file not written")
	}
}

func TestBeginRenewalWantsAMachineName(t *testing.T) {
	s, _, _ := loadStore(t)
	if _, err := s.BeginRenewal("example.com"); err == nil {
		t.Error("a CSR for a name outside machine.nio was made")
	}
}

// An agent started before its identity was delivered waits for it, and serves the
// identity once all three files are there; a partial delivery is still waited for.
func TestWaitLoadWaitsForTheDeliveredIdentity(t *testing.T) {
	ca := certtest.NewCA(t)
	crt, key := ca.MachineServer(t, "prod", "web-1")
	staged := certtest.WriteFiles(t, t.TempDir(), ca.CertPEM, crt, key)
	dir := filepath.Join(t.TempDir(), "tls") // does not exist yet

	waited := make(chan error, 1)
	type result struct {
		s   *Store
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := WaitLoad(t.Context(), dir, 10*time.Millisecond, func(err error) { waited <- err })
		done <- result{s, err}
	}()
	if err := <-waited; !strings.Contains(err.Error(), CAFile) {
		t.Errorf("waiting reason %q does not name %s", err, CAFile)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// The CA first: the agent must keep waiting for the certificate and key.
	for i, name := range []string{CAFile, CertFile, KeyFile} {
		select {
		case r := <-done:
			t.Fatalf("WaitLoad returned after %d of 3 files: %v", i, r.err)
		default:
		}
		b, err := os.ReadFile(filepath.Join(staged, name))
		if err != nil {
			t.Fatal(err)
		}
		// As the operator delivers: a temporary file renamed into place.
		if err := os.WriteFile(filepath.Join(dir, name+".tmp"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, name+".tmp"), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := r.s.NotAfter(); got.IsZero() {
		t.Error("loaded store has no certificate")
	}
}

// A file that exists but holds no certificate is an error at once, not a wait.
func TestWaitLoadFailsAtOnceOnABrokenIdentity(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{CAFile, CertFile, KeyFile} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := WaitLoad(t.Context(), dir, time.Hour, func(error) { t.Error("waited on a broken identity") })
	if err == nil {
		t.Fatal("WaitLoad accepted garbage")
	}
}

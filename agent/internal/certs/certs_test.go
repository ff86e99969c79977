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

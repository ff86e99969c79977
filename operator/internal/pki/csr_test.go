package pki_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"testing"

	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/operator/internal/pki"
)

var (
	oidSAN              = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidExtKeyUsage      = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidKeyUsage         = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidServerAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidClientAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}
)

const machineDNS = "web-1.prod.machine.nio"

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func p256(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func makeCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// The agent's renewal: it keeps its key and sends a CSR; the certificate it gets back
// is for that key, names only the Machine, and verifies for server auth only.
func TestSignMachineCSRIssuesServerCertificateForTheCSRKey(t *testing.T) {
	iss := newIssuer(t)
	for name, key := range map[string]crypto.Signer{"p256": p256(t), "ed25519": ed25519Key(t)} {
		t.Run(name, func(t *testing.T) {
			csr := makeCSR(t, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: machineDNS}, DNSNames: []string{machineDNS}})
			certPEM, err := iss.SignMachineCSR(csr, "prod", "web-1")
			if err != nil {
				t.Fatal(err)
			}
			cert := parseCertPEM(t, certPEM)
			if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(cert.PublicKey) {
				t.Error("certificate is not for the CSR's key")
			}
			if len(cert.DNSNames) != 1 || cert.DNSNames[0] != machineDNS {
				t.Errorf("DNS SANs %v, want only %s", cert.DNSNames, machineDNS)
			}
			if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || cert.IsCA {
				t.Errorf("ext key usage %v IsCA=%v, want server auth only", cert.ExtKeyUsage, cert.IsCA)
			}
			roots := iss.CA().Pool()
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: machineDNS,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("verify: %v", err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
				t.Error("renewed certificate verifies for client auth")
			}
		})
	}
}

// A CSR that names nothing still gets the Machine's name: the operator, not the
// host, decides what the certificate says.
func TestSignMachineCSRWithoutNamesGetsTheMachineName(t *testing.T) {
	iss := newIssuer(t)
	certPEM, err := iss.SignMachineCSR(makeCSR(t, p256(t), &x509.CertificateRequest{}), "prod", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := parseCertPEM(t, certPEM).DNSNames; len(got) != 1 || got[0] != machineDNS {
		t.Errorf("DNS SANs %v, want [%s]", got, machineDNS)
	}
}

func TestSignMachineCSRRefusesAnythingBeyondItsOwnServerName(t *testing.T) {
	iss := newIssuer(t)
	otherName := mustMarshal(t, asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true,
		Bytes: mustMarshal(t, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true,
			Bytes: append(mustMarshal(t, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3}),
				mustMarshal(t, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true,
					Bytes: mustMarshal(t, "root@example")})...)})})
	ext := func(id asn1.ObjectIdentifier, value []byte) []pkix.Extension {
		return []pkix.Extension{{Id: id, Value: value}}
	}
	type basicConstraints struct {
		IsCA       bool `asn1:"optional"`
		MaxPathLen int  `asn1:"optional"`
	}
	cases := map[string]*x509.CertificateRequest{
		"another machine's name":     {DNSNames: []string{identity.MachineDNSName("prod", "web-2")}},
		"same name, other namespace": {DNSNames: []string{identity.MachineDNSName("staging", "web-1")}},
		"an extra name":              {DNSNames: []string{machineDNS, "evil.example.com"}},
		"a wildcard":                 {DNSNames: []string{"*.prod.machine.nio"}},
		"another CN":                 {Subject: pkix.Name{CommonName: "web-2.prod.machine.nio"}, DNSNames: []string{machineDNS}},
		"an IP address":              {DNSNames: []string{machineDNS}, IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}},
		"the operator URI":           {DNSNames: []string{machineDNS}, URIs: []*url.URL{identity.OperatorURL()}},
		"an email address":           {DNSNames: []string{machineDNS}, EmailAddresses: []string{"root@example.com"}},
		"an otherName SAN":           {ExtraExtensions: ext(oidSAN, otherName)},
		"client auth":                {DNSNames: []string{machineDNS}, ExtraExtensions: ext(oidExtKeyUsage, mustMarshal(t, []asn1.ObjectIdentifier{oidClientAuth}))},
		"server and client auth":     {DNSNames: []string{machineDNS}, ExtraExtensions: ext(oidExtKeyUsage, mustMarshal(t, []asn1.ObjectIdentifier{oidServerAuth, oidClientAuth}))},
		"a CA":                       {DNSNames: []string{machineDNS}, ExtraExtensions: ext(oidBasicConstraints, mustMarshal(t, basicConstraints{IsCA: true}))},
		"certificate signing":        {DNSNames: []string{machineDNS}, ExtraExtensions: ext(oidKeyUsage, mustMarshal(t, asn1.BitString{Bytes: []byte{0x04}, BitLength: 6}))},
	}
	for name, tmpl := range cases {
		t.Run(name, func(t *testing.T) {
			certPEM, err := iss.SignMachineCSR(makeCSR(t, p256(t), tmpl), "prod", "web-1")
			if err == nil {
				t.Fatalf("signed a CSR asking for %s:\n%s", name, certPEM)
			}
			t.Log(err)
			if !errors.Is(err, pki.ErrCSRRefused) {
				t.Errorf("error %v is not ErrCSRRefused", err)
			}
		})
	}

	// Asking for server auth explicitly is fine.
	ok := &x509.CertificateRequest{DNSNames: []string{machineDNS},
		ExtraExtensions: ext(oidExtKeyUsage, mustMarshal(t, []asn1.ObjectIdentifier{oidServerAuth}))}
	if _, err := iss.SignMachineCSR(makeCSR(t, p256(t), ok), "prod", "web-1"); err != nil {
		t.Errorf("CSR asking for server auth only: %v", err)
	}
}

func TestSignMachineCSRRefusesBadSignaturesAndWeakKeys(t *testing.T) {
	iss := newIssuer(t)
	good := makeCSR(t, p256(t), &x509.CertificateRequest{DNSNames: []string{machineDNS}})
	block, _ := pem.Decode(good)
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-5] ^= 0xff // inside the signature
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"tampered signature": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}),
		"not PEM":            []byte("hello"),
		"a certificate":      iss.CA().CertPEM,
		"two CSRs":           append(append([]byte(nil), good...), good...),
		"RSA 1024":           makeCSR(t, weak, &x509.CertificateRequest{DNSNames: []string{machineDNS}}),
	}
	for name, csr := range cases {
		if _, err := iss.SignMachineCSR(csr, "prod", "web-1"); !errors.Is(err, pki.ErrCSRRefused) {
			t.Errorf("%s: got %v, want ErrCSRRefused", name, err)
		}
	}
}

func ed25519Key(t *testing.T) crypto.Signer {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/operator/internal/pki"
)

func newIssuer(t *testing.T) *pki.Issuer {
	t.Helper()
	ca, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return pki.NewIssuer(ca)
}

func parseCertPEM(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("no PEM certificate in %q", certPEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestMachineServerCertificateVerifiesForItsNameAndServerAuthOnly(t *testing.T) {
	iss := newIssuer(t)
	id, err := iss.IssueMachineServer("prod", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatalf("certificate and key do not form a pair: %v", err)
	}
	cert := kp.Leaf
	if string(id.CAPEM) != string(iss.CA().CertPEM) {
		t.Error("CAPEM is not the issuing CA")
	}
	want := identity.MachineDNSName("prod", "web-1")
	if len(cert.DNSNames) != 1 || cert.DNSNames[0] != want {
		t.Errorf("DNS SANs %v, want only %s", cert.DNSNames, want)
	}
	if len(cert.IPAddresses)+len(cert.URIs)+len(cert.EmailAddresses) != 0 {
		t.Errorf("unexpected SANs: ip=%v uri=%v email=%v", cert.IPAddresses, cert.URIs, cert.EmailAddresses)
	}
	if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("ext key usage %v, want server auth only", cert.ExtKeyUsage)
	}
	if cert.IsCA {
		t.Error("machine certificate is a CA")
	}
	if life := cert.NotAfter.Sub(cert.NotBefore); life < 89*24*time.Hour || life > 91*24*time.Hour {
		t.Errorf("validity %s, want about 90 days", life)
	}
	if !id.NotAfter.Equal(cert.NotAfter) {
		t.Errorf("NotAfter %s, certificate says %s", id.NotAfter, cert.NotAfter)
	}

	roots := iss.CA().Pool()
	ok := x509.VerifyOptions{Roots: roots, DNSName: want, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if _, err := cert.Verify(ok); err != nil {
		t.Errorf("verify as server %s: %v", want, err)
	}
	refused := map[string]x509.VerifyOptions{
		"as a client": {Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		"as another machine": {Roots: roots, DNSName: identity.MachineDNSName("prod", "web-2"),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
		"under another CA": {Roots: newIssuer(t).CA().Pool(), DNSName: want,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
	}
	for name, opts := range refused {
		if _, err := cert.Verify(opts); err == nil {
			t.Errorf("verify %s succeeded, want failure", name)
		}
	}
}

func TestMachineServerRefusesInvalidNames(t *testing.T) {
	iss := newIssuer(t)
	for _, tc := range []struct{ ns, name string }{
		{"", "web"}, {"prod", ""}, {"Prod", "web"}, {"prod", "web_1"}, {"a.b", "web"}, {"prod", "-web"},
	} {
		if _, err := iss.IssueMachineServer(tc.ns, tc.name); err == nil {
			t.Errorf("IssueMachineServer(%q, %q) succeeded, want an error", tc.ns, tc.name)
		}
	}
}

func TestOperatorClientCertificateHasTheOperatorIdentity(t *testing.T) {
	iss := newIssuer(t)
	creds := iss.OperatorCredentials()
	tc, err := creds.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	cert := tc.Leaf
	if cert.Subject.CommonName != pki.OperatorCommonName {
		t.Errorf("CN %q, want %q", cert.Subject.CommonName, pki.OperatorCommonName)
	}
	if !identity.IsOperator(cert) || len(cert.URIs) != 1 {
		t.Errorf("URIs %v, want only %s", cert.URIs, identity.OperatorURI)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses) != 0 {
		t.Errorf("client certificate names hosts: %v %v", cert.DNSNames, cert.IPAddresses)
	}
	if life := cert.NotAfter.Sub(cert.NotBefore); life < 29*24*time.Hour || life > 31*24*time.Hour {
		t.Errorf("validity %s, want about 30 days", life)
	}
	roots := iss.CA().Pool()
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("verify as client: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("operator certificate verifies as a server, want client auth only")
	}
	if creds.RootCAs() == nil || !creds.RootCAs().Equal(roots) {
		t.Error("RootCAs is not the operator CA alone")
	}
}

func TestOperatorClientCertificateIsReissuedAtTwoThirdsOfItsLife(t *testing.T) {
	iss := newIssuer(t)
	now := time.Now()
	iss.Now = func() time.Time { return now }
	creds := iss.OperatorCredentials()

	first, err := creds.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	life := first.Leaf.NotAfter.Sub(first.Leaf.NotBefore)
	renewAt := first.Leaf.NotBefore.Add(life / 3 * 2)

	now = renewAt.Add(-time.Minute)
	same, err := creds.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if same != first {
		t.Error("certificate re-issued before 2/3 of its life")
	}

	now = renewAt.Add(time.Minute)
	next, err := creds.GetClientCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if next == first || next.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("certificate not re-issued after 2/3 of its life")
	}
	if !next.Leaf.NotAfter.After(first.Leaf.NotAfter) {
		t.Errorf("new certificate ends %s, not after the old %s", next.Leaf.NotAfter, first.Leaf.NotAfter)
	}
}

// The pieces meet over real TLS on loopback: an agent-like server with a Machine
// certificate that requires a client certificate with the operator identity, and
// the operator dialing with ClientTLSConfig.
func TestOperatorDialsMachineOverMutualTLS(t *testing.T) {
	iss := newIssuer(t)
	id, err := iss.IssueMachineServer("prod", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM(id.CAPEM) {
		t.Fatal("CAPEM holds no certificate")
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			if !identity.IsOperator(chains[0][0]) {
				return errors.New("client is not the operator")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err == nil {
					_, _ = c.Write([]byte("ok"))
				}
			}()
		}
	}()

	creds := iss.OperatorCredentials()
	dial := func(ns, name string) error {
		cfg, err := creds.ClientTLSConfig(ns, name)
		if err != nil {
			return err
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer conn.Close()
		buf := make([]byte, 2)
		if _, err := conn.Read(buf); err != nil {
			return err
		}
		if string(buf) != "ok" {
			return errors.New("unexpected reply " + string(buf))
		}
		return nil
	}
	if err := dial("prod", "web-1"); err != nil {
		t.Fatalf("dial the right machine: %v", err)
	}
	err = dial("prod", "web-2")
	if err == nil || !strings.Contains(err.Error(), "web-2.prod.machine.nio") {
		t.Fatalf("dial web-2 reaching web-1's certificate: want a name mismatch, got %v", err)
	}
}

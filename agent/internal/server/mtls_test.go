package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/certs"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/api/identity"
	"github.com/homystack/nio/testkit/certtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

const machineNS, machineName = "prod", "web-1"

type tlsAgent struct {
	addr  string
	ca    *certtest.CA
	dir   string
	exec  *fakeExecutor
	store *certs.Store
}

// startTLSAgent serves the agent on a real loopback TLS listener.
func startTLSAgent(t *testing.T) *tlsAgent {
	t.Helper()
	ca := certtest.NewCA(t)
	crt, key := ca.MachineServer(t, machineNS, machineName)
	dir := certtest.WriteFiles(t, filepath.Join(t.TempDir(), "tls"), ca.CertPEM, crt, key)
	store, err := certs.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	x := newFakeExecutor()
	s, err := New(Config{Executor: x, Certs: store, StateDir: t.TempDir(), MaxSourceBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(store.ServerConfig())))
	s.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return &tlsAgent{addr: lis.Addr().String(), ca: ca, dir: dir, exec: x, store: store}
}

func (a *tlsAgent) clientConfig(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      a.ca.Pool(),
		ServerName:   identity.MachineDNSName(machineNS, machineName),
		Certificates: certs,
	}
}

func (a *tlsAgent) client(t *testing.T, cfg *tls.Config) agentv1.AgentServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+a.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentv1.NewAgentServiceClient(conn)
}

func statusCall(c agentv1.AgentServiceClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Status(ctx, &agentv1.StatusRequest{})
	return err
}

func TestMTLSRefusesAnyoneButTheOperator(t *testing.T) {
	a := startTLSAgent(t)
	other := certtest.NewCA(t)
	expiredCrt, expiredKey := a.ca.Issue(t, certtest.Options{
		CommonName: "nio-operator", URIs: []*url.URL{identity.OperatorURL()}, ClientAuth: true,
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
	})
	plainCrt, plainKey := a.ca.Issue(t, certtest.Options{CommonName: "nio-operator", ClientAuth: true})
	spoofURI, _ := url.Parse("spiffe://nio.homystack.com/not-operator")
	spoofCrt, spoofKey := a.ca.Issue(t, certtest.Options{CommonName: "nio-operator", URIs: []*url.URL{spoofURI}, ClientAuth: true})

	refused := map[string][]tls.Certificate{
		"no client certificate":   nil,
		"certificate of other CA": {other.OperatorClient(t)},
		"expired certificate":     {certtest.KeyPair(t, expiredCrt, expiredKey)},
		"no operator identity":    {certtest.KeyPair(t, plainCrt, plainKey)},
		"other URI identity":      {certtest.KeyPair(t, spoofCrt, spoofKey)},
	}
	for name, certs := range refused {
		t.Run(name, func(t *testing.T) {
			if err := statusCall(a.client(t, a.clientConfig(certs...))); err == nil {
				t.Fatal("Status answered")
			}
		})
	}
	if n := a.exec.currentReads.Load(); n != 0 {
		t.Fatalf("a refused peer reached a handler (%d Status reads)", n)
	}
	if err := statusCall(a.client(t, a.clientConfig(a.ca.OperatorClient(t)))); err != nil {
		t.Fatalf("the operator was refused: %v", err)
	}
	tls12 := a.clientConfig(a.ca.OperatorClient(t))
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if err := statusCall(a.client(t, tls12)); err == nil {
		t.Error("TLS 1.2 was accepted")
	}
}

// servedSerial dials the agent afresh and returns the serial of the certificate it serves.
func (a *tlsAgent) servedSerial(t *testing.T, op tls.Certificate) string {
	t.Helper()
	conn, err := tls.Dial("tcp", a.addr, a.clientConfig(op))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// signCSR plays the operator's CA.
func signCSR(t *testing.T, ca *certtest.CA, csrPEM []byte) []byte {
	t.Helper()
	block, _ := pem.Decode(csrPEM)
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := csr.CheckSignature(); err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big1e6(),
		Subject:      csr.Subject,
		DNSNames:     csr.DNSNames,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(90 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func renew(t *testing.T, c agentv1.AgentServiceClient, sign func(csr []byte) []byte) (*agentv1.CertificateInstalled, error) {
	t.Helper()
	st, err := c.RenewCertificate(context.Background())
	if err != nil {
		return nil, err
	}
	dns := identity.MachineDNSName(machineNS, machineName)
	if err := st.Send(&agentv1.RenewCertificateRequest{Msg: &agentv1.RenewCertificateRequest_Begin{Begin: &agentv1.RenewBegin{DnsName: dns}}}); err != nil {
		return nil, err
	}
	resp, err := st.Recv()
	if err != nil {
		return nil, err
	}
	if err := st.Send(&agentv1.RenewCertificateRequest{Msg: &agentv1.RenewCertificateRequest_Signed{Signed: &agentv1.SignedCertificate{CertificatePem: sign(resp.GetCsrPem())}}}); err != nil {
		return nil, err
	}
	resp, err = st.Recv()
	if err != nil {
		return nil, err
	}
	return resp.GetInstalled(), nil
}

func TestRenewedCertificateIsServedWithoutRestart(t *testing.T) {
	a := startTLSAgent(t)
	op := a.ca.OperatorClient(t)
	c := a.client(t, a.clientConfig(op))
	before := a.servedSerial(t, op)

	other := certtest.NewCA(t)
	if _, err := renew(t, c, func(csr []byte) []byte { return signCSR(t, other, csr) }); err == nil {
		t.Fatal("a certificate from another CA was installed")
	}
	if got := a.servedSerial(t, op); got != before {
		t.Fatal("a refused renewal changed the served certificate")
	}

	var signed []byte
	installed, err := renew(t, c, func(csr []byte) []byte { signed = signCSR(t, a.ca, csr); return signed })
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(signed)
	newCert, _ := x509.ParseCertificate(block.Bytes)
	if got := a.servedSerial(t, op); got != newCert.SerialNumber.String() {
		t.Fatalf("served serial %s, want the renewed %s", got, newCert.SerialNumber)
	}
	if !installed.GetNotAfter().AsTime().Equal(newCert.NotAfter) {
		t.Errorf("installed.not_after = %v, want %v", installed.GetNotAfter().AsTime(), newCert.NotAfter)
	}
	// On disk for the next start, private.
	for _, f := range []string{certs.CertFile, certs.KeyFile} {
		fi, err := os.Stat(filepath.Join(a.dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", f, err, fi.Mode())
		}
	}
	reloaded, err := certs.Load(a.dir)
	if err != nil || !reloaded.NotAfter().Equal(newCert.NotAfter) {
		t.Errorf("files on disk do not hold the renewed pair: %v", err)
	}
	if err := statusCall(c); err != nil {
		t.Errorf("the existing connection broke: %v", err)
	}
}

func big1e6() *big.Int {
	n, _ := rand.Int(rand.Reader, big.NewInt(1e12))
	return n.Add(n, big.NewInt(1e6))
}

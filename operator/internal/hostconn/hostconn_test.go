package hostconn

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/pki"
)

const testNamespace = "ns"

// fakeAgent is an mTLS agent with the operator's PKI that answers Status, behind a
// listener counting the connections it accepted and those open.
type fakeAgent struct {
	agentv1.UnimplementedAgentServiceServer
	port           int32
	accepted, open atomic.Int32
}

func (a *fakeAgent) Status(context.Context, *agentv1.StatusRequest) (*agentv1.StatusResponse, error) {
	return &agentv1.StatusResponse{AgentVersion: "test"}, nil
}

type countingListener struct {
	net.Listener
	agent *fakeAgent
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.agent.accepted.Add(1)
	l.agent.open.Add(1)
	return &countedConn{Conn: c, agent: l.agent}, nil
}

type countedConn struct {
	net.Conn
	agent *fakeAgent
	once  sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.agent.open.Add(-1) })
	return c.Conn.Close()
}

// startAgent serves Machine testNamespace/name's agent with a certificate of issuer.
func startAgent(t *testing.T, issuer *pki.Issuer, name string) *fakeAgent {
	t.Helper()
	id, err := issuer.IssueMachineServer(testNamespace, name)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &fakeAgent{port: int32(lis.Addr().(*net.TCPAddr).Port)}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: issuer.CA().Pool(),
	})))
	agentv1.RegisterAgentServiceServer(g, a)
	go func() { _ = g.Serve(&countingListener{Listener: lis, agent: a}) }()
	t.Cleanup(g.Stop)
	return a
}

func newIssuer(t *testing.T) *pki.Issuer {
	t.Helper()
	ca, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return pki.NewIssuer(ca)
}

// secretReads counts the Secrets read through a fake client holding objs.
type secretReads struct {
	client.Client
	n atomic.Int32
}

func countSecretReads(objs ...client.Object) *secretReads {
	r := &secretReads{}
	r.Client = interceptor.NewClient(fake.NewClientBuilder().WithObjects(objs...).Build(), interceptor.Funcs{
		Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
			if _, ok := obj.(*corev1.Secret); ok {
				r.n.Add(1)
			}
			return c.Get(ctx, key, obj, opts...)
		},
	})
	return r
}

func machine(name string, agentPort int32) *nio.Machine {
	return &nio.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
		Spec: nio.MachineSpec{Hostname: name, IPAddress: "127.0.0.1", Agent: nio.AgentSpec{Port: agentPort},
			SSHKeySecretRef: &nio.SSHKeySecretReference{Name: name + "-ssh-key"}},
	}
}

func keySecret(name string, key []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
		Data:       map[string][]byte{"ssh-privatekey": key},
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHostsOfAMachineShareOneAgentConnection: the Hosts the Factory opens for a
// Machine, one per controller pass, reach its agent over one connection; a changed
// agent address gets a new one and closes the old, and Forget (the Machine was
// deleted) closes it.
func TestHostsOfAMachineShareOneAgentConnection(t *testing.T) {
	issuer := newIssuer(t)
	agent := startAgent(t, issuer, "worker-01")
	f := &Factory{Client: countSecretReads(), Credentials: issuer.OperatorCredentials()}
	t.Cleanup(f.Close)
	ctx := context.Background()
	m := machine("worker-01", agent.port)
	m.Spec.SSHKeySecretRef = nil

	for range 5 {
		h, err := f.Open(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		if p := h.Probe(ctx); !p.AgentReachable {
			t.Fatalf("probe = %+v", p)
		}
		if _, err := h.Status(ctx); err != nil {
			t.Fatal(err)
		}
		_ = h.Close()
	}
	if n := agent.accepted.Load(); n != 1 {
		t.Fatalf("the agent accepted %d connections over 5 passes, want 1", n)
	}

	moved := startAgent(t, issuer, "worker-01") // the Machine's spec.agent.port changed
	m.Spec.Agent.Port = moved.port
	h, err := f.Open(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Status(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connection to the old port is closed", func() bool { return agent.open.Load() == 0 })
	if n := moved.accepted.Load(); n != 1 {
		t.Fatalf("the agent at the new port accepted %d connections, want 1", n)
	}

	f.Forget(types.NamespacedName{Namespace: testNamespace, Name: "worker-01"})
	waitFor(t, "Forget closed the connection", func() bool { return moved.open.Load() == 0 })
	if _, err := h.Status(ctx); err != nil {
		t.Fatal(err)
	}
	if n := moved.accepted.Load(); n != 2 {
		t.Fatalf("accepted %d connections, want a new one after Forget", n)
	}
}

package transport

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homystack/nio/api/identity"
	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
)

func TestAgentApplyBuildsSwitchesAndSendsTheSourceOnlyOnce(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)
	src := dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)}))

	var events []Event
	res, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-a1", Commit: "c0ffee", Action: ActionSwitch,
		Target:  Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source:  src,
		OnEvent: collect(&events),
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res.Outcome != OutcomeSucceeded || res.Transport != nio.TransportAgent || res.StorePath == "" {
		t.Fatalf("result = %+v", res)
	}
	if res.SourceBytesSent != src.Size {
		t.Fatalf("sent %d source bytes, want the whole archive (%d)", res.SourceBytesSent, src.Size)
	}
	if got := h.nix.Activations(t); !slices.Equal(got, []string{"switch " + res.StorePath}) {
		t.Fatalf("activations = %q", got)
	}
	assertOrderedEvents(t, events)
	var phases []Phase
	for _, ev := range events {
		if ev.Kind == EventPhase {
			phases = append(phases, ev.Phase)
		}
	}
	want := []Phase{PhaseReceivingSource, PhaseUnpacking, PhaseBuilding, PhaseSettingProfile, PhaseActivating, PhaseDone}
	if !slices.Equal(phases, want) {
		t.Fatalf("phases = %v, want %v", phases, want)
	}

	// The agent holds the digest now: a second operation sends no source.
	res2, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-a2", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
	})
	if err != nil || res2.Outcome != OutcomeSucceeded {
		t.Fatalf("second Apply: %+v, %v", res2, err)
	}
	if res2.SourceBytesSent != 0 {
		t.Fatalf("re-sent %d bytes of a source the agent holds", res2.SourceBytesSent)
	}

	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.CurrentSystem != res.StorePath || st.Generation != res2.Generation || st.LastOperationID != "op-a2" || st.CertificateNotAfter.IsZero() {
		t.Fatalf("status = %+v", st)
	}
}

func assertOrderedEvents(t *testing.T, events []Event) {
	t.Helper()
	var last uint64
	for _, ev := range events {
		if ev.Sequence == 0 {
			continue
		}
		if ev.Sequence <= last {
			t.Fatalf("event sequence %d after %d: events relayed twice or out of order", ev.Sequence, last)
		}
		last = ev.Sequence
	}
	if last == 0 {
		t.Fatal("no sequenced events")
	}
}

func TestAgentApplyReattachesAfterABrokenStreamAndBuildsOnce(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	var dials dialCounter
	a := h.agentTransport(t, "web", &dials)
	src := dirSource(t, nixtest.CopyFlake(t, "sleep", map[string]string{nixtest.VarVersion: uniqueVersion(t), nixtest.VarSleep: "2"}))

	var events []Event
	var broke bool
	res, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-sleep", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
		OnEvent: func(ev Event) {
			events = append(events, ev)
			if ev.Kind == EventPhase && ev.Phase == PhaseBuilding && !broke {
				// Cut the TCP connection while the sleeping build runs.
				broke = true
				dials.closeAll()
			}
		},
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if !broke || dials.count() < 2 {
		t.Fatalf("the stream was not broken and re-dialled (broke=%v, dials=%d)", broke, dials.count())
	}
	if res.Outcome != OutcomeSucceeded {
		t.Fatalf("result = %+v", res)
	}
	if got := h.nix.Activations(t); len(got) != 1 {
		t.Fatalf("activations = %q, want exactly one", got)
	}
	if n := strings.Count(h.log.String(), "operation start"); n != 1 {
		t.Fatalf("the agent started %d operations, want 1", n)
	}
	if !strings.Contains(h.log.String(), "attach") {
		t.Fatal("the agent saw no attach")
	}
	assertOrderedEvents(t, events)
	var phases []Phase
	building := 0
	for _, ev := range events {
		if ev.Kind == EventPhase {
			phases = append(phases, ev.Phase)
			if ev.Phase == PhaseBuilding {
				building++
			}
		}
	}
	if building != 1 || phases[len(phases)-1] != PhaseDone {
		t.Fatalf("phases after re-attach = %v: want Building once, ending Done", phases)
	}
}

func TestAgentApplyGivesUpReattachingWithOutcomeUnknownNotUnreachable(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	var dials dialCounter
	var mu sync.Mutex
	cut := false
	a := h.agentTransport(t, "web", nil)
	a.cfg.ReconnectTimeout = 500 * time.Millisecond
	a.cfg.Dialer = func(ctx context.Context, addr string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if cut {
			return nil, errors.New("network is down (test)")
		}
		return dials.dial(ctx, addr)
	}
	src := dirSource(t, nixtest.CopyFlake(t, "sleep", map[string]string{nixtest.VarVersion: uniqueVersion(t), nixtest.VarSleep: "2"}))
	_, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-lost", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
		OnEvent: func(ev Event) {
			if ev.Kind == EventPhase && ev.Phase == PhaseBuilding {
				mu.Lock()
				cut = true
				mu.Unlock()
				dials.closeAll()
			}
		},
	})
	if !errors.Is(err, ErrOutcomeUnknown) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("Apply = %v; want ErrOutcomeUnknown and not ErrUnreachable (no ssh fallback)", err)
	}
}

func TestAgentSecondOperationWhileOneRunsIsBusy(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)
	slow := dirSource(t, nixtest.CopyFlake(t, "sleep", map[string]string{nixtest.VarVersion: uniqueVersion(t), nixtest.VarSleep: "2"}))
	building := make(chan struct{})
	var once sync.Once
	first := make(chan error, 1)
	go func() {
		_, err := a.Apply(context.Background(), ApplyRequest{
			OperationID: "op-long", Action: ActionSwitch,
			Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: slow,
			OnEvent: func(ev Event) {
				if ev.Kind == EventPhase && ev.Phase == PhaseBuilding {
					once.Do(func() { close(building) })
				}
			},
		})
		first <- err
	}()
	select {
	case <-building:
	case err := <-first:
		t.Fatalf("the first operation ended before building: %v", err)
	}
	_, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-other", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: slow,
	})
	if !errors.Is(err, ErrBusy) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("second Apply = %v, want ErrBusy", err)
	}
	if err := <-first; err != nil {
		t.Fatalf("first Apply: %v", err)
	}
}

func TestAgentConfirmUsesANewConnectionAndKeepsTheSwitch(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	var dials dialCounter
	a := h.agentTransport(t, "web", &dials)
	src := dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)}))
	var dialsBeforeConfirm, dialsAfterConfirm int
	res, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-confirm", Action: ActionSwitch, ConfirmTimeout: time.Minute,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
		OnAwaitingConfirm: func(ctx context.Context, id string) error {
			dialsBeforeConfirm = dials.count()
			err := a.Confirm(ctx, id)
			dialsAfterConfirm = dials.count()
			return err
		},
	})
	if err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	if dialsAfterConfirm != dialsBeforeConfirm+1 {
		t.Fatalf("Confirm dialled %d connections, want one new one", dialsAfterConfirm-dialsBeforeConfirm)
	}

	// Without a confirmation the agent rolls back.
	src2 := dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)}))
	res2, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-unconfirmed", Action: ActionSwitch, ConfirmTimeout: time.Second,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src2,
	})
	if err != nil || res2.Outcome != OutcomeRolledBack {
		t.Fatalf("unconfirmed Apply: %+v, %v", res2, err)
	}
	if err := a.Confirm(context.Background(), "op-unconfirmed"); err == nil {
		t.Fatal("a late Confirm of a rolled-back operation succeeded")
	}
}

func TestAgentWithAnotherMachinesCertificateIsRefused(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "db") // serves db.fleet.machine.nio
	a := h.agentTransport(t, "web", nil)
	_, err := a.Status(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Status against another machine's agent = %v, want an unreachable certificate error", err)
	}
	t.Logf("refused as: %v", err)
	src := dirSource(t, nixtest.CopyFlake(t, "basic", nil))
	if _, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-x", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
	}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Apply = %v, want ErrUnreachable", err)
	}
	if got := h.nix.Activations(t); got != nil {
		t.Fatalf("an operation ran on the wrong machine: %q", got)
	}
	if p := a.Probe(context.Background()); p.AgentReachable || !errors.Is(p.AgentError, ErrUnreachable) {
		t.Fatalf("probe = %+v", p)
	}
}

func TestAgentRefusingOurClientCertificateIsUnreachable(t *testing.T) {
	t.Parallel()
	ca := certtest.NewCA(t)
	h := startAgent(t, ca, "web")
	// A client certificate of the right CA without the operator identity.
	certPEM, keyPEM := ca.Issue(t, certtest.Options{CommonName: "intruder", ClientAuth: true})
	kp := certtest.KeyPair(t, certPEM, keyPEM)
	a, err := NewAgent(AgentConfig{
		Address: h.addr, Namespace: testNamespace, Name: "web", RootCAs: ca.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.Status(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "client certificate") {
		t.Fatalf("Status with a non-operator client certificate = %v, want ErrUnreachable (TLS)", err)
	}
	t.Logf("refused as: %v", err)
}

func TestAgentFactsAndProbe(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)
	facts, err := a.Facts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(facts), `"virtualisation"`) {
		t.Fatalf("facts lack the report's content: %.200s", facts)
	}
	if p := a.Probe(context.Background()); !p.AgentReachable || p.AgentVersion == "" {
		t.Fatalf("probe = %+v", p)
	}
}

func TestAgentRenewCertificateSignsTheAgentsCSR(t *testing.T) {
	t.Parallel()
	ca := certtest.NewCA(t)
	h := startAgent(t, ca, "web")
	conns := countConnections(t, h.addr)
	pool := &AgentPool{}
	t.Cleanup(pool.Close)
	a := h.pooledAgent(t, "web", pool, conns)
	notAfter := time.Now().Add(72 * time.Hour).Truncate(time.Second).UTC()
	var csrNames []string
	got, err := a.RenewCertificate(context.Background(), func(csrPEM []byte) ([]byte, error) {
		block, _ := pem.Decode(csrPEM)
		csr, err := x509.ParseCertificateRequest(block.Bytes)
		if err != nil {
			return nil, err
		}
		csrNames = csr.DNSNames
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()),
			DNSNames:     csr.DNSNames,
			NotBefore:    time.Now().Add(-time.Minute),
			NotAfter:     notAfter,
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
	})
	if err != nil {
		t.Fatalf("RenewCertificate: %v", err)
	}
	if !slices.Equal(csrNames, []string{identity.MachineDNSName(testNamespace, "web")}) {
		t.Fatalf("CSR names %q", csrNames)
	}
	if !got.Equal(notAfter) {
		t.Fatalf("installed certificate expires %v, want %v", got, notAfter)
	}
	st, err := a.Status(context.Background()) // a new connection, served by the new certificate
	if err != nil {
		t.Fatal(err)
	}
	if !st.CertificateNotAfter.Equal(notAfter) {
		t.Fatalf("status reports certificate expiry %v, want %v", st.CertificateNotAfter, notAfter)
	}
	if n := conns.served.Load(); n != 2 {
		t.Fatalf("%d connections, want 2: the pool's connection is replaced after a renewal", n)
	}
}

package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/sshtest"
)

// silentAgent accepts mTLS connections as Machine testNamespace/name, reads an
// Apply header and then never answers: a hung agent.
type silentAgent struct {
	agentv1.UnimplementedAgentServiceServer
	headers chan *agentv1.ApplyHeader
}

func (s *silentAgent) Apply(stream agentv1.AgentService_ApplyServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	s.headers <- req.GetHeader()
	<-stream.Context().Done()
	return stream.Context().Err()
}

func startSilentAgent(t *testing.T, ca *certtest.CA, name string) (string, *silentAgent) {
	t.Helper()
	certPEM, keyPEM := ca.MachineServer(t, testNamespace, name)
	cert := certtest.KeyPair(t, certPEM, keyPEM)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	})))
	s := &silentAgent{headers: make(chan *agentv1.ApplyHeader, 4)}
	agentv1.RegisterAgentServiceServer(g, s)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String(), s
}

// A hung agent must not hold the operator: Apply gives up after the operation's
// timeout plus its margin with ErrTimeout — not ErrUnreachable, which would let the
// fallback start nixos-rebuild beside the operation — and tells the agent the
// timeout, so the agent stops the build itself.
func TestAgentApplyToAnAgentThatNeverAnswersTimesOut(t *testing.T) {
	t.Parallel()
	ca := certtest.NewCA(t)
	addr, agent := startSilentAgent(t, ca, "hung")
	client := ca.OperatorClient(t)
	a, err := NewAgent(AgentConfig{
		Address: addr, Namespace: testNamespace, Name: "hung", RootCAs: ca.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &client, nil },
		ReconnectTimeout:     30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	req := ApplyRequest{
		OperationID: "op-hung", Commit: "c1", Action: ActionSwitch, Target: Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source:  testSource(t, map[string]string{"flake.nix": "{ }"}),
		Timeout: 400 * time.Millisecond, WaitMargin: 300 * time.Millisecond,
	}
	start := time.Now()
	_, err = (&Fallback{Agent: a, SSH: neverSSH{t}}).Apply(context.Background(), req)
	took := time.Since(start)
	if !errors.Is(err, ErrTimeout) || errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want ErrTimeout (and not ErrUnreachable)", err)
	}
	if took < 700*time.Millisecond || took > 5*time.Second {
		t.Errorf("gave up after %v, want timeout + margin (700ms)", took)
	}
	select {
	case h := <-agent.headers:
		if got := h.GetOperationTimeout().AsDuration(); got != req.Timeout {
			t.Errorf("header operation_timeout = %v, want %v", got, req.Timeout)
		}
	default:
		t.Error("the agent received no header")
	}
}

// neverSSH fails the test when the fallback uses it.
type neverSSH struct{ t *testing.T }

func (n neverSSH) Apply(context.Context, ApplyRequest) (ApplyResult, error) {
	n.t.Error("the fallback ran SSH beside a hung agent operation")
	return ApplyResult{}, errors.New("no")
}
func (n neverSSH) Status(context.Context) (SystemStatus, error) { return SystemStatus{}, nil }
func (n neverSSH) Facts(context.Context) ([]byte, error)        { return nil, nil }
func (n neverSSH) Confirm(context.Context, string) error        { return nil }
func (n neverSSH) Probe(context.Context) ProbeResult            { return ProbeResult{} }

// Over SSH the operator's wait is the only bound: a nixos-rebuild that does not end
// in time ends the Apply with ErrTimeout.
func TestSSHApplyOfAHungRebuildTimesOut(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	// Ends by itself soon after the test, so nothing is left behind on the machine.
	h.WriteStandIn(t, "nixos-rebuild", "#!/bin/sh\necho building\nexec sleep 5\n")
	req := ApplyRequest{
		OperationID: "op-hung", Commit: "c1", Action: ActionSwitch, Target: Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source:  testSource(t, map[string]string{"flake.nix": "{ }"}),
		Timeout: 500 * time.Millisecond, WaitMargin: 500 * time.Millisecond,
	}
	start := time.Now()
	_, err := h.transport(t, nil).Apply(context.Background(), req)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("gave up after %v", took)
	}
}

// switchThenBreakReads is a stand-in nixos-rebuild that counts its runs, switches
// the scratch links to generation 8, and then points the profile link at a name
// with a newline in it, so the operator's next read of the system links cannot be
// parsed. With fixAfter, a background job restores the link that long after.
func (h *sshHost) switchThenBreakReads(t *testing.T, fixAfter time.Duration) {
	t.Helper()
	fix := ""
	if fixAfter > 0 {
		fix = fmt.Sprintf("(sleep %.1f; ln -sfn system-8-link %s) </dev/null >/dev/null 2>&1 &\n", fixAfter.Seconds(), h.profile)
	}
	h.WriteStandIn(t, "nixos-rebuild", `#!/bin/sh
echo run >> `+h.record+`
ln -sfn `+h.Dir+`/store/sys-8 `+h.Dir+`/profiles/system-8-link
ln -sfn `+h.Dir+`/store/sys-8 `+h.current+`
ln -sfn "$(printf 'system-8\nlink')" `+h.profile+`
`+fix+`echo activated
`)
}

func switchRequest(t *testing.T) ApplyRequest {
	return ApplyRequest{
		OperationID: "op-read", Commit: "c1", Action: ActionSwitch, Target: Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source: testSource(t, map[string]string{"flake.nix": "{ }"}),
	}
}

func rebuildRuns(t *testing.T, h *sshHost) int {
	t.Helper()
	data, err := os.ReadFile(h.record)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "run\n")
}

// A switch that succeeded, followed by a failed read of the system links, used to
// make the whole Apply an error — and the controller applied the same commit again.
// The read is retried over a new connection…
func TestSSHSwitchThatSucceededKeepsItsOutcomeWhenTheReadAfterFailsOnce(t *testing.T) {
	restore := readAfterRetries
	readAfterRetries = []time.Duration{3 * time.Second}
	t.Cleanup(func() { readAfterRetries = restore })
	h := startSSHHost(t, sshtest.Options{})
	h.switchThenBreakReads(t, 1500*time.Millisecond)
	res, err := h.transport(t, nil).Apply(context.Background(), switchRequest(t))
	if err != nil {
		t.Fatalf("Apply after a successful switch: %v", err)
	}
	if res.Outcome != OutcomeSucceeded || res.Generation != 8 || res.StorePath != filepath.Join(h.Dir, "store/sys-8") || res.Message != "" {
		t.Errorf("result %+v, want Succeeded, generation 8, store path sys-8 (read again)", res)
	}
	if n := rebuildRuns(t, h); n != 1 {
		t.Errorf("nixos-rebuild ran %d times", n)
	}
}

// …and when it keeps failing, the outcome is still kept, with what is unknown said.
func TestSSHSwitchThatSucceededKeepsItsOutcomeWhenTheSystemCannotBeReadAfter(t *testing.T) {
	restore := readAfterRetries
	readAfterRetries = []time.Duration{10 * time.Millisecond, 10 * time.Millisecond}
	t.Cleanup(func() { readAfterRetries = restore })
	h := startSSHHost(t, sshtest.Options{})
	h.switchThenBreakReads(t, 0)
	var events []Event
	req := switchRequest(t)
	req.OnEvent = collect(&events)
	res, err := h.transport(t, nil).Apply(context.Background(), req)
	if err != nil {
		t.Fatalf("Apply after a successful switch: %v", err)
	}
	if res.Outcome != OutcomeSucceeded || res.Generation != 0 || res.StorePath != "" || !strings.Contains(res.Message, "could not be read afterwards") {
		t.Errorf("result %+v, want Succeeded with generation and store path unknown, and a message saying so", res)
	}
	if n := rebuildRuns(t, h); n != 1 {
		t.Errorf("nixos-rebuild ran %d times", n)
	}
	if last := events[len(events)-1]; last.Kind != EventPhase || last.Phase != PhaseDone {
		t.Errorf("last event %+v, want Done", last)
	}
}

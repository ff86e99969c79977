package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
	"github.com/homystack/nio/testkit/sshtest"
)

func TestFallbackPicksSSHWhenNothingListensOnTheAgentPort(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	h.recordingRebuild(t)
	ca := certtest.NewCA(t)
	client := ca.OperatorClient(t)
	// The SSH host's address, on a port where no agent listens.
	agent, err := NewAgent(AgentConfig{
		Address: net.JoinHostPort(h.Host, strconv.Itoa(h.Port+1)), Namespace: testNamespace, Name: "web",
		RootCAs:              ca.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &client, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &Fallback{Agent: agent, SSH: h.transport(t, nil)}
	res, err := f.Apply(context.Background(), ApplyRequest{
		OperationID: "op-fb", Action: ActionSwitch,
		Target: Target{FlakeDir: ".", FlakeAttr: "web"},
		Source: testSource(t, map[string]string{"flake.nix": "{}\n"}),
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if res.Transport != nio.TransportSSH || res.Outcome != OutcomeSucceeded {
		t.Fatalf("result = %+v, want a successful ssh apply", res)
	}
	if _, err := os.Stat(h.record); err != nil {
		t.Fatalf("nixos-rebuild did not run over ssh: %v", err)
	}
	p := f.Probe(context.Background())
	if p.AgentReachable || !errors.Is(p.AgentError, ErrUnreachable) || !p.SSHReachable || p.SSHHostKeyFingerprint != h.HostKeyFingerprint() {
		t.Fatalf("probe = %+v", p)
	}
	st, err := f.Status(context.Background())
	if err != nil || st.Transport != nio.TransportSSH || st.Generation != 8 {
		t.Fatalf("status = %+v, %v", st, err)
	}
}

func TestFallbackUsesAReachableAgent(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	ssh := &fakeTransport{t: t, forbidden: true}
	f := &Fallback{Agent: h.agentTransport(t, "web", nil), SSH: ssh}
	res, err := f.Apply(context.Background(), ApplyRequest{
		OperationID: "op-agent", Action: ActionBoot,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source: dirSource(t, nixtest.CopyFlake(t, "basic", nil)),
	})
	if err != nil || res.Transport != nio.TransportAgent || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply = %+v, %v", res, err)
	}
}

// fakeTransport answers with fixed results; forbidden fails the test when called.
type fakeTransport struct {
	t         *testing.T
	forbidden bool
	calls     int
	res       ApplyResult
	err       error
}

func (f *fakeTransport) called(what string) {
	f.calls++
	if f.forbidden {
		f.t.Errorf("%s must not be called", what)
	}
}

func (f *fakeTransport) Apply(context.Context, ApplyRequest) (ApplyResult, error) {
	f.called("Apply")
	return f.res, f.err
}

func (f *fakeTransport) Status(context.Context) (SystemStatus, error) {
	f.called("Status")
	return SystemStatus{}, f.err
}

func (f *fakeTransport) Facts(context.Context) ([]byte, error) {
	f.called("Facts")
	return []byte("{}"), f.err
}

func (f *fakeTransport) Confirm(context.Context, string) error {
	f.called("Confirm")
	return f.err
}

func (f *fakeTransport) Probe(context.Context) ProbeResult {
	f.called("Probe")
	return ProbeResult{}
}

func TestFallbackNeverBypassesAnAgentThatAnswered(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		res ApplyResult
		err error
	}{
		"busy":            {err: fmt.Errorf("agent: %w", ErrBusy)},
		"outcome unknown": {err: fmt.Errorf("agent: %w: stream broke", ErrOutcomeUnknown)},
		"build failed":    {res: ApplyResult{Transport: nio.TransportAgent, Outcome: OutcomeFailed}},
		"other error":     {err: errors.New("agent: invalid argument")},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f := &Fallback{Agent: &fakeTransport{t: t, res: c.res, err: c.err}, SSH: &fakeTransport{t: t, forbidden: true}}
			res, err := f.Apply(context.Background(), ApplyRequest{})
			if !errors.Is(err, c.err) || res.Outcome != c.res.Outcome {
				t.Fatalf("Apply = %+v, %v; want the agent's answer", res, err)
			}
		})
	}
}

func TestFallbackUsesSSHWhenTheAgentIsUnreachableOrDisabled(t *testing.T) {
	t.Parallel()
	unreachable := &fakeTransport{t: t, err: fmt.Errorf("agent: %w: connection refused", ErrUnreachable)}
	for name, agent := range map[string]Transport{"unreachable": unreachable, "disabled": nil} {
		t.Run(name, func(t *testing.T) {
			ssh := &fakeTransport{t: t, res: ApplyResult{Transport: nio.TransportSSH, Outcome: OutcomeSucceeded}}
			f := &Fallback{Agent: agent, SSH: ssh}
			res, err := f.Apply(context.Background(), ApplyRequest{})
			if err != nil || res.Transport != nio.TransportSSH || ssh.calls != 1 {
				t.Fatalf("Apply = %+v, %v (ssh calls %d)", res, err, ssh.calls)
			}
			if _, err := f.Facts(context.Background()); err != nil || ssh.calls != 2 {
				t.Fatalf("Facts = %v (ssh calls %d)", err, ssh.calls)
			}
		})
	}
}

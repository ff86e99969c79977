package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/sshtest"
)

// scriptedAgent is an mTLS agent whose Status lists features and whose Apply
// answers each header with answer: the protocol's edges without Nix.
type scriptedAgent struct {
	agentv1.UnimplementedAgentServiceServer
	version  string
	features []string
	headers  chan *agentv1.ApplyHeader
	answer   func(*agentv1.ApplyHeader) (*agentv1.ApplyResult, error)
}

func (s *scriptedAgent) Status(context.Context, *agentv1.StatusRequest) (*agentv1.StatusResponse, error) {
	return &agentv1.StatusResponse{AgentVersion: s.version, Features: s.features}, nil
}

func (s *scriptedAgent) Apply(stream agentv1.AgentService_ApplyServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	s.headers <- req.GetHeader()
	res, err := s.answer(req.GetHeader())
	if err != nil {
		return err
	}
	return stream.Send(&agentv1.ApplyResponse{Sequence: 1, Event: &agentv1.ApplyResponse_Result{Result: res}})
}

func startScriptedAgent(t *testing.T, s *scriptedAgent) *Agent {
	t.Helper()
	ca := certtest.NewCA(t)
	certPEM, keyPEM := ca.MachineServer(t, testNamespace, "web")
	cert := certtest.KeyPair(t, certPEM, keyPEM)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	})))
	s.headers = make(chan *agentv1.ApplyHeader, 4)
	agentv1.RegisterAgentServiceServer(g, s)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	client := ca.OperatorClient(t)
	a, err := NewAgent(AgentConfig{
		Address: lis.Addr().String(), Namespace: testNamespace, Name: "web", RootCAs: ca.Pool(),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &client, nil },
		ReconnectTimeout:     5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// guideChecks is the checks of a guide-style configuration, as the API server
// stores them without the defaults filled in.
func guideChecks() *nio.HealthChecks {
	return &nio.HealthChecks{
		Timeout: &metav1.Duration{Duration: 90 * time.Second},
		Checks: []nio.HealthCheck{
			{Name: "units", Units: &nio.UnitsHealthCheck{Names: []string{"nginx.service", "sshd"}, NoNewFailures: true}},
			{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: "http://127.0.0.1:8080/health"}},
			{Name: "db", Command: &nio.CommandHealthCheck{Command: []string{"/run/current-system/sw/bin/pg_isready", "-q"}}},
		},
	}
}

func checkedRequest(t *testing.T, id string) ApplyRequest {
	return ApplyRequest{
		OperationID: id, Commit: "c1", Action: ActionSwitch, Target: Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source:       testSource(t, map[string]string{"flake.nix": "{ }"}),
		HealthChecks: HealthChecksFor(guideChecks()),
	}
}

func TestHealthChecksForFillsTheDefaultsTheAPIServerDidNot(t *testing.T) {
	t.Parallel()
	got := HealthChecksFor(guideChecks())
	want := &HealthChecks{Timeout: 90 * time.Second, Interval: time.Second, Checks: []HealthCheck{
		{Name: "units", Units: &UnitsCheck{Units: []string{"nginx.service", "sshd"}, NoNewFailures: true}},
		{Name: "web", HTTP: &HTTPCheck{URL: "http://127.0.0.1:8080/health", ExpectStatus: 200}},
		{Name: "db", Command: &CommandCheck{Argv: []string{"/run/current-system/sw/bin/pg_isready", "-q"}, Timeout: 30 * time.Second}},
	}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("HealthChecksFor = %+v, want %+v", got, want)
	}
	if hc := HealthChecksFor(&nio.HealthChecks{}); hc != nil {
		t.Errorf("no checks = %+v, want nil", hc)
	}
	if hc := HealthChecksFor(&nio.HealthChecks{Checks: guideChecks().Checks[:1]}); hc.Timeout != DefaultHealthTimeout {
		t.Errorf("default timeout = %v, want %v", hc.Timeout, DefaultHealthTimeout)
	}
	// The checks' time counts toward how long the transport waits.
	req := ApplyRequest{Timeout: time.Hour, ConfirmTimeout: time.Minute, WaitMargin: time.Minute, HealthChecks: got}
	if b := req.WaitBound(); b != time.Hour+90*time.Second+2*time.Minute {
		t.Errorf("WaitBound = %v, want timeout + health timeout + confirm + margin", b)
	}
}

// The checks reach the agent in the header as the spec says, with the defaults,
// and the report comes back with the per-check results.
func TestAgentApplySendsTheHealthChecksAndReturnsTheReport(t *testing.T) {
	t.Parallel()
	s := &scriptedAgent{version: "0.3.0", features: []string{FeatureHealthChecks}, answer: func(*agentv1.ApplyHeader) (*agentv1.ApplyResult, error) {
		return &agentv1.ApplyResult{Outcome: agentv1.Outcome_OUTCOME_ROLLED_BACK, Generation: 4,
			Message: "health check web failed: GET http://127.0.0.1:8080/health: connection refused",
			Health: &agentv1.HealthReport{Passed: false, FirstFailure: "web", Results: []*agentv1.HealthCheckResult{
				{Name: "units", Passed: true, Attempts: 1, Message: "active"},
				{Name: "web", Passed: false, Attempts: 90, Message: "connection refused"},
				{Name: "db", Passed: true, Attempts: 2, Message: "exit 0"},
			}}}, nil
	}}
	a := startScriptedAgent(t, s)
	res, err := a.Apply(context.Background(), checkedRequest(t, "op-h1"))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	h := <-s.headers
	hc := h.GetHealthChecks()
	if hc.GetTimeout().AsDuration() != 90*time.Second || hc.GetInterval().AsDuration() != time.Second || len(hc.GetChecks()) != 3 {
		t.Fatalf("header health_checks = %v", hc)
	}
	units, web, db := hc.GetChecks()[0], hc.GetChecks()[1], hc.GetChecks()[2]
	if units.GetName() != "units" || !reflect.DeepEqual(units.GetUnits().GetUnits(), []string{"nginx.service", "sshd"}) || !units.GetUnits().GetNoNewFailures() {
		t.Errorf("units check = %v", units)
	}
	if web.GetHttp().GetUrl() != "http://127.0.0.1:8080/health" || web.GetHttp().GetExpectStatus() != 200 || web.GetHttp().GetAllowRemote() {
		t.Errorf("http check = %v", web)
	}
	if !reflect.DeepEqual(db.GetCommand().GetArgv(), []string{"/run/current-system/sw/bin/pg_isready", "-q"}) || db.GetCommand().GetTimeout().AsDuration() != 30*time.Second {
		t.Errorf("command check = %v", db)
	}
	if res.Outcome != OutcomeRolledBack || res.Health == nil || res.Health.Passed || res.Health.FirstFailure != "web" || len(res.Health.Results) != 3 {
		t.Fatalf("result = %+v (health %+v)", res, res.Health)
	}
	if f, ok := res.Health.Failure(); !ok || f.Name != "web" || f.Attempts != 90 || f.Message != "connection refused" {
		t.Errorf("Failure() = %+v, %v", f, ok)
	}
}

// An agent that does not list the feature would ignore the checks and activate
// unchecked: it is sent nothing, and the error is not ErrUnreachable (which would
// let the fallback use SSH).
func TestAgentApplyWithHealthChecksSendsNothingToAnAgentWithoutTheFeature(t *testing.T) {
	t.Parallel()
	s := &scriptedAgent{version: "0.1.0", answer: func(*agentv1.ApplyHeader) (*agentv1.ApplyResult, error) {
		return &agentv1.ApplyResult{Outcome: agentv1.Outcome_OUTCOME_SUCCEEDED}, nil
	}}
	a := startScriptedAgent(t, s)
	_, err := (&Fallback{Agent: a, SSH: neverSSH{t}}).Apply(context.Background(), checkedRequest(t, "op-old"))
	if !errors.Is(err, ErrHealthChecksNeedAgent) || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "0.1.0") || !strings.Contains(err.Error(), "too old") {
		t.Fatalf("Apply = %v, want ErrHealthChecksNeedAgent naming the agent version as too old", err)
	}
	select {
	case h := <-s.headers:
		t.Fatalf("the agent received a header: %v", h)
	default:
	}
	// Without checks the same agent is used as before.
	req := checkedRequest(t, "op-plain")
	req.HealthChecks = nil
	if res, err := a.Apply(context.Background(), req); err != nil || res.Outcome != OutcomeSucceeded {
		t.Fatalf("Apply without checks = %+v, %v", res, err)
	}
}

// An agent that lists the feature and yet reports success without a health report
// is not trusted: Failed.
func TestAgentSuccessWithoutAHealthReportIsFailed(t *testing.T) {
	t.Parallel()
	s := &scriptedAgent{features: []string{FeatureHealthChecks}, answer: func(*agentv1.ApplyHeader) (*agentv1.ApplyResult, error) {
		return &agentv1.ApplyResult{Outcome: agentv1.Outcome_OUTCOME_SUCCEEDED, Generation: 5}, nil
	}}
	a := startScriptedAgent(t, s)
	res, err := a.Apply(context.Background(), checkedRequest(t, "op-unchecked"))
	if err != nil || res.Outcome != OutcomeFailed || !strings.Contains(res.Message, "without a passing health report") {
		t.Fatalf("Apply = %+v, %v; want Failed", res, err)
	}
}

// The agent refusing the checks — in a result or with the header — is
// ErrInvalidHealthChecks carrying its message.
func TestAgentRefusingTheHealthChecksIsInvalidHealthChecks(t *testing.T) {
	t.Parallel()
	const msg = "invalid health checks: check web: the host of http://example.com/ is not this host (set allowRemote)"
	for name, answer := range map[string]func(*agentv1.ApplyHeader) (*agentv1.ApplyResult, error){
		"result": func(*agentv1.ApplyHeader) (*agentv1.ApplyResult, error) {
			return &agentv1.ApplyResult{Outcome: agentv1.Outcome_OUTCOME_FAILED, Message: msg}, nil
		},
		"header refused": func(*agentv1.ApplyHeader) (*agentv1.ApplyResult, error) {
			return nil, status.Error(codes.InvalidArgument, msg)
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a := startScriptedAgent(t, &scriptedAgent{features: []string{FeatureHealthChecks}, answer: answer})
			_, err := (&Fallback{Agent: a, SSH: neverSSH{t}}).Apply(context.Background(), checkedRequest(t, "op-invalid"))
			if !errors.Is(err, ErrInvalidHealthChecks) || errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), msg) {
				t.Fatalf("Apply = %v, want ErrInvalidHealthChecks with the agent's message", err)
			}
		})
	}
}

// Over SSH — agent disabled or unreachable — a request with checks is refused
// before SSH is asked to do anything.
func TestFallbackNeverRunsHealthChecksOverSSH(t *testing.T) {
	t.Parallel()
	unreachable := &fakeTransport{t: t, err: &wrapped{msg: "agent 10.0.0.1:9443 status: connection refused", err: ErrUnreachable}}
	for name, c := range map[string]struct {
		agent Transport
		want  string
	}{
		"disabled":    {nil, "spec.agent.disabled"},
		"unreachable": {unreachable, "connection refused"},
	} {
		t.Run(name, func(t *testing.T) {
			ssh := &fakeTransport{t: t, forbidden: true}
			_, err := (&Fallback{Agent: c.agent, SSH: ssh}).Apply(context.Background(), checkedRequest(t, "op-ssh"))
			if !errors.Is(err, ErrHealthChecksNeedAgent) || !strings.Contains(err.Error(), c.want) || ssh.calls != 0 {
				t.Fatalf("Apply = %v (ssh calls %d), want ErrHealthChecksNeedAgent saying %q", err, ssh.calls, c.want)
			}
		})
	}
}

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg }
func (w *wrapped) Unwrap() error { return w.err }

// SSH itself refuses too, for a caller that is not the Fallback: nixos-rebuild
// never runs.
func TestSSHApplyRefusesHealthChecks(t *testing.T) {
	t.Parallel()
	h := startSSHHost(t, sshtest.Options{})
	h.recordingRebuild(t)
	_, err := h.transport(t, nil).Apply(context.Background(), checkedRequest(t, "op-ssh-direct"))
	if !errors.Is(err, ErrHealthChecksNeedAgent) {
		t.Fatalf("Apply = %v, want ErrHealthChecksNeedAgent", err)
	}
	if _, err := os.Stat(h.record); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("nixos-rebuild ran over SSH (record: %v)", err)
	}
}

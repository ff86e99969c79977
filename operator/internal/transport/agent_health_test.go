package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
)

// deadLoopbackURL is an http:// URL on a loopback port nobody listens on.
func deadLoopbackURL(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("http://%s/health", addr)
}

// The usage guide's switch with an HTTP health check against a loopback port where
// nothing listens: the real agent activates, the check never passes, and the agent
// goes back to the previous generation before any confirmation — RolledBack, with
// the report naming the check.
func TestAgentHealthCheckThatNeverPassesRollsBack(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)
	target := Target{FlakeDir: ".", FlakeAttr: "worker"}

	good, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-good", Action: ActionSwitch, Target: target,
		Source: dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)})),
	})
	if err != nil || good.Outcome != OutcomeSucceeded {
		t.Fatalf("first Apply = %+v, %v", good, err)
	}

	spec := &nio.HealthChecks{
		Timeout:  &metav1.Duration{Duration: 3 * time.Second},
		Interval: &metav1.Duration{Duration: 200 * time.Millisecond},
		Checks:   []nio.HealthCheck{{Name: "web", HTTP: &nio.HTTPHealthCheck{URL: deadLoopbackURL(t), ExpectStatus: 200}}},
	}
	confirmed := false
	res, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-checked", Commit: "c2", Action: ActionSwitch, Target: target,
		Source:         dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)})),
		ConfirmTimeout: time.Minute,
		HealthChecks:   HealthChecksFor(spec),
		OnAwaitingConfirm: func(ctx context.Context, id string) error {
			confirmed = true
			return a.Confirm(ctx, id)
		},
	})
	if errors.Is(err, ErrHealthChecksNeedAgent) {
		t.Fatalf("the agent does not run health checks yet (its Status lists no %q feature): %v", FeatureHealthChecks, err)
	}
	if err != nil {
		t.Fatalf("Apply with a failing health check: %v", err)
	}
	if confirmed {
		t.Error("the confirm window opened although the health check failed")
	}
	if res.Outcome != OutcomeRolledBack || !strings.Contains(res.Message, "health check web failed") {
		t.Fatalf("result = %+v, want RolledBack naming the check", res)
	}
	f, ok := res.Health.Failure()
	if res.Health == nil || res.Health.Passed || res.Health.FirstFailure != "web" || !ok || f.Name != "web" || f.Attempts < 2 {
		t.Fatalf("health report = %+v, want web failed after several attempts", res.Health)
	}
	st, err := a.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.CurrentSystem != good.StorePath {
		t.Errorf("current system %s after the rollback, want the first system %s", st.CurrentSystem, good.StorePath)
	}
}

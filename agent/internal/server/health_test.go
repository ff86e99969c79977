package server

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/health"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// withHealth gives h health checks with the given overall timeout, retried every
// 100ms.
func withHealth(h *agentv1.ApplyHeader, timeout time.Duration, checks ...*agentv1.HealthCheck) *agentv1.ApplyHeader {
	h.HealthChecks = &agentv1.HealthChecks{Checks: checks, Timeout: durationpb.New(timeout), Interval: durationpb.New(100 * time.Millisecond)}
	return h
}

// commandCheck runs argv with a one-second timeout per attempt.
func commandCheck(name string, argv ...string) *agentv1.HealthCheck {
	return &agentv1.HealthCheck{Name: name, Kind: &agentv1.HealthCheck_Command{Command: &agentv1.CommandCheck{Argv: argv, Timeout: durationpb.New(time.Second)}}}
}

func httpCheck(name, url string) *agentv1.HealthCheck {
	return &agentv1.HealthCheck{Name: name, Kind: &agentv1.HealthCheck_Http{Http: &agentv1.HttpCheck{Url: url}}}
}

func TestHealthSpecMapsEveryFieldOfTheProto(t *testing.T) {
	hc := &agentv1.HealthChecks{
		Timeout:  durationpb.New(2 * time.Minute),
		Interval: durationpb.New(500 * time.Millisecond),
		Checks: []*agentv1.HealthCheck{
			{Name: "units", Kind: &agentv1.HealthCheck_Units{Units: &agentv1.UnitsCheck{Units: []string{"nginx", "sshd.socket"}, NoNewFailures: true}}},
			{Name: "web", Kind: &agentv1.HealthCheck_Http{Http: &agentv1.HttpCheck{Url: "https://10.0.0.1:8443/healthz", ExpectStatus: 204, AllowRemote: true}}},
			{Name: "db", Kind: &agentv1.HealthCheck_Command{Command: &agentv1.CommandCheck{Argv: []string{"/run/current-system/sw/bin/pg_isready", "-q"}, Timeout: durationpb.New(30 * time.Second)}}},
			{Name: "none"},
		},
	}
	want := health.Spec{
		Timeout:  2 * time.Minute,
		Interval: 500 * time.Millisecond,
		Checks: []health.Check{
			{Name: "units", Units: &health.UnitsCheck{Units: []string{"nginx", "sshd.socket"}, NoNewFailures: true}},
			{Name: "web", HTTP: &health.HTTPCheck{URL: "https://10.0.0.1:8443/healthz", ExpectStatus: 204, AllowRemote: true}},
			{Name: "db", Command: &health.CommandCheck{Argv: []string{"/run/current-system/sw/bin/pg_isready", "-q"}, Timeout: 30 * time.Second}},
			{Name: "none"},
		},
	}
	got := healthSpec(hc)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("healthSpec:\n got %+v\nwant %+v", got, want)
	}
	// The spec is the agent's own: changing the message afterwards changes nothing.
	hc.GetChecks()[0].GetUnits().Units[0] = "changed"
	hc.GetChecks()[2].GetCommand().Argv[0] = "/changed"
	if got.Checks[0].Units.Units[0] != "nginx" || got.Checks[2].Command.Argv[0] != "/run/current-system/sw/bin/pg_isready" {
		t.Errorf("the spec shares slices with the proto: %+v", got)
	}

	// Unset durations are zero: the interval then defaults, a zero timeout is refused.
	bare := healthSpec(&agentv1.HealthChecks{Checks: []*agentv1.HealthCheck{commandCheck("c", "/bin/true")}})
	if bare.Timeout != 0 || bare.Interval != 0 || health.Validate(bare, nil) == nil {
		t.Errorf("unset durations: %+v, Validate %v", bare, health.Validate(bare, nil))
	}
}

func TestInvalidHealthChecksFailTheOperationBeforeAnyBuild(t *testing.T) {
	for _, tc := range []struct {
		name   string
		action agentv1.Action
		hc     *agentv1.HealthChecks
		want   string
	}{
		{"a URL off this host", agentv1.Action_ACTION_SWITCH,
			&agentv1.HealthChecks{Timeout: durationpb.New(time.Minute), Checks: []*agentv1.HealthCheck{httpCheck("web", "http://192.0.2.10/")}},
			`health check "web": URL host 192.0.2.10 is neither a loopback address nor an address of this host`},
		{"a relative command", agentv1.Action_ACTION_TEST,
			&agentv1.HealthChecks{Timeout: durationpb.New(time.Minute), Checks: []*agentv1.HealthCheck{commandCheck("smoke", "false")}},
			`health check "smoke": command "false" must be an absolute path`},
		{"no overall timeout", agentv1.Action_ACTION_SWITCH,
			&agentv1.HealthChecks{Checks: []*agentv1.HealthCheck{commandCheck("smoke", "/bin/true")}},
			"the overall timeout must be positive"},
		{"no checks", agentv1.Action_ACTION_SWITCH,
			&agentv1.HealthChecks{Timeout: durationpb.New(time.Minute)},
			"holds no check"},
		{"boot", agentv1.Action_ACTION_BOOT,
			&agentv1.HealthChecks{Timeout: durationpb.New(time.Minute), Checks: []*agentv1.HealthCheck{commandCheck("smoke", "/bin/true")}},
			"health checks need action switch or test, not boot: only those activate a system to check"},
		{"build", agentv1.Action_ACTION_BUILD,
			&agentv1.HealthChecks{Timeout: durationpb.New(time.Minute), Checks: []*agentv1.HealthCheck{commandCheck("smoke", "/bin/true")}},
			"switch or test, not build:"},
		{"dry-activate", agentv1.Action_ACTION_DRY_ACTIVATE,
			&agentv1.HealthChecks{Timeout: durationpb.New(time.Minute), Checks: []*agentv1.HealthCheck{commandCheck("smoke", "/bin/true")}},
			"switch or test, not dry-activate:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x := newFakeExecutor()
			c := startBufconn(t, newTestServer(t, x, t.TempDir()))
			arch := makeArchive(t, sourceV1)
			h := flakeHeader("op-invalid", tc.action, arch)
			h.HealthChecks = tc.hc
			run := apply(t, c, h, arch, nil)
			r := run.result
			if r.GetOutcome() != agentv1.Outcome_OUTCOME_FAILED || !strings.HasPrefix(r.GetMessage(), "invalid health checks: ") ||
				!strings.Contains(r.GetMessage(), tc.want) || strings.Contains(r.GetMessage(), "\n") {
				t.Fatalf("result %v (stream err %v), want FAILED \"invalid health checks: …%s…\" on one line", r, run.streamed, tc.want)
			}
			if run.needed || len(x.Calls()) != 0 || r.GetHealth() != nil {
				t.Errorf("needed source %v, calls %q, health %v: something ran for invalid checks", run.needed, x.Calls(), r.GetHealth())
			}
			wantLastOperation(t, c, "op-invalid", agentv1.Outcome_OUTCOME_FAILED)
			st, _ := c.Status(context.Background(), &agentv1.StatusRequest{})
			if st.GetLastOperation().GetMessage() != r.GetMessage() {
				t.Errorf("status message %q, want the result's", st.GetLastOperation().GetMessage())
			}
			// The refused operation left the agent free.
			if again := apply(t, c, flakeHeader("op-next", agentv1.Action_ACTION_SWITCH, arch), arch, nil); again.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
				t.Errorf("the next operation: %v %v", again.streamed, again.result)
			}
		})
	}
}

package server

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
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

// writeScript writes an executable shell script into a fresh directory and returns
// its path.
func writeScript(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "check.sh")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// phaseIndex is the position of p among the run's phases, -1 when absent.
func phaseIndex(r *applyRun, p agentv1.Phase) int {
	return slices.Index(r.phases(), p)
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
	if r := healthReport(health.Report{FirstFailure: "b", Results: []health.Result{
		{Name: "a", Passed: true, Attempts: 1, Message: "ok"}, {Name: "b", Attempts: 3, Message: "down"},
	}}); r.GetPassed() || r.GetFirstFailure() != "b" || len(r.GetResults()) != 2 ||
		r.GetResults()[1].GetAttempts() != 3 || r.GetResults()[1].GetMessage() != "down" || !r.GetResults()[0].GetPassed() {
		t.Errorf("healthReport: %v", r)
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

func TestStatusListsTheHealthChecksFeature(t *testing.T) {
	c := startBufconn(t, newTestServer(t, newFakeExecutor(), t.TempDir()))
	st, err := c.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || !slices.Contains(st.GetFeatures(), "health-checks") {
		t.Fatalf("features %q (%v), want health-checks", st.GetFeatures(), err)
	}
}

func TestCommandChecksRunThroughSystemdRunWhenTheAgentDoes(t *testing.T) {
	withRun := &Server{cfg: Config{HealthSystemdRun: true, systemctl: "/x/systemctl"}}
	if r, ok := withRun.checker().Runner.(health.SystemdRunner); !ok || r.Systemctl != "/x/systemctl" {
		t.Errorf("with HealthSystemdRun the runner is %#v, want health.SystemdRunner", withRun.checker().Runner)
	}
	if r := (&Server{}).checker().Runner; r != nil {
		t.Errorf("without HealthSystemdRun the runner is %#v, want nil: the agent's children", r)
	}
}

// A failing check after a test rolls back by activating the previous system
// again with test (no profile to move), and the confirm window never opens.
func TestFailedHealthCheckAfterTestReactivatesThePreviousSystem(t *testing.T) {
	x := newFakeExecutor()
	c := startBufconn(t, newTestServer(t, x, t.TempDir()))
	v1 := makeArchive(t, sourceV1)
	base := apply(t, c, flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, v1), v1, nil).result

	v2 := makeArchive(t, sourceV2)
	h := withHealth(withConfirm(flakeHeader("op-2", agentv1.Action_ACTION_TEST, v2), time.Minute), time.Second, commandCheck("smoke", "/bin/false"))
	run := apply(t, c, h, v2, nil)
	r := run.result
	if r.GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK || !r.GetRolledBack() || r.GetCurrentSystem() != base.GetStorePath() ||
		r.GetMessage() != "health check smoke failed: "+r.GetHealth().GetResults()[0].GetMessage() {
		t.Fatalf("result %v, want ROLLED_BACK to %s naming the check; log:\n%s", r, base.GetStorePath(), run.logText())
	}
	if hr := r.GetHealth(); hr.GetPassed() || hr.GetFirstFailure() != "smoke" || hr.GetResults()[0].GetAttempts() < 2 ||
		!strings.Contains(hr.GetResults()[0].GetMessage(), "false exited with status 1") {
		t.Errorf("health report %v", hr)
	}
	hc, rb := phaseIndex(run, agentv1.Phase_PHASE_HEALTH_CHECKING), phaseIndex(run, agentv1.Phase_PHASE_ROLLING_BACK)
	if hc < 0 || rb < hc || phaseIndex(run, agentv1.Phase_PHASE_AWAITING_CONFIRM) >= 0 {
		t.Errorf("phases %v, want HEALTH_CHECKING, then ROLLING_BACK, no confirm window", run.phases())
	}
	if calls := x.Calls(); calls[len(calls)-1] != "activate test "+base.GetStorePath() || countCalls(x, "switch-generation") != 0 {
		t.Errorf("calls %q, want the previous system activated with test, the profile untouched", calls)
	}
	st, _ := c.Status(context.Background(), &agentv1.StatusRequest{})
	if last := st.GetLastOperation(); last.GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK || last.GetMessage() != r.GetMessage() {
		t.Errorf("status last operation %v", last)
	}
}

// failedUnitsSystemctl is a systemctl stand-in for the baseline: its first
// list-units shows old.service failed, every later one new.service too. With
// broken set, it fails like systemctl without a bus.
func failedUnitsSystemctl(t *testing.T, broken bool) string {
	t.Helper()
	exit := ""
	if broken {
		exit = "echo 'Failed to connect to bus: No such file or directory' >&2; exit 1\n"
	}
	return writeScript(t, exit+`d=$(dirname "$0")
[ "$1" = list-units ] || { echo "unexpected: $*" >&2; exit 2; }
echo x >> "$d/lists"
echo "old.service loaded failed failed Old"
[ "$(wc -l < "$d/lists")" -gt 1 ] && echo "new.service loaded failed failed New"
exit 0
`)
}

func TestNoNewFailuresComparesWithTheBaselineJournaledBeforeActivation(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	var mu sync.Mutex
	atActivation := map[string][]string{}
	s, err := New(Config{Executor: x, StateDir: state, MaxSourceBytes: 1 << 20, systemctl: failedUnitsSystemctl(t, false),
		crashAt: func(point string) {
			if point != stepActivating {
				return
			}
			data, _ := os.ReadFile(filepath.Join(state, "journal.json"))
			var j journal
			_ = json.Unmarshal(data, &j)
			mu.Lock()
			atActivation[j.OperationID] = j.HealthBaseline
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	c := startBufconn(t, s)
	v1 := makeArchive(t, sourceV1)
	base := apply(t, c, flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, v1), v1, nil).result

	v2 := makeArchive(t, sourceV2)
	units := &agentv1.HealthCheck{Name: "units", Kind: &agentv1.HealthCheck_Units{Units: &agentv1.UnitsCheck{NoNewFailures: true}}}
	run := apply(t, c, withHealth(flakeHeader("op-2", agentv1.Action_ACTION_SWITCH, v2), time.Second, units), v2, nil)
	r := run.result
	if r.GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK || r.GetCurrentSystem() != base.GetStorePath() ||
		!strings.Contains(r.GetMessage(), "failed since activation: new.service") || strings.Contains(r.GetMessage(), "old.service") {
		t.Fatalf("result %v, want a rollback for new.service only; log:\n%s", r, run.logText())
	}
	mu.Lock()
	defer mu.Unlock()
	if got := atActivation["op-2"]; !slices.Equal(got, []string{"old.service"}) {
		t.Errorf("baseline journaled at activation %q, want [old.service]", got)
	}
	if !strings.Contains(run.logText(), "units failed before the activation (not counted as new failures): old.service") {
		t.Errorf("the baseline was not logged:\n%s", run.logText())
	}
}

func TestBaselineThatCannotBeTakenFailsBeforeActivation(t *testing.T) {
	x := newFakeExecutor()
	s, err := New(Config{Executor: x, StateDir: t.TempDir(), MaxSourceBytes: 1 << 20, systemctl: failedUnitsSystemctl(t, true)})
	if err != nil {
		t.Fatal(err)
	}
	c := startBufconn(t, s)
	arch := makeArchive(t, sourceV1)
	units := &agentv1.HealthCheck{Name: "units", Kind: &agentv1.HealthCheck_Units{Units: &agentv1.UnitsCheck{NoNewFailures: true}}}
	r := apply(t, c, withHealth(flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, arch), time.Second, units), arch, nil).result
	if r.GetOutcome() != agentv1.Outcome_OUTCOME_FAILED || !strings.Contains(r.GetMessage(), "Failed to connect to bus") ||
		!strings.Contains(r.GetMessage(), "nothing was activated") {
		t.Fatalf("result %v", r)
	}
	if countCalls(x, "activate") != 0 || countCalls(x, "set-profile") != 0 {
		t.Errorf("calls %q", x.Calls())
	}
}

// An operator that reconnects while the checks run sees their phase, and the
// report in the result, like any other event; Status shows where it is.
func TestAttachDuringHealthChecksReplaysThePhaseAndTheReport(t *testing.T) {
	x := newFakeExecutor()
	c := startBufconn(t, newTestServer(t, x, t.TempDir()))
	ok := filepath.Join(t.TempDir(), "ok")
	script := writeScript(t, `[ -e "$1" ] || { echo "not yet"; exit 1; }`)
	arch := makeArchive(t, sourceV1)
	h := withHealth(flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, arch), time.Minute, commandCheck("ready", script, ok))

	checking := make(chan struct{})
	var once sync.Once
	first := make(chan *applyRun, 1)
	go func() {
		first <- apply(t, c, h, arch, func(ev *agentv1.ApplyResponse) bool {
			if strings.Contains(ev.GetLog().GetText(), "health check ready failing (attempt 1)") {
				once.Do(func() { close(checking) })
			}
			return true
		})
	}()
	<-checking
	st, err := c.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || !st.GetBusy() || st.GetLastOperation().GetPhase() != agentv1.Phase_PHASE_HEALTH_CHECKING {
		t.Errorf("status during the checks %v (%v)", st, err)
	}
	if _, err := c.Confirm(context.Background(), &agentv1.ConfirmRequest{OperationId: "op-1"}); err == nil {
		t.Error("Confirm was accepted while the checks ran")
	}
	attached := make(chan *applyRun, 1)
	go func() { attached <- apply(t, c, flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, arch), nil, nil) }()
	// Whether the attach lands before or after the checks pass, it replays them.
	time.Sleep(200 * time.Millisecond)
	if err := os.WriteFile(ok, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*applyRun{"first": <-first, "attached": <-attached} {
		res := r.result
		if res.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED || !res.GetHealth().GetPassed() || res.GetHealth().GetResults()[0].GetAttempts() < 2 {
			t.Errorf("%s stream: result %v", name, res)
		}
		if i := phaseIndex(r, agentv1.Phase_PHASE_HEALTH_CHECKING); i < 0 || i < phaseIndex(r, agentv1.Phase_PHASE_ACTIVATING) {
			t.Errorf("%s stream: phases %v", name, r.phases())
		}
		if !strings.Contains(r.logText(), "health check ready passed (attempt") {
			t.Errorf("%s stream: the checks' log is missing:\n%s", name, r.logText())
		}
	}
	wantLastOperation(t, c, "op-1", agentv1.Outcome_OUTCOME_SUCCEEDED)
}

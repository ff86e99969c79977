package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/testkit/nixtest"
)

// applyChecked switches to the basic fixture at version with health checks
// (overall timeout 2s) and, when confirm > 0, a confirm window.
func (h *nixHost) applyChecked(t *testing.T, id, version string, confirm time.Duration, onEvent func(*agentv1.ApplyResponse) bool, checks ...*agentv1.HealthCheck) *applyRun {
	t.Helper()
	arch := archiveDir(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: version}))
	hdr := withHealth(flakeHeader(id, agentv1.Action_ACTION_SWITCH, arch), 2*time.Second, checks...)
	if confirm > 0 {
		withConfirm(hdr, confirm)
	}
	return apply(t, h.client, hdr, arch, onEvent)
}

// wantBackOnV1 checks that a rolled-back switch left the host as the first switch
// did: generation 1 in the profile, v1 running, v1 activated again.
func (h *nixHost) wantBackOnV1(t *testing.T, v1, r *agentv1.ApplyResult) {
	t.Helper()
	if !r.GetRolledBack() || r.GetGeneration() != 1 || r.GetCurrentSystem() != v1.GetStorePath() || h.current(t) != v1.GetStorePath() {
		t.Fatalf("after rollback: %v, current %s, want generation 1 running %s", r, h.current(t), v1.GetStorePath())
	}
	if profile, _ := os.Readlink(h.profile); !strings.HasSuffix(profile, "system-1-link") {
		t.Errorf("profile points at %s, want generation 1", profile)
	}
	want := []string{"switch " + v1.GetStorePath(), "switch " + r.GetStorePath(), "switch " + v1.GetStorePath()}
	if acts := h.env.Activations(t); strings.Join(acts, "|") != strings.Join(want, "|") {
		t.Errorf("activations %q, want %q", acts, want)
	}
}

func wantPhasesInOrder(t *testing.T, r *applyRun, ps ...agentv1.Phase) {
	t.Helper()
	last := -1
	for _, p := range ps {
		i := phaseIndex(r, p)
		if i <= last {
			t.Errorf("phases %v, want %v in this order", r.phases(), ps)
			return
		}
		last = i
	}
}

func TestRealNixFailingCommandCheckReturnsToThePreviousGeneration(t *testing.T) {
	h := startNixHost(t)
	v1 := h.switchV1(t)

	script := writeScript(t, "echo 'smoke: connection refused' >&2\nexit 3\n")
	run := h.applyChecked(t, "op-unhealthy", "v2", 0, nil, commandCheck("smoke", script))
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_ROLLED_BACK)
	h.wantBackOnV1(t, v1, r)
	if want := "health check smoke failed: did not pass within 2s"; !strings.HasPrefix(r.GetMessage(), want) ||
		!strings.Contains(r.GetMessage(), "check.sh exited with status 3; output: smoke: connection refused") {
		t.Errorf("message %q, want it to start %q and say what the command printed", r.GetMessage(), want)
	}
	hr := r.GetHealth()
	if hr.GetPassed() || hr.GetFirstFailure() != "smoke" || len(hr.GetResults()) != 1 || hr.GetResults()[0].GetAttempts() < 2 ||
		r.GetMessage() != "health check smoke failed: "+hr.GetResults()[0].GetMessage() {
		t.Errorf("health report %v", hr)
	}
	wantPhasesInOrder(t, run, agentv1.Phase_PHASE_ACTIVATING, agentv1.Phase_PHASE_HEALTH_CHECKING, agentv1.Phase_PHASE_ROLLING_BACK, agentv1.Phase_PHASE_DONE)
	if !strings.Contains(run.logText(), "health check smoke failing (attempt 1)") {
		t.Errorf("the checks' log is missing:\n%s", run.logText())
	}
	st, err := h.client.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || st.GetGeneration() != 1 || st.GetLastOperation().GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK || st.GetLastOperation().GetMessage() != r.GetMessage() {
		t.Errorf("status %v (%v)", st, err)
	}
}

func TestRealNixPassingCheckOpensTheConfirmWindowAndSucceeds(t *testing.T) {
	h := startNixHost(t)
	h.switchV1(t)

	confirmed := make(chan error, 1)
	run := h.applyChecked(t, "op-healthy", "v2", 30*time.Second, confirmOnWindow(t, h.client, "op-healthy", confirmed),
		commandCheck("smoke", "/bin/true"))
	if err := <-confirmed; err != nil {
		t.Fatal(err)
	}
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_SUCCEEDED)
	if r.GetRolledBack() || r.GetGeneration() != 2 || h.current(t) != r.GetStorePath() {
		t.Fatalf("after the checks and Confirm: %v, current %s", r, h.current(t))
	}
	if hr := r.GetHealth(); !hr.GetPassed() || hr.GetFirstFailure() != "" || len(hr.GetResults()) != 1 || !hr.GetResults()[0].GetPassed() {
		t.Errorf("health report %v", hr)
	}
	wantPhasesInOrder(t, run, agentv1.Phase_PHASE_ACTIVATING, agentv1.Phase_PHASE_HEALTH_CHECKING, agentv1.Phase_PHASE_AWAITING_CONFIRM, agentv1.Phase_PHASE_DONE)
}

// Nobody listens on the port: the check fails, and the host goes back at once,
// without waiting for the confirm window it asked for.
func TestRealNixHTTPCheckOfAPortNobodyListensOnRollsBack(t *testing.T) {
	h := startNixHost(t)
	v1 := h.switchV1(t)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s/healthz", lis.Addr())
	lis.Close()
	run := h.applyChecked(t, "op-no-listener", "v2", time.Minute, nil, httpCheck("web", url))
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_ROLLED_BACK)
	h.wantBackOnV1(t, v1, r)
	if !strings.HasPrefix(r.GetMessage(), "health check web failed: ") || !strings.Contains(r.GetMessage(), lis.Addr().String()) {
		t.Errorf("message %q, want it to name the check and the address", r.GetMessage())
	}
	if r.GetHealth().GetFirstFailure() != "web" || phaseIndex(run, agentv1.Phase_PHASE_AWAITING_CONFIRM) >= 0 {
		t.Errorf("health %v, phases %v", r.GetHealth(), run.phases())
	}
}

// The agent dies during the checks over real Nix; the restarted agent runs them
// again, they still fail, and the host is really back on generation 1.
func TestRealNixAgentKilledDuringHealthChecksChecksAgainAndRollsBack(t *testing.T) {
	env, x, profile, state := nixHostOnDisk(t)
	first := startAgentProcess(t, x, state, "")
	v1arch := fixtureArchive(t, "v1")
	v1 := wantOutcome(t, apply(t, first.client, flakeHeader("op-v1", agentv1.Action_ACTION_SWITCH, v1arch), v1arch, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	first.kill()

	script, runs, broken := countingCheck(t)
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v2arch := fixtureArchive(t, "v2")
	h := withHealth(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2arch), 2*time.Second, commandCheck("smoke", script, runs, broken))
	dying := startAgentProcess(t, x, state, "health-checked")
	seen := make(chan *applyRun, 1)
	go func() { seen <- apply(t, dying.client, h, v2arch, nil) }()
	<-dying.crashed
	dying.kill()
	before := <-seen
	ranBefore := lines(t, runs)
	if cur, _ := os.Readlink(env.CurrentSystemLink()); cur == v1.GetStorePath() || ranBefore == 0 {
		t.Fatalf("before the restart: current system %s, %d runs; want v2 running and checked", cur, ranBefore)
	}

	second := startAgentProcess(t, x, state, "")
	r := reattach(t, second.client, h, before, nil)
	res := wantOutcome(t, r, agentv1.Outcome_OUTCOME_ROLLED_BACK)
	checkSequences(t, r.events, 1<<32)
	if lines(t, runs) <= ranBefore || !strings.HasPrefix(res.GetMessage(), "health check smoke failed: ") {
		t.Errorf("runs %d then %d, result %v: want the check run again after the restart", ranBefore, lines(t, runs), res)
	}
	if cur, _ := os.Readlink(env.CurrentSystemLink()); res.GetGeneration() != 1 || cur != v1.GetStorePath() {
		t.Fatalf("after the recovered rollback: %v, current-system %s, want generation 1 running %s", res, cur, v1.GetStorePath())
	}
	if link, _ := os.Readlink(profile); !strings.HasSuffix(link, "system-1-link") {
		t.Errorf("profile points at %s, want generation 1", link)
	}
	want := []string{"switch " + v1.GetStorePath(), "switch " + res.GetStorePath(), "switch " + v1.GetStorePath()}
	if acts := env.Activations(t); strings.Join(acts, "|") != strings.Join(want, "|") {
		t.Errorf("activations %q, want %q", acts, want)
	}
}

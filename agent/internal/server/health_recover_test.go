package server

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
)

// countingCheck is a command check that appends a line to runs at every attempt
// and fails while the file broken exists.
func countingCheck(t *testing.T) (script, runs, broken string) {
	t.Helper()
	dir := t.TempDir()
	runs, broken = filepath.Join(dir, "runs"), filepath.Join(dir, "broken")
	script = writeScript(t, `echo run >> "$1"; [ -e "$2" ] && { echo "service down"; exit 1; }; exit 0`)
	return script, runs, broken
}

func lines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

// killedAt starts a switch to v2 with h's checks on an agent that dies at crash
// point, and restarts the agent.
func killedAt(t *testing.T, x *fakeExecutor, state, point string, h *agentv1.ApplyHeader, arch []byte) (*agentProcess, *applyRun) {
	t.Helper()
	first := startAgentProcess(t, x, state, point)
	seen := make(chan *applyRun, 1)
	go func() { seen <- apply(t, first.client, h, arch, nil) }()
	<-first.crashed
	first.kill()
	before := <-seen
	return startAgentProcess(t, x, state, ""), before
}

// The agent dies after the checks ran (and failed) but before it acted on them: the
// restarted agent runs them again, and acts on what it sees now — here, a system
// that became healthy. The failure it never recorded does not count, and nothing
// is confirmed unchecked.
func TestKilledAfterTheHealthChecksRanRunsThemAgainAfterTheRestart(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	switchedToV1(t, x, state)
	script, runs, broken := countingCheck(t)
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v2 := makeArchive(t, sourceV2)
	h := withHealth(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2), time.Second, commandCheck("smoke", script, runs, broken))
	second, before := killedAt(t, x, state, "health-checked", h, v2)
	ranBefore := lines(t, runs)
	j := readTestJournal(t, state)
	if ranBefore < 2 || j.Step != stepHealthChecking || j.HealthDeadline == nil || len(j.HealthReport) != 0 {
		t.Fatalf("before the restart: %d runs, journal step %q deadline %v report %s", ranBefore, j.Step, j.HealthDeadline, j.HealthReport)
	}
	if phaseIndex(before, agentv1.Phase_PHASE_HEALTH_CHECKING) < 0 {
		t.Errorf("phases before the kill %v", before.phases())
	}
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}

	r := reattach(t, second.client, h, before, nil)
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_SUCCEEDED, 2, r.result.GetStorePath())
	if hr := r.result.GetHealth(); !hr.GetPassed() || hr.GetResults()[0].GetAttempts() != 1 {
		t.Errorf("health report %v, want the re-run's pass", hr)
	}
	if lines(t, runs) <= ranBefore {
		t.Errorf("the check did not run after the restart (%d runs before, %d after)", ranBefore, lines(t, runs))
	}
	if i := phaseIndex(r, agentv1.Phase_PHASE_HEALTH_CHECKING); i < 0 ||
		!strings.Contains(r.events[slices.IndexFunc(r.events, func(ev *agentv1.ApplyResponse) bool {
			return ev.GetPhase().GetPhase() == agentv1.Phase_PHASE_HEALTH_CHECKING
		})].GetPhase().GetDetail(), "again after the agent restarted") {
		t.Errorf("recovered phases %v: want the checks run again", r.phases())
	}
	// The deadline had passed while the agent was down: it still gave them time.
	if !strings.Contains(r.logText(), "after the agent restarted; running them for 1s") {
		t.Errorf("log:\n%s", r.logText())
	}
	if countCalls(x, "switch-generation") != 0 || countCalls(x, "activate") != 2 {
		t.Errorf("calls %q: want no rollback and no second activation", x.Calls())
	}
	if !strings.Contains(second.log.String(), `msg="recovering operation interrupted by an agent restart" operation=op-v2 step=health-checking`) {
		t.Errorf("agent log:\n%s", second.log.String())
	}
	wantLastOperation(t, second.client, "op-v2", agentv1.Outcome_OUTCOME_SUCCEEDED)
}

// The agent dies as the checks begin, with a confirm window asked for: after the
// restart the failing checks roll back at once, within the journaled deadline
// (not a new one), and no confirm window opens.
func TestKilledAsTheHealthChecksBeginRollsBackWhenTheyFailAfterTheRestart(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	v1 := switchedToV1(t, x, state)
	script, runs, broken := countingCheck(t)
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	v2 := makeArchive(t, sourceV2)
	const timeout = 3 * time.Second
	h := withHealth(withConfirm(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2), time.Minute), timeout, commandCheck("smoke", script, runs, broken))
	second, before := killedAt(t, x, state, stepHealthChecking, h, v2)
	deadline := *readTestJournal(t, state).HealthDeadline
	if n := lines(t, runs); n != 0 {
		t.Fatalf("the check ran %d times before the crash point", n)
	}

	start := time.Now()
	r := reattach(t, second.client, h, before, nil)
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_ROLLED_BACK, 1, v1)
	if !r.result.GetRolledBack() || !strings.HasPrefix(r.result.GetMessage(), "health check smoke failed: ") ||
		!strings.Contains(r.result.GetMessage(), "service down") || r.result.GetHealth().GetFirstFailure() != "smoke" {
		t.Errorf("result %v", r.result)
	}
	if lines(t, runs) == 0 {
		t.Error("the check never ran")
	}
	if phaseIndex(r, agentv1.Phase_PHASE_AWAITING_CONFIRM) >= 0 || phaseIndex(r, agentv1.Phase_PHASE_ROLLING_BACK) < phaseIndex(r, agentv1.Phase_PHASE_HEALTH_CHECKING) {
		t.Errorf("phases %v", r.phases())
	}
	// The journaled deadline, from the end of the activation before the restart.
	if took := time.Since(start); took > timeout+2*time.Second {
		t.Errorf("the recovered checks ran %v, beyond the journaled deadline", took)
	}
	j := readTestJournal(t, state)
	if j.Step != stepFinished || !j.HealthDeadline.Equal(deadline) {
		t.Errorf("journal step %q health deadline %v, want finished with the original %v", j.Step, j.HealthDeadline, deadline)
	}
	want := []string{"switch-generation 1", "activate switch " + v1}
	if calls := x.Calls(); !slices.Equal(calls[len(calls)-2:], want) {
		t.Errorf("calls %q, want them to end with %q", calls, want)
	}
	st, _ := second.client.Status(t.Context(), &agentv1.StatusRequest{})
	if st.GetLastOperation().GetMessage() != r.result.GetMessage() {
		t.Errorf("status message %q, want %q", st.GetLastOperation().GetMessage(), r.result.GetMessage())
	}
}

// The checks passed, then the agent died in the confirm window: the restarted
// agent does not run them again (they passed and were journaled), and the final
// result still carries their report.
func TestKilledInTheConfirmWindowAfterPassingChecksKeepsTheirReport(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	switchedToV1(t, x, state)
	script, runs, broken := countingCheck(t)
	v2 := makeArchive(t, sourceV2)
	h := withHealth(withConfirm(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2), time.Minute), time.Second, commandCheck("smoke", script, runs, broken))
	second, h, before := killedInConfirmWindowOf(t, x, state, h, v2)
	ran := lines(t, runs)

	confirmed := make(chan error, 1)
	r := reattach(t, second.client, h, before, confirmOnWindow(t, second.client, "op-v2", confirmed))
	if err := <-confirmed; err != nil {
		t.Fatal(err)
	}
	wantResult(t, r, agentv1.Outcome_OUTCOME_SUCCEEDED, 2, r.result.GetStorePath())
	if hr := r.result.GetHealth(); !hr.GetPassed() || len(hr.GetResults()) != 1 || hr.GetResults()[0].GetName() != "smoke" {
		t.Errorf("health report %v", hr)
	}
	if lines(t, runs) != ran || phaseIndex(r, agentv1.Phase_PHASE_HEALTH_CHECKING) >= 0 {
		t.Errorf("the passed checks ran again: %d runs, then %d; phases %v", ran, lines(t, runs), r.phases())
	}
}

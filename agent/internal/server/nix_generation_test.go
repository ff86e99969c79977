package server

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/testkit/nixtest"
)

func generationHeader(id string, gen int64) *agentv1.ApplyHeader {
	return &agentv1.ApplyHeader{OperationId: id, Action: agentv1.Action_ACTION_SWITCH,
		Target: &agentv1.ApplyHeader_Generation{Generation: &agentv1.GenerationTarget{Generation: gen}}}
}

// switchV1V2 switches to v1 then v2 (generations 1 and 2, v2 running).
func (h *nixHost) switchV1V2(t *testing.T) (v1, v2 *agentv1.ApplyResult) {
	t.Helper()
	v1 = h.switchV1(t)
	v2 = wantOutcome(t, h.apply(t, "op-v2", "basic", map[string]string{nixtest.VarVersion: "v2"}, 0, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if v2.GetGeneration() != 2 || h.current(t) != v2.GetStorePath() {
		t.Fatalf("second switch: %v, current %s", v2, h.current(t))
	}
	return v1, v2
}

func (h *nixHost) wantProfileAt(t *testing.T, gen string) {
	t.Helper()
	if link, _ := os.Readlink(h.profile); !strings.HasSuffix(link, "system-"+gen+"-link") {
		t.Errorf("profile points at %s, want generation %s", link, gen)
	}
}

func TestRealNixGenerationTargetActivatesThePreviousGenerationWithoutBuilding(t *testing.T) {
	h := startNixHost(t)
	v1, v2 := h.switchV1V2(t)

	confirmed := make(chan error, 1)
	run := apply(t, h.client, withConfirm(generationHeader("op-back", 0), 30*time.Second), nil, confirmOnWindow(t, h.client, "op-back", confirmed))
	if err := <-confirmed; err != nil {
		t.Fatal(err)
	}
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_SUCCEEDED)
	if r.GetGeneration() != 1 || r.GetStorePath() != v1.GetStorePath() || h.current(t) != v1.GetStorePath() || r.GetCurrentSystem() != v1.GetStorePath() {
		t.Fatalf("after activating the previous generation: %v, current %s, want generation 1 running %s", r, h.current(t), v1.GetStorePath())
	}
	h.wantProfileAt(t, "1")
	if run.needed || phaseIndex(run, agentv1.Phase_PHASE_BUILDING) >= 0 || phaseIndex(run, agentv1.Phase_PHASE_RECEIVING_SOURCE) >= 0 {
		t.Errorf("asked for a source or built: phases %v", run.phases())
	}
	wantPhasesInOrder(t, run, agentv1.Phase_PHASE_SETTING_PROFILE, agentv1.Phase_PHASE_ACTIVATING, agentv1.Phase_PHASE_AWAITING_CONFIRM, agentv1.Phase_PHASE_DONE)
	want := []string{"switch " + v1.GetStorePath(), "switch " + v2.GetStorePath(), "switch " + v1.GetStorePath()}
	if acts := h.env.Activations(t); strings.Join(acts, "|") != strings.Join(want, "|") {
		t.Errorf("activations %q, want %q", acts, want)
	}
	// Going forward again by number: generation 2 is still in the profile.
	r = wantOutcome(t, apply(t, h.client, generationHeader("op-forward", 2), nil, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if r.GetGeneration() != 2 || h.current(t) != v2.GetStorePath() {
		t.Fatalf("after activating generation 2: %v, current %s", r, h.current(t))
	}
	h.wantProfileAt(t, "2")
}

// No Confirm: the host goes back to where it was — generation 2, v2 running.
func TestRealNixGenerationTargetWithoutConfirmReturnsToWhereItWas(t *testing.T) {
	h := startNixHost(t)
	v1, v2 := h.switchV1V2(t)

	r := wantOutcome(t, apply(t, h.client, withConfirm(generationHeader("op-back", 1), time.Second), nil, nil), agentv1.Outcome_OUTCOME_ROLLED_BACK)
	if !r.GetRolledBack() || r.GetGeneration() != 2 || h.current(t) != v2.GetStorePath() || r.GetCurrentSystem() != v2.GetStorePath() {
		t.Fatalf("after the unconfirmed rollback: %v, current %s, want generation 2 running %s", r, h.current(t), v2.GetStorePath())
	}
	h.wantProfileAt(t, "2")
	want := []string{"switch " + v1.GetStorePath(), "switch " + v2.GetStorePath(), "switch " + v1.GetStorePath(), "switch " + v2.GetStorePath()}
	if acts := h.env.Activations(t); strings.Join(acts, "|") != strings.Join(want, "|") {
		t.Errorf("activations %q, want %q", acts, want)
	}
}

func TestRealNixGenerationTargetThatTheProfileLacksFailsAndChangesNothing(t *testing.T) {
	h := startNixHost(t)
	h.switchV1(t)

	for _, c := range []struct {
		gen  int64
		want string
	}{
		{7, "the system profile has no generation 7; it holds 1; nothing was changed"},
		{0, "the system profile holds no generation before the current one (1); it holds 1; nothing was changed"},
	} {
		r := wantOutcome(t, apply(t, h.client, generationHeader(fmt.Sprintf("op-missing-%d", c.gen), c.gen), nil, nil), agentv1.Outcome_OUTCOME_FAILED)
		if r.GetMessage() != c.want || r.GetGeneration() != 1 {
			t.Errorf("generation %d: %v, want message %q", c.gen, r, c.want)
		}
	}
	h.wantProfileAt(t, "1")
	if acts := h.env.Activations(t); len(acts) != 1 {
		t.Errorf("activations %q, want only the first switch", acts)
	}
	st, err := h.client.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || !strings.Contains(strings.Join(st.GetFeatures(), ","), featureActivateGeneration) {
		t.Errorf("status %v (%v): want feature %q", st, err, featureActivateGeneration)
	}
}

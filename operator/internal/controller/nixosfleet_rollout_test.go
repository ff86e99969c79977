package controller

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
)

// These tests drive the rollout planner alone: no API server, no clock. A sim holds
// the fleet's Machines and carries out each plan the way the controller does (a move
// puts a Machine on the target revision, applying; a revert puts it back on its
// previous one), and the test says which Machines finish or fail in between.

func sizes(v ...any) []intstr.IntOrString {
	out := make([]intstr.IntOrString, 0, len(v))
	for _, x := range v {
		switch x := x.(type) {
		case int:
			out = append(out, intstr.FromInt32(int32(x)))
		case string:
			out = append(out, intstr.FromString(x))
		}
	}
	return out
}

func TestResolveStrategySizesBatchesAgainstTheFleet(t *testing.T) {
	for _, tc := range []struct {
		name     string
		s        nio.RolloutStrategy
		fleet    int
		batches  []int
		maxUnav  int
		stepSize []int // batchSize(1..n) with plenty pending
	}{
		{"numbers", nio.RolloutStrategy{Batches: sizes(1, 2)}, 10, []int{1, 2}, 0, []int{1, 2, 2, 2}},
		{"percentages round up", nio.RolloutStrategy{Batches: sizes("10%", "34%")}, 10, []int{1, 4}, 0, []int{1, 4, 4}},
		{"a tiny percentage is one Machine", nio.RolloutStrategy{Batches: sizes("1%")}, 10, []int{1}, 0, []int{1, 1}},
		{"digits in a string are a number", nio.RolloutStrategy{Batches: sizes("3")}, 10, []int{3}, 0, []int{3}},
		{"numbers and percentages", nio.RolloutStrategy{Canary: 1, Batches: sizes(2, "50%")}, 7, []int{2, 4}, 0, []int{2, 4, 4}},
		{"no batches: the rest", nio.RolloutStrategy{Canary: 2}, 10, nil, 0, []int{100}},
		{"maxUnavailable number", nio.RolloutStrategy{MaxUnavailable: ptrTo(intstr.FromInt32(3))}, 10, nil, 3, nil},
		{"maxUnavailable percentage rounds down", nio.RolloutStrategy{MaxUnavailable: ptrTo(intstr.FromString("25%"))}, 10, nil, 2, nil},
		{"maxUnavailable is at least one", nio.RolloutStrategy{MaxUnavailable: ptrTo(intstr.FromString("5%"))}, 10, nil, 1, nil},
		{"canary equal to the fleet", nio.RolloutStrategy{Canary: 3}, 3, nil, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := resolveStrategy(tc.s, tc.fleet)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(s.batches, tc.batches) || s.maxUnavailable != tc.maxUnav {
				t.Errorf("batches %v maxUnavailable %d, want %v %d", s.batches, s.maxUnavailable, tc.batches, tc.maxUnav)
			}
			for i, want := range tc.stepSize {
				if got := s.batchSize(i+1, 100); got != want {
					t.Errorf("batch %d: size %d, want %d", i+1, got, want)
				}
			}
			if s.batchSize(len(tc.stepSize)+1, 1) > 1 {
				t.Error("a batch is larger than the Machines pending")
			}
		})
	}
}

func TestResolveStrategyRefusesWhatCannotWork(t *testing.T) {
	for _, tc := range []struct {
		name   string
		s      nio.RolloutStrategy
		fleet  int
		reason string
		says   string
	}{
		{"batch zero", nio.RolloutStrategy{Batches: sizes(0)}, 5, ReasonInvalidStrategy, "batches[0]"},
		{"batch \"0\"", nio.RolloutStrategy{Batches: sizes("0")}, 5, ReasonInvalidStrategy, "at least 1"},
		{"negative batch", nio.RolloutStrategy{Batches: sizes(1, -2)}, 5, ReasonInvalidStrategy, "batches[1]"},
		{"150%", nio.RolloutStrategy{Batches: sizes("150%")}, 5, ReasonInvalidStrategy, "150%"},
		{"0%", nio.RolloutStrategy{Batches: sizes("0%")}, 5, ReasonInvalidStrategy, "0%"},
		{"not a size", nio.RolloutStrategy{Batches: sizes("abc")}, 5, ReasonInvalidStrategy, `"abc"`},
		{"percentages over 100", nio.RolloutStrategy{Batches: sizes("60%", "50%")}, 5, ReasonInvalidStrategy, "110%"},
		{"numbers over the fleet", nio.RolloutStrategy{Batches: sizes(3, 3)}, 5, ReasonInvalidStrategy, "add up to 6"},
		{"numbers with the canary over the fleet", nio.RolloutStrategy{Canary: 2, Batches: sizes(3, 1)}, 5, ReasonInvalidStrategy, "add up to 6"},
		{"canary over the fleet", nio.RolloutStrategy{Canary: 6}, 5, ReasonCanaryExceedsFleet, "canary is 6"},
		{"maxUnavailable zero", nio.RolloutStrategy{MaxUnavailable: ptrTo(intstr.FromInt32(0))}, 5, ReasonInvalidStrategy, "maxUnavailable"},
		{"maxUnavailable not a size", nio.RolloutStrategy{MaxUnavailable: ptrTo(intstr.FromString("all"))}, 5, ReasonInvalidStrategy, "maxUnavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := resolveStrategy(tc.s, tc.fleet)
			var st *outcome.Stalling
			if !errors.As(err, &st) {
				t.Fatalf("error %v, want a stall", err)
			}
			if st.Reason != tc.reason || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("stalled %s %q, want %s saying %q", st.Reason, err, tc.reason, tc.says)
			}
		})
	}
}

// sim is a fleet the planner drives, without the API server.
type sim struct {
	t   *testing.T
	in  rolloutInput
	rev map[string]string // each Machine's configuration's revision
	now time.Time
}

func newSim(t *testing.T, s nio.RolloutStrategy, machines ...string) *sim {
	t.Helper()
	st, err := resolveStrategy(s, len(machines))
	if err != nil {
		t.Fatal(err)
	}
	sm := &sim{t: t, rev: map[string]string{}, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	sm.in = rolloutInput{strategy: st, revision: "rev1", commit: strings.Repeat("1", 40), display: "main@sha1:111"}
	for _, m := range machines {
		sm.in.members = append(sm.in.members, fleetMember{Name: m})
	}
	return sm
}

func (s *sim) member(name string) *fleetMember {
	for i := range s.in.members {
		if s.in.members[i].Name == name {
			return &s.in.members[i]
		}
	}
	s.t.Fatalf("no Machine %s", name)
	return nil
}

// plan runs the planner and carries out its moves and reverts.
func (s *sim) plan() rolloutPlan {
	s.t.Helper()
	s.in.now = s.now
	p := planRollout(s.in)
	s.in.rollout = p.rollout
	for _, mv := range p.moves {
		m := s.member(mv.machine)
		if m.Updated && s.rev[m.Name] != "" && s.rev[m.Name] != s.in.revision {
			m.Previous = s.rev[m.Name]
		}
		s.rev[m.Name] = s.in.revision
		*m = fleetMember{Name: m.Name, Child: true, OnTarget: true, Batch: mv.batch, Previous: m.Previous, Unavailable: true}
	}
	for _, name := range p.reverts {
		m := s.member(name)
		s.rev[name] = m.Previous
		*m = fleetMember{Name: name, Child: true, Batch: batchRevert, Previous: m.Previous, Unavailable: true}
	}
	return p
}

// done: the Machines run their configuration's spec.
func (s *sim) done(names ...string) {
	for _, n := range names {
		m := s.member(n)
		m.Updated, m.Failed, m.Ready, m.Unavailable = true, false, true, false
	}
}

func (s *sim) fails(name, msg string) {
	m := s.member(name)
	m.Updated, m.Failed, m.Ready, m.Unavailable, m.Message = false, true, false, true, msg
}

// newRevision: a new commit; every Machine on the old revision is pending.
func (s *sim) newRevision(rev string) {
	s.in.revision, s.in.commit = rev, strings.Repeat(rev[len(rev)-1:], 40)
	for i := range s.in.members {
		s.in.members[i].OnTarget = false
	}
}

func moved(p rolloutPlan) string {
	var out []string
	for _, mv := range p.moves {
		out = append(out, mv.batch+":"+mv.machine)
	}
	return strings.Join(out, " ")
}

func (s *sim) expectMoves(p rolloutPlan, want string) {
	s.t.Helper()
	if got := moved(p); got != want {
		s.t.Fatalf("moves %q, want %q (phase %s %s: %s)", got, want, p.rollout.Phase, p.rollout.Reason, p.verdict.message)
	}
}

func (s *sim) expectPhase(p rolloutPlan, phase nio.RolloutPhase, reason string) {
	s.t.Helper()
	if p.rollout.Phase != phase || p.rollout.Reason != reason {
		s.t.Fatalf("phase %s %s, want %s %s (%s)", p.rollout.Phase, p.rollout.Reason, phase, reason, p.verdict.message)
	}
}

func hasEvent(p rolloutPlan, reason string) bool {
	for _, e := range p.events {
		if e.reason == reason {
			return true
		}
	}
	return false
}

func batchSummary(ro *nio.RolloutStatus) string {
	var out []string
	for _, b := range ro.Batches {
		out = append(out, fmt.Sprintf("%s/%d/%s", b.Name, b.Size, b.Phase))
	}
	return strings.Join(out, " ")
}

func TestPlannerCanaryThenBatchesWithTheLastSizeRepeating(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Canary: 1, Batches: sizes(2, 1)}, "m1", "m2", "m3", "m4", "m5")
	p := s.plan()
	s.expectMoves(p, "canary:m1")
	if !p.started || !hasEvent(p, "RolloutStarted") || !hasEvent(p, "BatchStarted") || p.verdict.kind != verdictWaiting {
		t.Fatalf("a rollout start: %+v", p)
	}
	s.expectMoves(s.plan(), "") // the canary applies
	s.done("m1")
	p = s.plan()
	s.expectMoves(p, "1:m2 1:m3")
	if !hasEvent(p, "BatchSucceeded") {
		t.Error("no BatchSucceeded event for the canary")
	}
	s.done("m2")
	s.expectMoves(s.plan(), "")
	s.done("m3")
	s.expectMoves(s.plan(), "2:m4")
	s.done("m4")
	s.expectMoves(s.plan(), "3:m5") // the last size repeats
	s.done("m5")
	p = s.plan()
	s.expectPhase(p, nio.RolloutCompleted, ReasonSucceeded)
	if p.verdict.kind != verdictReady || !slices.Equal(p.finished, []string{rolloutCompleted}) || p.rollout.FinishTime == nil {
		t.Errorf("completion: verdict %+v finished %v", p.verdict, p.finished)
	}
	if got := batchSummary(p.rollout); got != "canary/1/Succeeded 1/2/Succeeded 2/1/Succeeded 3/1/Succeeded" {
		t.Errorf("batches %s", got)
	}
	if len(p.batches) != 1 || p.batches[0].result != batchSucceeded {
		t.Errorf("batch durations %+v", p.batches)
	}
	// Nothing new: nothing moves, no new events.
	p = s.plan()
	s.expectMoves(p, "")
	if len(p.events) != 0 || p.started {
		t.Errorf("a settled fleet planned %+v", p.events)
	}
}

func TestPlannerPercentBatchesRoundUp(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Batches: sizes("40%")}, "a", "b", "c", "d", "e", "f")
	s.expectMoves(s.plan(), "1:a 1:b 1:c") // 40% of 6 = 2.4 → 3
	s.done("a", "b", "c")
	s.expectMoves(s.plan(), "2:d 2:e 2:f")
}

func TestPlannerMaxParallelBoundsABatchInFlight(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Batches: sizes(4), MaxParallel: 2}, "a", "b", "c", "d", "e")
	s.expectMoves(s.plan(), "1:a 1:b")
	s.expectMoves(s.plan(), "")
	s.done("a")
	s.expectMoves(s.plan(), "1:c")
	s.done("b", "c")
	s.expectMoves(s.plan(), "1:d")
	s.done("d")
	s.expectMoves(s.plan(), "2:e")
}

func TestPlannerMaxUnavailableHoldsWhileTheFleetIsDown(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{MaxUnavailable: ptrTo(intstr.FromInt32(1))}, "a", "b", "c")
	// Every Machine runs the old revision; b is down for reasons of its own.
	for _, n := range []string{"a", "b", "c"} {
		*s.member(n) = fleetMember{Name: n, Child: true, Updated: true, Ready: true, Batch: "1"}
		s.rev[n] = "rev0"
	}
	s.member("b").Unavailable, s.member("b").Ready = true, false
	p := s.plan()
	s.expectMoves(p, "")
	s.expectPhase(p, nio.RolloutProgressing, ReasonMaxUnavailable)
	s.done("b")
	s.expectMoves(s.plan(), "1:a")
	s.expectMoves(s.plan(), "")
	s.done("a")
	s.expectMoves(s.plan(), "1:b")
}

func TestPlannerCanaryFailurePausesUntilPromoted(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Canary: 1, Batches: sizes(1)}, "a", "b", "c")
	s.in.promote = "old" // set before the rollout: not a request
	s.plan()
	s.fails("a", "ApplyFailed: nix build failed")
	p := s.plan()
	s.expectMoves(p, "")
	s.expectPhase(p, nio.RolloutPaused, ReasonBatchFailed)
	if p.verdict.kind != verdictStalled || !strings.Contains(p.verdict.message, "a: ApplyFailed: nix build failed") || !hasEvent(p, ReasonBatchFailed) {
		t.Fatalf("failure verdict %+v events %+v", p.verdict, p.events)
	}
	if got := batchSummary(p.rollout); got != "canary/1/Failed" {
		t.Errorf("batches %s", got)
	}
	p = s.plan() // still paused, nothing moves, no new event
	s.expectMoves(p, "")
	if hasEvent(p, ReasonBatchFailed) {
		t.Error("the failure event repeats")
	}
	s.in.promote = "go"
	p = s.plan()
	s.expectMoves(p, "1:b")
	if p.rollout.LastHandledPromote != "go" || !hasEvent(p, "Promoted") {
		t.Errorf("promote not recorded: %+v", p.rollout)
	}
	s.done("b")
	s.expectMoves(s.plan(), "2:c") // the failed canary does not stop the rollout again
	s.done("c")
	p = s.plan()
	s.expectPhase(p, nio.RolloutCompleted, ReasonMachinesFailed)
	if p.verdict.kind != verdictDegraded {
		t.Errorf("a rollout that left a failed Machine behind is %v", p.verdict.kind)
	}
}

func TestPlannerRevertRestoresWhatTheMachinesRanBefore(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Canary: 1, Batches: sizes(1), OnFailure: nio.FailureRevert}, "a", "b", "c", "d")
	// The first rollout: nothing ran before.
	for range 5 {
		s.plan()
		s.done("a", "b", "c", "d")
	}
	s.expectPhase(s.plan(), nio.RolloutCompleted, ReasonSucceeded)
	s.newRevision("rev2")
	s.expectMoves(s.plan(), "canary:a")
	s.done("a")
	s.expectMoves(s.plan(), "1:b")
	s.done("b")
	s.expectMoves(s.plan(), "2:c")
	s.fails("c", "RolledBack: not confirmed")
	p := s.plan()
	s.expectPhase(p, nio.RolloutReverting, ReasonReverting)
	if got := strings.Join(p.reverts, " "); got != "a b c" {
		t.Fatalf("reverts %q, want the Machines the rollout moved", got)
	}
	if len(p.moves) != 0 || !hasEvent(p, "RevertStarted") {
		t.Errorf("moves %v events %+v", p.moves, p.events)
	}
	for _, n := range []string{"a", "b", "c"} {
		if s.rev[n] != "rev1" {
			t.Errorf("%s reverted to %q, want rev1", n, s.rev[n])
		}
	}
	if s.rev["d"] != "rev1" || s.member("d").OnTarget {
		t.Error("d, never moved, changed")
	}
	s.done("a", "b")
	s.expectPhase(s.plan(), nio.RolloutReverting, ReasonReverting)
	s.done("c")
	p = s.plan()
	s.expectPhase(p, nio.RolloutReverted, ReasonReverted)
	if p.verdict.kind != verdictStalled || !slices.Equal(p.finished, []string{rolloutReverted}) || !strings.Contains(p.rollout.Message, "c: RolledBack") {
		t.Fatalf("reverted: %+v finished %v message %q", p.verdict, p.finished, p.rollout.Message)
	}
	// A reverted revision stays reverted...
	s.expectMoves(s.plan(), "")
	// ...until a promote, which starts it again from the canary.
	s.in.promote = "retry"
	p = s.plan()
	s.expectMoves(p, "canary:a")
	if !p.started || p.rollout.Phase != nio.RolloutProgressing || p.rollout.LastHandledPromote != "retry" {
		t.Errorf("restart: %+v", p.rollout)
	}
}

func TestPlannerRevertLeavesMachinesWithNothingBefore(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Canary: 1, OnFailure: nio.FailureRevert}, "a", "b")
	s.plan()
	s.fails("a", "ApplyFailed: boom")
	p := s.plan()
	s.expectPhase(p, nio.RolloutReverted, ReasonReverted)
	if len(p.reverts) != 0 || !strings.Contains(p.rollout.Message, "1 had none") {
		t.Errorf("reverts %v, message %q", p.reverts, p.rollout.Message)
	}
}

func TestPlannerNewRevisionSupersedesFromTheCanary(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Canary: 1, Batches: sizes(1)}, "a", "b", "c")
	for range 3 {
		s.plan()
		s.done("a", "b", "c")
	}
	s.newRevision("rev2")
	s.plan()
	s.done("a")
	s.expectMoves(s.plan(), "1:b") // b applies rev2 ...
	s.newRevision("rev3")          // ... when rev3 arrives
	p := s.plan()
	s.expectMoves(p, "canary:a")
	if p.rollout.Supersedes != "rev2" || p.rollout.Revision != "rev3" || !slices.Equal(p.finished, []string{rolloutSuperseded}) ||
		!hasEvent(p, "RolloutSuperseded") || len(p.rollout.Batches) != 1 {
		t.Fatalf("superseding rollout %+v finished %v", p.rollout, p.finished)
	}
	if s.member("b").Previous != "rev1" {
		t.Errorf("b, moved to rev2 from rev1 and not done with it, keeps rev1 as what it ran before; got %q", s.member("b").Previous)
	}
	s.done("a", "b")
	s.expectMoves(s.plan(), "1:b")
	if s.member("b").Previous != "rev2" {
		t.Errorf("b ran rev2 when moved: previous %q", s.member("b").Previous)
	}
}

func TestPlannerManualPromotionWaitsAfterEveryStep(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Canary: 1, Batches: sizes(1), Promotion: nio.PromotionManual}, "a", "b", "c")
	s.expectMoves(s.plan(), "canary:a")
	s.done("a")
	p := s.plan()
	s.expectMoves(p, "")
	s.expectPhase(p, nio.RolloutPaused, ReasonAwaitingPromotion)
	if p.verdict.kind != verdictWaiting || !hasEvent(p, ReasonAwaitingPromotion) || !strings.Contains(p.verdict.message, nio.PromoteAnnotation) {
		t.Fatalf("gate: %+v", p.verdict)
	}
	s.in.promote = "1"
	s.expectMoves(s.plan(), "1:b")
	s.done("b")
	s.expectMoves(s.plan(), "") // the same value promotes once
	s.in.promote = "2"
	s.expectMoves(s.plan(), "2:c")
}

func TestPlannerSpecPausedHoldsAndResumes(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Batches: sizes(1)}, "a", "b")
	s.in.paused = true
	p := s.plan()
	s.expectMoves(p, "")
	s.expectPhase(p, nio.RolloutPaused, ReasonPaused)
	if !hasEvent(p, "Paused") {
		t.Error("no Paused event")
	}
	s.in.paused = false
	p = s.plan()
	s.expectMoves(p, "1:a")
	if !hasEvent(p, "Resumed") {
		t.Error("no Resumed event")
	}
	s.in.paused = true
	s.done("a")
	s.expectMoves(s.plan(), "")
	s.in.paused = false
	s.expectMoves(s.plan(), "2:b")
}

func TestPlannerPauseBetweenBatches(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Batches: sizes(1), PauseBetweenBatches: &metav1.Duration{Duration: time.Minute}}, "a", "b")
	s.plan()
	s.done("a")
	p := s.plan()
	s.expectMoves(p, "")
	if p.rollout.Reason != ReasonPauseBetweenBatches || p.verdict.requeueAfter != time.Minute {
		t.Fatalf("pause: reason %s requeue %v", p.rollout.Reason, p.verdict.requeueAfter)
	}
	s.now = s.now.Add(40 * time.Second)
	if p = s.plan(); moved(p) != "" || p.verdict.requeueAfter != 20*time.Second {
		t.Fatalf("moves %q requeue %v", moved(p), p.verdict.requeueAfter)
	}
	s.now = s.now.Add(20 * time.Second)
	s.expectMoves(s.plan(), "2:b")
}

func TestPlannerManualPromotionAfterThePause(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Batches: sizes(1), Promotion: nio.PromotionManual,
		PauseBetweenBatches: &metav1.Duration{Duration: time.Minute}}, "a", "b")
	s.plan()
	s.done("a")
	s.in.promote = "early" // during the pause: kept for when it ends
	s.expectPhase(s.plan(), nio.RolloutProgressing, ReasonPauseBetweenBatches)
	s.now = s.now.Add(time.Minute)
	p := s.plan()
	s.expectMoves(p, "2:b")
	if p.rollout.LastHandledPromote != "early" {
		t.Errorf("lastHandledPromote %q", p.rollout.LastHandledPromote)
	}
}

func TestPlannerMachinesJoiningACompletedRolloutGoInBatches(t *testing.T) {
	s := newSim(t, nio.RolloutStrategy{Canary: 1, Batches: sizes(2), Promotion: nio.PromotionManual}, "a", "b", "c", "d", "e")
	joining := s.in.members[2:]
	s.in.members = slices.Clone(s.in.members[:2])
	s.plan()
	s.done("a")
	s.in.promote = "1"
	s.plan()
	s.done("b")
	s.expectPhase(s.plan(), nio.RolloutCompleted, ReasonSucceeded)
	s.in.members = append(s.in.members, joining...)
	p := s.plan()
	s.expectMoves(p, "2:c 2:d") // no canary, no gate: the revision was promoted already
	if p.started || !hasEvent(p, "MachinesJoined") || p.rollout.FinishTime != nil {
		t.Fatalf("join: started %v events %+v", p.started, p.events)
	}
	s.done("c", "d")
	s.expectPhase(s.plan(), nio.RolloutPaused, ReasonAwaitingPromotion) // between batches of a join, the gate holds
}

func TestPlannerKeepsBatchHistoryBounded(t *testing.T) {
	var names []string
	for i := range 150 {
		names = append(names, fmt.Sprintf("m%03d", i))
	}
	s := newSim(t, nio.RolloutStrategy{Canary: 1, Batches: sizes(1)}, names...)
	var p rolloutPlan
	for range 160 {
		p = s.plan()
		s.done(names...)
	}
	s.expectPhase(p, nio.RolloutCompleted, ReasonSucceeded)
	if n := len(p.rollout.Batches); n != maxBatchHistory || p.rollout.Batches[0].Name != batchCanary || p.rollout.Batches[n-1].Name != "149" {
		t.Errorf("%d batches kept, first %s, last %s", n, p.rollout.Batches[0].Name, p.rollout.Batches[n-1].Name)
	}
}

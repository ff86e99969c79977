package controller

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// The rollout planner: from what the fleet's Machines run now and the rollout status
// of the last pass, which Machines move (or go back) in this pass, and where the
// rollout stands. It is pure — no client, no clock — so it is tested with tables
// (nixosfleet_rollout_test.go); the controller reads the world into a rolloutInput
// and carries out the plan.

// Reasons of a fleet's rollout: status.rollout.reason, and the fleet's conditions.
const (
	ReasonPauseBetweenBatches = "PauseBetweenBatches"
	ReasonAwaitingPromotion   = "AwaitingPromotion"
	ReasonPaused              = "Paused"
	ReasonBatchFailed         = "BatchFailed"
	ReasonReverting           = "Reverting"
	ReasonRevertFailed        = "RevertFailed"
	ReasonReverted            = "Reverted"
	ReasonMaxUnavailable      = "MaxUnavailable"
	ReasonMachinesFailed      = "MachinesFailed"
)

const (
	batchCanary = "canary"
	// batchRevert is the FleetBatchAnnotation of a configuration a revert moved back.
	batchRevert = "revert"

	batchProgressing = "Progressing"
	batchSucceeded   = "Succeeded"
	batchFailed      = "Failed"

	// maxBatchHistory bounds status.rollout.batches: the canary and the latest
	// steps are kept (a 1000-Machine fleet in batches of 1 has 1000 steps).
	maxBatchHistory = 100
	// maxNamed is how many Machines a message or event names before "and N more".
	maxNamed = 5
)

// Results of a rollout that ended (the rollouts-finished metric).
const (
	rolloutCompleted  = "completed"
	rolloutReverted   = "reverted"
	rolloutSuperseded = "superseded"
)

// fleetMember is what the planner knows of one Machine of the fleet (selected, not
// excluded); members are in name order, the order Machines move in.
type fleetMember struct {
	Name string
	// Child is false while the Machine has no configuration of the fleet.
	Child bool
	// OnTarget: the configuration's spec is the target revision's for this Machine.
	OnTarget bool
	// Batch is the configuration's FleetBatchAnnotation.
	Batch string
	// Previous is the revision of its FleetPreviousAnnotation ("": none).
	Previous string
	// Updated: the Machine runs the configuration's current spec (applied,
	// confirmed, Ready, nothing in flight).
	Updated bool
	// Failed: the configuration's current spec failed on the Machine.
	Failed bool
	// Message is the configuration's Ready reason and message when it failed, or is
	// not Ready (why it is not done).
	Message string
	// Ready: the configuration is Ready (on any revision).
	Ready bool
	// Unavailable: applying, or not Ready.
	Unavailable bool
}

// rolloutInput is the world as one pass of the fleet controller sees it.
type rolloutInput struct {
	strategy rolloutStrategy
	revision string
	commit   string
	// display names the revision's commit for people (main@sha1:<hex>).
	display string
	members []fleetMember
	// rollout is the status of the last pass (nil: none yet); not modified.
	rollout *nio.RolloutStatus
	// promote is the fleet's PromoteAnnotation ("": none).
	promote string
	// paused is spec.paused.
	paused bool
	now    time.Time
}

// fleetMove moves a Machine's configuration to the target revision, in a batch.
type fleetMove struct {
	machine string
	batch   string
}

// fleetEvent is an event on the fleet.
type fleetEvent struct {
	warning bool
	reason  string
	message string
}

// verdictKind is how the pass ends for the fleet's conditions (outcome package):
// Ready, in progress, stalled (a person must act), or degraded (retried).
type verdictKind int

const (
	verdictReady verdictKind = iota
	verdictWaiting
	verdictStalled
	verdictDegraded
)

type rolloutVerdict struct {
	kind    verdictKind
	reason  string
	message string
	// requeueAfter is when the rollout must look again by itself (0: on events and
	// the poll interval).
	requeueAfter time.Duration
}

// batchDuration is a batch that ended in this pass, for the batch duration metric.
type batchDuration struct {
	result   string
	duration time.Duration
}

// rolloutPlan is what the pass does: the new rollout status, the moves and reverts
// to write, events and metrics.
type rolloutPlan struct {
	rollout *nio.RolloutStatus
	moves   []fleetMove
	// reverts are the Machines whose configuration gets its previous spec back.
	reverts []string
	events  []fleetEvent
	// started: a rollout began; finished: the results of rollouts that ended.
	started  bool
	finished []string
	batches  []batchDuration
	verdict  rolloutVerdict
}

// planRollout plans one pass of a fleet's rollout.
func planRollout(in rolloutInput) rolloutPlan {
	p := &planner{in: in, members: slices.Clone(in.members)}
	prev := in.rollout
	p.newPromote = in.promote != "" && (prev == nil || in.promote != prev.LastHandledPromote)
	switch {
	case prev == nil || prev.Revision != in.revision:
		p.start(prev)
	case prev.Phase == nio.RolloutReverted && p.newPromote:
		p.start(nil)
		p.newPromote = false
		p.event(false, "Promoted", "Promoted (%s=%s): rolling out the reverted revision %s (%s) again, from the canary",
			nio.PromoteAnnotation, in.promote, in.revision, in.display)
	default:
		p.ro = prev.DeepCopy()
	}
	switch p.ro.Phase {
	case nio.RolloutReverted:
		p.stayReverted()
	case nio.RolloutReverting:
		p.reverting()
	default:
		p.progress()
	}
	trimBatches(p.ro)
	p.out.rollout = p.ro
	return p.out
}

type planner struct {
	in rolloutInput
	ro *nio.RolloutStatus
	// members start as the input's and change as moves and reverts are planned.
	members    []fleetMember
	newPromote bool
	out        rolloutPlan
}

func (p *planner) event(warning bool, reason, format string, args ...any) {
	p.out.events = append(p.out.events, fleetEvent{warning: warning, reason: reason, message: fmt.Sprintf(format, args...)})
}

func (p *planner) verdict(kind verdictKind, reason, message string, after time.Duration) {
	p.out.verdict = rolloutVerdict{kind: kind, reason: reason, message: message, requeueAfter: after}
}

// setPhase sets the rollout's phase and reports whether phase or reason changed.
func (p *planner) setPhase(phase nio.RolloutPhase, reason, message string) bool {
	changed := p.ro.Phase != phase || p.ro.Reason != reason
	p.ro.Phase, p.ro.Reason, p.ro.Message = phase, reason, message
	return changed
}

// start begins the rollout of the target revision; prev is the rollout it replaces.
func (p *planner) start(prev *nio.RolloutStatus) {
	in := p.in
	p.ro = &nio.RolloutStatus{
		Revision: in.revision, Commit: in.commit, CommitShort: shortCommit(in.commit),
		Phase: nio.RolloutProgressing, Reason: ReasonProgressing, StartTime: metav1.NewTime(in.now),
		LastHandledPromote: in.promote,
	}
	p.out.started = true
	if prev != nil && prev.Phase != nio.RolloutCompleted {
		p.ro.Supersedes = prev.Revision
		if prev.Phase != nio.RolloutReverted {
			p.out.finished = append(p.out.finished, rolloutSuperseded)
		}
		p.event(false, "RolloutSuperseded", "Revision %s (%s) supersedes revision %s (%s, phase %s): a new rollout starts from the canary",
			in.revision, in.display, prev.Revision, shortCommit(prev.Commit), prev.Phase)
	}
	how := "in one batch"
	if s := in.strategy; s.canary > 0 {
		how = fmt.Sprintf("canary %d first", s.canary)
	} else if len(s.batches) > 0 {
		how = "in batches"
	}
	p.event(false, "RolloutStarted", "Rolling out revision %s (%s) to %d Machine(s), %s", in.revision, in.display, len(p.pending()), how)
}

// progress moves the rollout on: failures first, then the current batch, then the
// next one.
func (p *planner) progress() {
	ro, in := p.ro, p.in
	if ro.Phase == nio.RolloutPaused && ro.Reason == ReasonPaused && !in.paused {
		p.setPhase(nio.RolloutProgressing, ReasonProgressing, "")
		p.event(false, "Resumed", "spec.paused cleared: the rollout of revision %s goes on", in.revision)
	}
	if ro.Phase == nio.RolloutPaused && ro.Reason == ReasonBatchFailed {
		if !p.newPromote || in.paused {
			p.haltedOnFailure()
			return
		}
		p.promoted("the rollout goes on with the next Machines; the failed ones keep the revision and retry")
		if cur := lastBatch(ro); cur != nil && cur.Phase == batchFailed {
			moved, _, _ := p.batchCounts(cur.Name)
			cur.Size = int32(moved) // it takes no more Machines
		}
		p.setPhase(nio.RolloutProgressing, ReasonProgressing, "")
	}
	p.countBatches()
	if failing := p.failing(); len(failing) > 0 {
		p.fail(failing)
		return
	}
	// A batch that finishes lets the next start in the same pass; each turn either
	// returns or starts a batch of at least one Machine, which is not done yet.
	for range len(p.members) + 2 {
		cur := lastBatch(ro)
		if cur != nil && cur.Phase == batchProgressing {
			if !p.fill(cur) {
				return
			}
			cur.Phase, cur.FinishTime = batchSucceeded, timeRef(in.now)
			p.out.batches = append(p.out.batches, batchDuration{batchSucceeded, in.now.Sub(cur.StartTime.Time)})
			p.event(false, "BatchSucceeded", "Batch %s succeeded: %d Machine(s) run revision %s (%s)", cur.Name, cur.Size, in.revision, in.display)
		}
		pending := p.pending()
		if len(pending) == 0 {
			p.complete()
			return
		}
		reopened := ro.Phase == nio.RolloutCompleted
		if in.paused {
			what := fmt.Sprintf("%d Machine(s) wait for revision %s (%s)", len(pending), in.revision, in.display)
			if reopened { // stays Completed: the Machines joining get it when the pause ends
				p.verdict(verdictWaiting, ReasonPaused, "spec.paused: "+what, 0)
				return
			}
			p.hold(what)
			return
		}
		// After a successful step: pauseBetweenBatches, then (Manual) the promote.
		if cur != nil && cur.Phase == batchSucceeded && !reopened {
			if pause := in.strategy.pause; pause > 0 && cur.FinishTime != nil {
				if wait := cur.FinishTime.Add(pause).Sub(in.now); wait > 0 {
					msg := fmt.Sprintf("Batch %s succeeded; the next batch of revision %s may start at %s (pauseBetweenBatches %s)",
						cur.Name, in.revision, cur.FinishTime.Add(pause).UTC().Format(time.RFC3339), pause)
					p.setPhase(nio.RolloutProgressing, ReasonPauseBetweenBatches, msg)
					p.verdict(verdictWaiting, ReasonPauseBetweenBatches, msg, wait)
					return
				}
			}
			if in.strategy.manual {
				if !p.newPromote {
					p.awaitPromotion(cur, len(pending))
					return
				}
				p.promoted("the next batch starts")
			}
		}
		if reopened {
			ro.FinishTime = nil
			p.event(false, "MachinesJoined", "%d Machine(s) joined the fleet: they get revision %s (%s) in batches", len(pending), in.revision, in.display)
		}
		p.startBatch(pending)
	}
}

// startBatch appends the next step: the canary when the rollout has none yet and
// the strategy asks for one, else the next numbered batch.
func (p *planner) startBatch(pending []fleetMember) {
	ro, s := p.ro, p.in.strategy
	name, size := batchCanary, min(s.canary, len(pending))
	if len(ro.Batches) > 0 || s.canary == 0 {
		k := nextBatchNumber(ro)
		name, size = strconv.Itoa(k), s.batchSize(k, len(pending))
	}
	ro.Batches = append(ro.Batches, nio.BatchStatus{Name: name, Size: int32(size), Phase: batchProgressing, StartTime: metav1.NewTime(p.in.now)})
	names := make([]string, 0, size)
	for _, m := range pending[:size] {
		names = append(names, m.Name)
	}
	p.setPhase(nio.RolloutProgressing, ReasonProgressing, "")
	p.event(false, "BatchStarted", "Batch %s started: %s get revision %s (%s)", name, nameList(names, ", "), p.in.revision, p.in.display)
}

// fill moves the batch's next Machines, as far as maxParallel and maxUnavailable
// allow, and reports whether the batch succeeded.
func (p *planner) fill(cur *nio.BatchStatus) bool {
	in, s := p.in, p.in.strategy
	moved, updated, failed := p.batchCounts(cur.Name)
	pending := p.pending()
	// Machines that left the fleet shrink the batch; it never holds fewer than moved.
	cur.Size = max(min(cur.Size, int32(moved+len(pending))), int32(moved))
	reason, blocked := ReasonProgressing, ""
	if want := int(cur.Size) - moved; want > 0 && !in.paused {
		allow := want
		if s.maxParallel > 0 {
			allow = min(allow, s.maxParallel-(moved-updated-failed))
		}
		if s.maxUnavailable > 0 {
			if room := s.maxUnavailable - p.unavailable(); room < allow {
				allow = room
				if room <= 0 {
					reason, blocked = ReasonMaxUnavailable, fmt.Sprintf("; %d Machine(s) of the fleet are unavailable (maxUnavailable %d)", p.unavailable(), s.maxUnavailable)
				}
			}
		}
		for _, m := range pending[:max(min(allow, len(pending)), 0)] {
			p.move(m.Name, cur.Name)
			moved++
		}
	}
	cur.Updated, cur.Failed = int32(updated), int32(failed)
	if moved == int(cur.Size) && updated == moved {
		return true
	}
	var stuck []fleetMember
	for _, m := range p.members {
		if m.OnTarget && m.Batch == cur.Name && !m.Updated && !m.Failed && m.Message != "" {
			stuck = append(stuck, m)
		}
	}
	if len(stuck) > 0 {
		blocked += "; not done: " + describe(stuck)
	}
	msg := fmt.Sprintf("Batch %s of revision %s (%s): %d of %d Machine(s) updated, %d applying%s",
		cur.Name, in.revision, in.display, updated, cur.Size, moved-updated-failed, blocked)
	if in.paused {
		p.hold(msg)
		return false
	}
	p.setPhase(nio.RolloutProgressing, reason, msg)
	p.verdict(verdictWaiting, reason, msg, 0)
	return false
}

// hold is spec.paused: nobody new moves.
func (p *planner) hold(what string) {
	msg := "spec.paused: " + what
	if p.setPhase(nio.RolloutPaused, ReasonPaused, msg) {
		p.event(false, "Paused", "Rollout of revision %s paused by spec.paused", p.in.revision)
	}
	p.verdict(verdictWaiting, ReasonPaused, msg, 0)
}

func (p *planner) awaitPromotion(cur *nio.BatchStatus, pending int) {
	msg := fmt.Sprintf("Batch %s succeeded; %d Machine(s) wait for revision %s (%s): set the annotation %s to a new value to start the next batch",
		cur.Name, pending, p.in.revision, p.in.display, nio.PromoteAnnotation)
	if p.setPhase(nio.RolloutPaused, ReasonAwaitingPromotion, msg) {
		p.event(false, ReasonAwaitingPromotion, "%s", msg)
	}
	p.verdict(verdictWaiting, ReasonAwaitingPromotion, msg, 0)
}

// promoted records the promote annotation's value as acted on.
func (p *planner) promoted(what string) {
	p.ro.LastHandledPromote = p.in.promote
	p.newPromote = false
	p.event(false, "Promoted", "Promoted (%s=%s): %s", nio.PromoteAnnotation, p.in.promote, what)
}

// complete: no Machine waits for the revision.
func (p *planner) complete() {
	ro, in := p.ro, p.in
	if ro.Phase != nio.RolloutCompleted {
		ro.FinishTime = timeRef(in.now)
		p.out.finished = append(p.out.finished, rolloutCompleted)
		p.event(false, "RolloutCompleted", "Revision %s (%s) rolled out to %d Machine(s)", in.revision, in.display, len(p.members))
	}
	var failed, applying []string
	for _, m := range p.members {
		switch {
		case m.Failed:
			failed = append(failed, m.Name+": "+m.Message)
		case !m.Updated:
			applying = append(applying, m.Name)
		}
	}
	msg := fmt.Sprintf("Revision %s (%s) rolled out to %d Machine(s)", in.revision, in.display, len(p.members))
	switch {
	case len(failed) > 0:
		msg = fmt.Sprintf("Revision %s (%s) rolled out; %d of %d Machine(s) failed it: %s", in.revision, in.display, len(failed), len(p.members), nameList(failed, "; "))
		p.setPhase(nio.RolloutCompleted, ReasonMachinesFailed, msg)
		p.verdict(verdictDegraded, ReasonMachinesFailed, msg, 0)
	case len(applying) > 0:
		p.setPhase(nio.RolloutCompleted, ReasonSucceeded, msg)
		p.verdict(verdictWaiting, ReasonProgressing, fmt.Sprintf("%s; %s still applying", msg, nameList(applying, ", ")), 0)
	default:
		p.setPhase(nio.RolloutCompleted, ReasonSucceeded, msg)
		p.verdict(verdictReady, ReasonSucceeded, msg, 0)
	}
}

// move plans a Machine's move to the target revision in batch.
func (p *planner) move(machine, batch string) {
	p.out.moves = append(p.out.moves, fleetMove{machine: machine, batch: batch})
	for i := range p.members {
		if m := &p.members[i]; m.Name == machine {
			m.Child, m.OnTarget, m.Batch, m.Updated, m.Failed, m.Unavailable = true, true, batch, false, false, true
		}
	}
}

// pending are the Machines not on the target revision, in the order they move.
func (p *planner) pending() []fleetMember {
	var out []fleetMember
	for _, m := range p.members {
		if !m.OnTarget {
			out = append(out, m)
		}
	}
	return out
}

// unavailable counts the Machines with a configuration that is applying or not Ready.
func (p *planner) unavailable() int {
	n := 0
	for _, m := range p.members {
		if m.Child && m.Unavailable {
			n++
		}
	}
	return n
}

// batchCounts counts a batch's Machines on the target revision: moved, updated, failed.
func (p *planner) batchCounts(name string) (moved, updated, failed int) {
	for _, m := range p.members {
		if m.OnTarget && m.Batch == name {
			moved++
			if m.Updated {
				updated++
			}
			if m.Failed {
				failed++
			}
		}
	}
	return moved, updated, failed
}

// countBatches refreshes every step's updated and failed counts.
func (p *planner) countBatches() {
	for i := range p.ro.Batches {
		b := &p.ro.Batches[i]
		_, updated, failed := p.batchCounts(b.Name)
		b.Updated, b.Failed = int32(updated), int32(failed)
	}
}

func lastBatch(ro *nio.RolloutStatus) *nio.BatchStatus {
	if len(ro.Batches) == 0 {
		return nil
	}
	return &ro.Batches[len(ro.Batches)-1]
}

func findBatch(ro *nio.RolloutStatus, name string) *nio.BatchStatus {
	for i := range ro.Batches {
		if ro.Batches[i].Name == name {
			return &ro.Batches[i]
		}
	}
	return nil
}

// nextBatchNumber is one more than the highest numbered step so far.
func nextBatchNumber(ro *nio.RolloutStatus) int {
	n := 0
	for _, b := range ro.Batches {
		if k, err := strconv.Atoi(b.Name); err == nil && k > n {
			n = k
		}
	}
	return n + 1
}

// trimBatches keeps status.rollout.batches bounded: the canary, and the latest steps.
func trimBatches(ro *nio.RolloutStatus) {
	if len(ro.Batches) <= maxBatchHistory {
		return
	}
	keep := ro.Batches[len(ro.Batches)-maxBatchHistory+1:]
	first := ro.Batches[0]
	if first.Name != batchCanary {
		keep = ro.Batches[len(ro.Batches)-maxBatchHistory:]
		ro.Batches = slices.Clone(keep)
		return
	}
	ro.Batches = append([]nio.BatchStatus{first}, keep...)
}

// describe names failed Machines with their configurations' messages.
func describe(members []fleetMember) string {
	parts := make([]string, 0, len(members))
	for _, m := range members {
		parts = append(parts, m.Name+": "+m.Message)
	}
	return nameList(parts, "; ")
}

// nameList joins at most maxNamed items with sep, then says how many more there are.
func nameList(items []string, sep string) string {
	if len(items) <= maxNamed {
		return strings.Join(items, sep)
	}
	return fmt.Sprintf("%s%sand %d more", strings.Join(items[:maxNamed], sep), sep, len(items)-maxNamed)
}

func timeRef(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t)
	return &mt
}

package controller

import (
	"fmt"
	"strings"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// The rollout planner's failure side: a Machine that fails the revision stops the
// rollout, which pauses (onFailure Pause) or gives the Machines it moved back what
// they ran before (onFailure Revert).

// failing lists the Machines this rollout moved (their batch is one of its steps,
// not one already failed and promoted past) that failed the revision.
func (p *planner) failing() []fleetMember {
	var out []fleetMember
	for _, m := range p.members {
		if !m.OnTarget || !m.Failed {
			continue
		}
		if b := findBatch(p.ro, m.Batch); b != nil && b.Phase != batchFailed {
			out = append(out, m)
		}
	}
	return out
}

// fail stops the rollout: the failed Machines' batches are Failed, then a pause
// (onFailure Pause) or a revert.
func (p *planner) fail(failing []fleetMember) {
	in := p.in
	var batches []string
	for _, m := range failing {
		b := findBatch(p.ro, m.Batch)
		if b.Phase != batchFailed {
			b.Phase = batchFailed
			if b.FinishTime == nil {
				b.FinishTime = timeRef(in.now)
				p.out.batches = append(p.out.batches, batchDuration{batchFailed, in.now.Sub(b.StartTime.Time)})
			}
			batches = append(batches, b.Name)
		}
	}
	p.countBatches()
	cause := fmt.Sprintf("Batch %s failed revision %s (%s): %s", strings.Join(batches, ", "), in.revision, in.display, describe(failing))
	p.event(true, ReasonBatchFailed, "%s", cause)
	if in.strategy.revert {
		p.startRevert(cause)
		return
	}
	msg := cause + fmt.Sprintf("; no further Machine moves: set the annotation %s to a new value to go on with the next Machines, or push a fix", nio.PromoteAnnotation)
	p.setPhase(nio.RolloutPaused, ReasonBatchFailed, msg)
	p.verdict(verdictStalled, ReasonBatchFailed, msg, 0)
}

// haltedOnFailure keeps a rollout paused on a failure, naming the Machines that fail
// now.
func (p *planner) haltedOnFailure() {
	p.countBatches()
	var failing []fleetMember
	for _, m := range p.members {
		if b := findBatch(p.ro, m.Batch); m.OnTarget && m.Failed && b != nil && b.Phase == batchFailed {
			failing = append(failing, m)
		}
	}
	if len(failing) > 0 {
		p.ro.Message = fmt.Sprintf("Revision %s (%s) failed: %s; no further Machine moves: set the annotation %s to a new value to go on with the next Machines, or push a fix",
			p.in.revision, p.in.display, describe(failing), nio.PromoteAnnotation)
	}
	p.verdict(verdictStalled, ReasonBatchFailed, p.ro.Message, 0)
}

// startRevert moves every Machine on the revision that ran something before back to
// it; the others (a fleet's first rollout: nothing ran before) stay.
func (p *planner) startRevert(cause string) {
	n, stay := p.revertMoves()
	msg := fmt.Sprintf("%s; reverting %d Machine(s) to the revision they ran before", cause, n)
	if stay > 0 {
		msg += fmt.Sprintf("; %d had none (nothing NIO ran before) and stay on %s", stay, p.in.revision)
	}
	p.setPhase(nio.RolloutReverting, ReasonReverting, msg)
	p.event(true, "RevertStarted", "%s", msg)
	p.reverting()
}

// revertMoves plans the revert of every Machine on the target revision that has a
// previous revision, and counts those that stay.
func (p *planner) revertMoves() (reverted, stay int) {
	for i := range p.members {
		m := &p.members[i]
		if !m.OnTarget {
			continue
		}
		if m.Previous == "" || m.Previous == p.in.revision {
			stay++
			continue
		}
		p.out.reverts = append(p.out.reverts, m.Name)
		m.OnTarget, m.Batch, m.Updated, m.Failed, m.Unavailable = false, batchRevert, false, false, true
		reverted++
	}
	return reverted, stay
}

// reverting waits until every reverted Machine runs its previous revision again.
func (p *planner) reverting() {
	ro := p.ro
	p.revertMoves() // a revert write that failed, or a Machine moved since
	var waiting, failed []fleetMember
	for _, m := range p.members {
		switch {
		case m.OnTarget || m.Batch != batchRevert:
		case m.Failed:
			failed = append(failed, m)
		case !m.Updated:
			waiting = append(waiting, m)
		}
	}
	switch {
	case len(failed) > 0:
		msg := fmt.Sprintf("Reverting revision %s: the previous revision fails too on %s", p.in.revision, describe(failed))
		if ro.Reason != ReasonRevertFailed {
			p.event(true, ReasonRevertFailed, "%s", msg)
		}
		ro.Reason = ReasonRevertFailed
		p.verdict(verdictStalled, ReasonRevertFailed, msg, 0)
	case len(waiting) > 0:
		ro.Reason = ReasonReverting
		p.verdict(verdictWaiting, ReasonReverting, fmt.Sprintf("%s (%d still applying)", ro.Message, len(waiting)), 0)
	default:
		ro.Phase, ro.Reason = nio.RolloutReverted, ReasonReverted
		ro.FinishTime = timeRef(p.in.now)
		ro.Message = fmt.Sprintf("Reverted revision %s (%s): %s. Set the annotation %s to a new value to roll it out again, or push a new commit",
			p.in.revision, p.in.display, ro.Message, nio.PromoteAnnotation)
		p.out.finished = append(p.out.finished, rolloutReverted)
		p.event(false, "RevertCompleted", "Revision %s reverted: the Machines it reached run their previous revision again", p.in.revision)
		p.stayReverted()
	}
}

// stayReverted: a reverted revision does not move until a new revision or a promote.
func (p *planner) stayReverted() {
	msg := p.ro.Message
	if n := len(p.pending()); n > 0 {
		msg += fmt.Sprintf(" (%d Machine(s) wait without it)", n)
	}
	p.verdict(verdictStalled, ReasonReverted, msg, 0)
}

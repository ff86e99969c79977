package server

import (
	"context"
	"fmt"
	"os"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Recovery after the agent was killed (SIGKILL, OOM, a crash) and restarted by
// systemd. The journal (journal.go) names the last operation and the step it had
// begun; the rule per step is the one that leaves the host either on the previous
// system or on the new one confirmed — never an unconfirmed system as if applied:
//
//	building          FAILED "agent restarted during build; nothing was activated".
//	                  Not re-run: the operator's stream broke, and a build that
//	                  killed the agent (OOM) would kill it again in a loop; the
//	                  operator retries with a new operation, with its backoff.
//	setting-profile   the profile goes back to the previous generation if it
//	                  moved; FAILED, nothing was activated.
//	activating        wait for the activation unit to end (it outlives the agent);
//	                  failed (or no status) → roll back, FAILED; succeeded → as
//	                  after any activation: the health checks (with the full
//	                  timeout), then a fresh confirm window of the full
//	                  confirm_timeout where one was asked for, else SUCCEEDED.
//	health-checking   the checks run again, all of them, until the journaled
//	                  health_deadline (at least a few seconds): a restart never
//	                  confirms a system it did not check. Failed → roll back,
//	                  ROLLED_BACK; passed → as after the checks.
//	awaiting-confirm  a fresh confirm window; Confirm → SUCCEEDED, none → roll
//	                  back, ROLLED_BACK.
//	rolling-back      wait for the rollback's activation, run the rollback again
//	                  (it is idempotent), end with the outcome the journal names.
//	finished          nothing to do; the result stays attachable.
//
// The recovered operation keeps its id, so the operator's re-sent header attaches
// to it, and Confirm reaches it. Its events are a new incarnation: sequences start
// at incarnation<<32 + 1, above any the operator saw before the restart, so an
// attach with the old resume_after_sequence receives the whole new incarnation
// (operation.replayFrom).

// recoverJournal registers the journal's operation and, unless it had finished,
// resumes it in the background. An unreadable journal is set aside and logged: with
// no trustworthy record of what ran, touching the host could only make it worse.
func (s *Server) recoverJournal() {
	j, h, err := s.readJournal()
	if err != nil {
		aside := s.journalPath() + ".unreadable"
		renameErr := os.Rename(s.journalPath(), aside)
		s.log.Error("ignoring unreadable operation journal; if an operation was running when the agent stopped, check the host's generation and running system",
			"path", s.journalPath(), "moved_to", aside, "err", err, "rename_err", renameErr)
		return
	}
	if j == nil {
		return
	}
	j.Incarnation++
	op := newOperation(h, j.StartedTime)
	op.base = uint64(j.Incarnation) << 32
	op.jr = j
	op.deadline = time.Time{}
	if j.Deadline != nil {
		op.deadline = *j.Deadline // the original one: a restart does not extend it
	}
	s.ops[op.id] = op
	s.order = append(s.order, op.id)
	if err := s.writeJournal(j); err != nil {
		s.log.Warn("cannot journal the recovery", "operation", op.id, "err", err)
	}

	if j.Step == stepFinished {
		r := &agentv1.ApplyResult{}
		_ = protojson.Unmarshal(j.Result, r) // checked by readJournal
		if j.FinishedTime != nil {
			op.summary.FinishedTime = timestamppb.New(*j.FinishedTime)
		}
		op.agentLine("the agent restarted after this operation ended; this is its recorded result")
		op.finish(r, s.writeRecord) // the record may predate the result, if the agent died in between
		s.log.Info("journal: the last operation had finished before the restart", "operation", op.id, "outcome", r.GetOutcome().String())
		return
	}
	s.running = op
	s.log.Warn("recovering operation interrupted by an agent restart",
		"operation", op.id, "step", j.Step, "unit", j.Unit, "incarnation", j.Incarnation)
	go s.resume(op)
}

// resume finishes a recovered operation by the rule of its journal's step.
func (s *Server) resume(op *operation) {
	ctx := context.Background()
	defer s.recoverPanic(op)
	j := op.jr
	action := op.header.GetAction()
	op.agentLine(fmt.Sprintf("the agent restarted during this operation (step %s); recovering it", j.Step))
	switch j.Step {
	case stepBuilding:
		s.fail(op, "agent restarted during build; nothing was activated")
	case stepSettingProfile:
		s.undoProfile(ctx, op)
		s.finishWith(op, agentv1.Outcome_OUTCOME_FAILED, "agent restarted while setting the system profile; nothing was activated", false)
	case stepActivating:
		op.phase(agentv1.Phase_PHASE_ACTIVATING, "waiting for "+j.Unit+", started before the agent restarted")
		s.log.Info("recovery: waiting for the activation to end", "operation", op.id, "unit", j.Unit)
		if err := s.cfg.Executor.WaitActivation(ctx, s.activation(op, j.Unit), op.logLine); err != nil {
			s.log.Warn("recovery: the activation failed", "operation", op.id, "unit", j.Unit, "err", err)
			s.rollBackAndFinish(ctx, op, agentv1.Outcome_OUTCOME_FAILED, fmt.Sprintf("activation failed: %v", err), action != agentv1.Action_ACTION_DRY_ACTIVATE)
			return
		}
		s.log.Info("recovery: the activation succeeded", "operation", op.id, "unit", j.Unit)
		op.agentLine("activation " + j.Unit + " succeeded")
		if !s.afterActivation(ctx, op) {
			return
		}
		s.settle(ctx, op)
	case stepHealthChecking:
		s.log.Info("recovery: running the health checks again", "operation", op.id, "deadline", j.HealthDeadline.Format(time.RFC3339))
		if !s.checkHealth(ctx, op) {
			return
		}
		s.settle(ctx, op)
	case stepAwaitingConfirm:
		s.settle(ctx, op)
	case stepRollingBack:
		if j.Unit != "" {
			// Never two activations at once: the rollback's (or, before it began,
			// the new system's, long ended) must be over first.
			s.log.Info("recovery: waiting for the activation to end", "operation", op.id, "unit", j.Unit)
			if err := s.cfg.Executor.WaitActivation(ctx, s.activation(op, j.Unit), op.logLine); err != nil {
				op.agentLine("activation " + j.Unit + ": " + err.Error())
			}
		}
		rb := j.Rollback
		s.rollBack(ctx, op)
		s.finishWith(op, agentv1.Outcome(agentv1.Outcome_value[rb.Outcome]), rb.Message+" (the agent restarted during the rollback and ran it again)", rb.RolledBack)
	}
}

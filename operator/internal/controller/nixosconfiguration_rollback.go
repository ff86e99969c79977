package controller

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/transport"
)

// Rollback on request (nio.homystack.com/rollback, `nio rollback`): an earlier
// generation of the Machine's system profile is activated through nio-agent. The
// rules, from the user's side of an emergency:
//
//   - Only while spec.suspend is true. A rollback of a configuration that follows
//     its ref would be undone by the next pass; so the request waits, stalled
//     (RollbackNeedsSuspend), and the pass applies nothing meanwhile.
//   - Once per annotation value, whatever the verdict (lastHandledRollbackAt): a
//     refused or failed rollback is never retried later on its own — asked again,
//     it runs again. Only a busy Machine or a lost connection keeps it pending.
//   - Never over SSH: without an agent that lists activate-generation, nothing is
//     done (RollbackNeedsAgent).
//   - The status stays truthful: appliedCommit becomes the commit that built the
//     generation when the history knows it, else empty (unknown); appliedSystem
//     the generation's system. Ready=False, Stalled, reason RolledBackByUser, until
//     `nio resume`, whose pass re-applies the ref's commit.
const (
	// ReasonRolledBackByUser: the Machine runs an earlier generation on request; the
	// configuration stays suspended until resumed.
	ReasonRolledBackByUser = "RolledBackByUser"
	// ReasonRollbackFailed: the requested rollback failed or was not confirmed; the
	// host runs what it ran before.
	ReasonRollbackFailed = "RollbackFailed"
	// ReasonRollbackNeedsAgent: no agent that can activate a generation answered;
	// nothing was changed.
	ReasonRollbackNeedsAgent = "RollbackNeedsAgent"
	// ReasonRollbackNeedsSuspend: a rollback is asked for while the configuration is
	// not suspended; it waits for spec.suspend.
	ReasonRollbackNeedsSuspend = "RollbackNeedsSuspend"
	// ReasonInvalidRollback: the annotation's value is not <generation>@<request>
	// or previous@<request>.
	ReasonInvalidRollback = "InvalidRollback"

	// actionRollback labels rollbacks in status.history and currentOperation.
	actionRollback = "rollback"
)

// rollbackPending reports a rollback annotation not yet acted on.
func rollbackPending(obj *nio.NixosConfiguration) bool {
	v, ok := obj.Annotations[nio.RollbackAnnotation]
	return ok && v != obj.Status.LastHandledRollbackAt
}

// ParseRollback reads a rollback annotation's value: the generation (0 for
// "previous") before the '@' and a non-empty request token after it.
func ParseRollback(value string) (int64, error) {
	what, token, ok := strings.Cut(value, "@")
	if !ok || token == "" {
		return 0, fmt.Errorf("%s=%q: want <generation>@<request> or previous@<request>, e.g. previous@2025-01-02T15:04:05Z", nio.RollbackAnnotation, value)
	}
	if what == "previous" {
		return 0, nil
	}
	n, err := strconv.ParseInt(what, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s=%q: the generation must be a positive number or \"previous\"", nio.RollbackAnnotation, value)
	}
	return n, nil
}

// reconcileRollback handles a pending rollback request (see the rules above).
func (r *NixosConfigurationReconciler) reconcileRollback(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration) (outcome.Success, error) {
	value := obj.Annotations[nio.RollbackAnnotation]
	if !obj.Spec.Suspend {
		return outcome.Success{}, outcome.Stalled(ReasonRollbackNeedsSuspend,
			"A rollback is requested (%s=%s) but the configuration is not suspended: the next pass would re-apply its commit. Set spec.suspend: true (nio rollback does), or remove the annotation",
			nio.RollbackAnnotation, value)
	}
	handled := func() { obj.Status.LastHandledRollbackAt = value }
	gen, err := ParseRollback(value)
	if err != nil {
		handled()
		return outcome.Success{}, outcome.Stalled(ReasonInvalidRollback, "%v", err)
	}
	m, err := r.machine(ctx, obj)
	if err != nil {
		return outcome.Success{}, err
	}
	if obj.Status.TargetMachine != m.Name {
		handled()
		return outcome.Success{}, outcome.Stalled(ReasonRollbackFailed, "NixosConfiguration %s was never applied to Machine %s: there is nothing of it to roll back", obj.Name, m.Name)
	}
	unlock, holder, ok := r.Locks.TryLock(types.NamespacedName{Namespace: m.Namespace, Name: m.Name}, "NixosConfiguration "+obj.Name)
	if !ok {
		return outcome.Success{}, outcome.Wait(5*time.Second, ReasonProgressing, "Waiting for Machine %s: %s is running", m.Name, holder)
	}
	defer unlock()

	cur := obj.Status.CurrentOperation
	if cur == nil || cur.Action != actionRollback {
		cur = &nio.OperationRef{ID: newOperationID(obj, actionRollback), Action: actionRollback, StartTime: metav1.NewTime(r.now())}
	}
	obj.Status.CurrentOperation = cur
	r.summary(obj).Progressing(ReasonApplying, fmt.Sprintf("Rolling Machine %s back to %s", m.Name, generationWord(gen)))
	if err := sw.guard(ctx, obj); err != nil {
		return outcome.Success{}, err
	}
	res, err := r.runRollback(ctx, obj, m, cur, gen)
	needsAgent := errors.Is(err, transport.ErrRollbackNeedsAgent) || errors.Is(err, transport.ErrHealthChecksNeedAgent)
	ended := errors.Is(err, transport.ErrTimeout) || errors.Is(err, transport.ErrInvalidHealthChecks)
	switch {
	case err == nil, needsAgent, ended, errors.Is(err, transport.ErrBusy):
		obj.Status.CurrentOperation = nil
	case errors.Is(err, outcome.ErrConfig):
		return outcome.Success{}, err // e.g. the SSH key Secret the Machine names is gone
	default:
		// The outcome is unknown (a stream lost for good): the operation is kept,
		// and the next pass attaches to it.
		return outcome.Success{}, outcome.Failed(ReasonRollbackFailed, err)
	}
	switch {
	case errors.Is(err, transport.ErrBusy):
		return outcome.Success{}, outcome.Wait(10*time.Second, ReasonProgressing, "Machine %s is busy with another operation; the rollback waits", m.Name)
	case needsAgent:
		handled()
		return outcome.Success{}, outcome.Stalled(ReasonRollbackNeedsAgent, "Rollback of Machine %s not done: %v", m.Name, err)
	case ended:
		res = transport.ApplyResult{Transport: nio.TransportAgent, Outcome: transport.OutcomeFailed, Message: err.Error()}
	}
	handled()
	return r.recordRollback(ctx, obj, m, cur, gen, res)
}

// runRollback has the host activate generation gen (0: the previous one), with the
// configuration's confirm window and health checks, as a switch has.
func (r *NixosConfigurationReconciler) runRollback(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine, cur *nio.OperationRef, gen int64) (transport.ApplyResult, error) {
	h, err := r.Hosts.Open(ctx, m)
	if err != nil {
		return transport.ApplyResult{}, err
	}
	defer h.Close()
	logger := log.FromContext(ctx).WithValues("operation", cur.ID, "generation", gen)
	req := transport.GenerationRequest{
		OperationID: cur.ID, Generation: gen, HealthChecks: healthChecksOf(obj, string(nio.ActionSwitch)),
		Timeout: operationTimeout(obj), WaitMargin: r.OperationWaitMargin,
		OnAwaitingConfirm: func(ctx context.Context, id string) error {
			logger.Info("confirming the rollback over a new connection")
			return h.Confirm(ctx, id)
		},
	}
	if rb := obj.Spec.Rollback; rb.Enabled == nil || *rb.Enabled {
		req.ConfirmTimeout = rb.ConfirmTimeout.Duration
		if req.ConfirmTimeout <= 0 {
			req.ConfirmTimeout = time.Minute
		}
	}
	opLog := r.opLog(obj, cur)
	req.OnEvent = func(e transport.Event) {
		switch e.Kind {
		case transport.EventLog:
			opLog.Line(e.Line)
		case transport.EventPhase:
			opLog.Phase(string(e.Phase), e.Detail)
		}
	}
	logger.Info("rolling back")
	res, err := h.ActivateGeneration(ctx, req)
	endOpLog(opLog, res, err, nil)
	return res, err
}

// recordRollback writes the rollback's outcome: a history entry, the event, and —
// when the host now runs the generation — the applied fields, truthfully.
func (r *NixosConfigurationReconciler) recordRollback(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine, cur *nio.OperationRef, gen int64, res transport.ApplyResult) (outcome.Success, error) {
	now := r.now()
	st := &obj.Status
	entry := nio.HistoryEntry{
		Action: actionRollback, Transport: res.Transport, StartTime: cur.StartTime,
		Duration: &metav1.Duration{Duration: now.Sub(cur.StartTime.Time).Round(time.Millisecond)}, Generation: res.Generation,
		Message: truncate(res.Message, 512),
	}
	if res.Outcome != transport.OutcomeSucceeded {
		entry.Result = nio.ResultFailed
		if res.Outcome == transport.OutcomeRolledBack {
			entry.Result = nio.ResultRolledBack
		}
		entry.Commit = st.AppliedCommit // still running
		pushHistory(st, entry)
		msg := fmt.Sprintf("Rollback of Machine %s to %s failed (%s); it runs generation %d as before: %s", m.Name, generationWord(gen), entry.Result, res.Generation, res.Message)
		setCondition(&st.Conditions, obj.Generation, nio.ConditionApplied, metav1.ConditionFalse, ReasonRollbackFailed, msg)
		log.FromContext(ctx).Info("rollback failed", "result", entry.Result, "message", res.Message)
		return outcome.Success{}, outcome.Stalled(ReasonRollbackFailed, "%s", msg)
	}
	commit := commitOfGeneration(st.History, res.Generation)
	entry.Commit, entry.Result = commit, nio.ResultSucceeded
	pushHistory(st, entry)
	st.AppliedCommit, st.AppliedCommitShort = commit, shortCommit(commit)
	st.AppliedSystem, st.AppliedSourceDigest = res.StorePath, ""
	st.LastAppliedTime = &metav1.Time{Time: now}
	built := "a generation no recorded operation built"
	if commit != "" {
		built = "revision " + revision(obj.Spec.Ref, commit)
	}
	msg := fmt.Sprintf("Machine %s was rolled back on request to generation %d (%s); the configuration stays suspended: nio resume %s re-applies its ref",
		m.Name, res.Generation, built, obj.Name)
	setCondition(&st.Conditions, obj.Generation, nio.ConditionApplied, metav1.ConditionFalse, ReasonRolledBackByUser, msg)
	r.event(obj, corev1.EventTypeNormal, "RolledBack", "Rollback", msg)
	log.FromContext(ctx).Info("rolled back", "generation", res.Generation, "commit", commit)
	return outcome.Success{}, &outcome.Stalling{Reason: ReasonRolledBackByUser, Err: errors.New(msg)}
}

// commitOfGeneration is the commit whose successful operation left generation gen
// active, "" when the history does not say.
func commitOfGeneration(history []nio.HistoryEntry, gen int64) string {
	for _, h := range history {
		if h.Result == nio.ResultSucceeded && h.Generation == gen && h.Action != "remove" && h.Action != "install" {
			return h.Commit
		}
	}
	return ""
}

func generationWord(gen int64) string {
	if gen == 0 {
		return "the previous generation"
	}
	return fmt.Sprintf("generation %d", gen)
}

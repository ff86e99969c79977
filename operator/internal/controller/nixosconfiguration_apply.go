package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/render"
	"github.com/homystack/nio/operator/internal/transport"
)

const (
	historyLimit = 10
	// maxRetryBackoff is the least the retry backoff of a failing input may grow to.
	maxRetryBackoff = 10 * time.Minute
	// defaultTimeout applies when spec.timeout is empty (objects created before the
	// field existed; the API server defaults it).
	defaultTimeout = time.Hour
	// logTailLines is how many output lines a failure event carries.
	logTailLines = 12
	// eventNoteLimit is the API server's limit on an event's note.
	eventNoteLimit = 1024
)

// decide says why the configuration must be applied now ("" when it needn't), or how
// long to wait before retrying inputs whose last apply failed.
func (r *NixosConfigurationReconciler) decide(obj *nio.NixosConfiguration, m *nio.Machine, src *resolvedSource, force bool) (time.Duration, string) {
	st := obj.Status
	var why string
	switch {
	case force:
		why = "requested with " + nio.RequestedAtAnnotation
	case st.AppliedCommit == "":
		why = "never applied"
	case st.TargetMachine != m.Name:
		why = "Machine changed"
	case src.commit != st.AppliedCommit:
		why = "new commit"
	case src.archive.Digest != st.AppliedSourceDigest:
		why = "source changed (additional files)"
	case src.secretsDigest != st.AppliedSecretsDigest:
		why = "secrets changed"
	case obj.Generation != st.AppliedSpecGeneration:
		why = "spec changed"
	case drifted(obj, m):
		why = "the Machine runs another system"
	default:
		return 0, ""
	}
	if force || len(st.History) == 0 {
		return 0, why
	}
	// Unchanged inputs whose last apply failed are retried with backoff, not at once:
	// a broken commit must not rebuild in a loop. A spec change retries at once.
	failures := 0
	for _, h := range st.History {
		if h.SourceDigest != src.archive.Digest || h.SecretsDigest != src.secretsDigest || h.Result == nio.ResultSucceeded {
			break
		}
		failures++
	}
	ready := readyCondition(st.Conditions)
	if failures == 0 || ready == nil || ready.ObservedGeneration != obj.Generation {
		return 0, why
	}
	// The backoff doubles up to the poll interval, and to at least maxRetryBackoff:
	// a short interval must not rebuild a broken commit every minute.
	wait := backoff(failures, r.retryBase(), max(r.interval(obj), maxRetryBackoff))
	last := st.History[0]
	end := last.StartTime.Time
	if last.Duration != nil {
		end = end.Add(last.Duration.Duration)
	}
	if wait := end.Add(wait).Sub(r.now()); wait > 0 {
		return wait, ""
	}
	return 0, why
}

// backoff is the wait after failures consecutive failures: base, doubled per
// further failure, never more than limit.
func backoff(failures int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

func readyCondition(conds []metav1.Condition) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == nio.ConditionReady {
			return &conds[i]
		}
	}
	return nil
}

// drifted reports a Machine whose agent, seen after the last apply, runs another
// system than the one applied (someone switched by hand, or a rollback). Only for
// switch: boot and test don't leave the applied system running by design.
func drifted(obj *nio.NixosConfiguration, m *nio.Machine) bool {
	st := obj.Status
	if obj.Spec.Action != "" && obj.Spec.Action != nio.ActionSwitch || st.AppliedSystem == "" || st.LastAppliedTime == nil {
		return false
	}
	sys, agent := m.Status.System, m.Status.Agent
	if sys == nil || sys.CurrentSystem == "" || agent == nil || agent.LastSeenTime == nil {
		return false
	}
	return agent.LastSeenTime.After(st.LastAppliedTime.Time) && sys.CurrentSystem != st.AppliedSystem
}

// parseFlake splits `<dir>#<attr>`.
func parseFlake(flake string) (transport.Target, error) {
	dir, attr, ok := strings.Cut(flake, "#")
	if !ok || dir == "" || attr == "" {
		return transport.Target{}, fmt.Errorf("flake %q is not <dir>#<attr>", flake)
	}
	return transport.Target{FlakeDir: dir, FlakeAttr: attr}, nil
}

func newOperationID(obj *nio.NixosConfiguration, digest string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	d := strings.TrimPrefix(digest, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	uid := string(obj.UID)
	if len(uid) > 8 {
		uid = uid[:8]
	}
	return fmt.Sprintf("%s-%s-%s", uid, d, hex.EncodeToString(b[:]))
}

// operation describes one apply through a Host.
type operation struct {
	// label names the operation in status and history (switch, boot, test, remove).
	label string
	// action is what the host does with the built system.
	action  string
	target  transport.Target
	confirm time.Duration
	// timeout bounds the operation on the host (spec.timeout).
	timeout time.Duration
	// health are the checks the host runs after activation (nil: none).
	health *transport.HealthChecks
}

// operationTimeout is spec.timeout, or its default.
func operationTimeout(obj *nio.NixosConfiguration) time.Duration {
	if t := obj.Spec.Timeout; t != nil && t.Duration > 0 {
		return t.Duration
	}
	return defaultTimeout
}

// waitBackstop is how much longer than the transport's own bound the controller
// waits for Host.Apply to return: the transport gives up first with a precise error;
// this only frees the worker and the Machine's lock from a Host that does not.
func waitBackstop(bound time.Duration) time.Duration {
	return bound + min(bound/10, time.Minute)
}

// apply runs the configuration's action on the Machine and records the outcome.
func (r *NixosConfigurationReconciler) apply(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration, m *nio.Machine, src *resolvedSource) (outcome.Success, error) {
	target, err := parseFlake(obj.Spec.Flake)
	if err != nil {
		return outcome.Success{}, outcome.Stalled(ReasonInvalidConfig, "%v", err)
	}
	action := string(obj.Spec.Action)
	if action == "" {
		action = string(nio.ActionSwitch)
	}
	op := operation{label: action, action: action, target: target, timeout: operationTimeout(obj), health: healthChecksOf(obj, action)}
	if rb := obj.Spec.Rollback; (rb.Enabled == nil || *rb.Enabled) && (action == string(nio.ActionSwitch) || action == string(nio.ActionTest)) {
		op.confirm = rb.ConfirmTimeout.Duration
		if op.confirm <= 0 {
			op.confirm = time.Minute
		}
	}
	unlock, holder, ok := r.Locks.TryLock(types.NamespacedName{Namespace: m.Namespace, Name: m.Name}, "NixosConfiguration "+obj.Name)
	if !ok {
		return outcome.Success{}, outcome.Wait(5*time.Second, ReasonProgressing, "Waiting for Machine %s: %s is running", m.Name, holder)
	}
	defer unlock()

	var prevReady metav1.Condition
	if c := readyCondition(obj.Status.Conditions); c != nil {
		prevReady = *c
	}
	res, started, err := r.run(ctx, sw, obj, m, src, op)
	if err != nil {
		if refused := r.healthChecksRefused(obj, m, src.commit, err, prevReady); refused != nil {
			return outcome.Success{}, refused
		}
		return outcome.Success{}, applyError(m, err)
	}
	return r.record(ctx, obj, m, src, op, res, started)
}

// run performs the operation on the host. The operation is written into the status
// before it starts, so an operator restarted mid-build attaches to it.
func (r *NixosConfigurationReconciler) run(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration, m *nio.Machine, src *resolvedSource, op operation) (transport.ApplyResult, time.Time, error) {
	host, err := r.Hosts.Open(ctx, m)
	if err != nil {
		return transport.ApplyResult{}, time.Time{}, err
	}
	defer host.Close()

	cur := obj.Status.CurrentOperation
	secrets := transportSecrets(src, op)
	if cur == nil || cur.SourceDigest != src.archive.Digest || cur.SecretsDigest != secrets.Digest || cur.Action != op.label || cur.Commit != src.commit {
		cur = &nio.OperationRef{
			ID: newOperationID(obj, src.archive.Digest), Commit: src.commit, SourceDigest: src.archive.Digest,
			SecretsDigest: secrets.Digest, Action: op.label, StartTime: metav1.NewTime(r.now()),
		}
	}
	obj.Status.CurrentOperation = cur
	obj.Status.LastAttemptedCommit = src.commit
	r.summary(obj).Progressing(ReasonApplying,
		fmt.Sprintf("Applying revision %s (%s) to Machine %s", revision(obj.Spec.Ref, src.commit), op.label, m.Name))
	if err := sw.guard(ctx, obj); err != nil {
		return transport.ApplyResult{}, time.Time{}, err
	}

	logger := log.FromContext(ctx).WithValues("operation", cur.ID, "revision", revision(obj.Spec.Ref, src.commit))
	tail := newTail(logTailLines)
	opLog := r.opLog(obj, cur)
	archive := src.archive
	req := transport.ApplyRequest{
		OperationID: cur.ID, Commit: src.commit, Action: transport.Action(op.action), Target: op.target,
		Source: transport.Source{
			Digest: archive.Digest, Size: int64(len(archive.Data)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(archive.Data)), nil },
		},
		Secrets:        secrets,
		HealthChecks:   op.health,
		ConfirmTimeout: op.confirm,
		Timeout:        op.timeout,
		WaitMargin:     r.OperationWaitMargin,
		OnAwaitingConfirm: func(ctx context.Context, id string) error {
			logger.Info("confirming over a new connection")
			return host.Confirm(ctx, id)
		},
		OnEvent: func(e transport.Event) {
			switch e.Kind {
			case transport.EventLog:
				line := redact(e.Line, src.secrets)
				tail.add(line)
				opLog.Line(line)
				logger.V(1).Info("host output", "line", line)
			case transport.EventPhase:
				opLog.Phase(string(e.Phase), redact(e.Detail, src.secrets))
				logger.V(1).Info("phase", "phase", e.Phase, "detail", e.Detail)
			}
		},
	}
	started := cur.StartTime.Time
	res, err := r.applyBounded(ctx, host, req)
	if errors.Is(err, transport.ErrTimeout) {
		// The operation is over for the operator: recorded Failed (reason Timeout),
		// the lock released, the next pass backs off like after any failure. The
		// agent ends it at its own deadline; if it still runs (an activation is
		// never cut), the next operation finds the agent busy and waits.
		logger.Info("operation timed out", "timeout", op.timeout, "err", err.Error())
		res = transport.ApplyResult{Transport: res.Transport, Outcome: transport.OutcomeFailed, TimedOut: true,
			Message: fmt.Sprintf("timed out after %s (spec.timeout %s): %v", r.now().Sub(started).Round(time.Second), op.timeout, err)}
		if res.Transport == "" {
			res.Transport = nio.TransportAgent
		}
		err = nil
	}
	endOpLog(opLog, res, err, src.secrets)
	if err == nil || errors.Is(err, transport.ErrUnreachable) || errors.Is(err, transport.ErrBusy) ||
		errors.Is(err, transport.ErrHealthChecksNeedAgent) || errors.Is(err, transport.ErrInvalidHealthChecks) || stalls(err) {
		// The operation ended, or never started (a stalling error is the SSH key,
		// read when the unreachable agent sent the apply to SSH): the next pass
		// starts a new one. Other errors (a stream lost for good) keep it, so the
		// next pass attaches.
		if op := obj.Status.CurrentOperation; op != nil && op.ID == cur.ID {
			obj.Status.CurrentOperation = nil
		}
	}
	if err != nil {
		return res, started, err
	}
	if len(res.LogTail) == 0 {
		res.LogTail = tail.lines()
	} else {
		for i := range res.LogTail {
			res.LogTail[i] = redact(res.LogTail[i], src.secrets)
		}
	}
	res.Message = redact(res.Message, src.secrets)
	return res, started, nil
}

// applyBounded is h.Apply under a backstop deadline (waitBackstop); running into it
// is an error wrapping transport.ErrTimeout, like the transport's own.
func (r *NixosConfigurationReconciler) applyBounded(ctx context.Context, h host.Host, req transport.ApplyRequest) (transport.ApplyResult, error) {
	bound := req.WaitBound()
	if bound <= 0 {
		return h.Apply(ctx, req)
	}
	backstop := waitBackstop(bound)
	cause := fmt.Errorf("%w: the host did not answer within %s", transport.ErrTimeout, backstop)
	actx, cancel := context.WithTimeoutCause(ctx, backstop, cause)
	defer cancel()
	res, err := h.Apply(actx, req)
	if err != nil && ctx.Err() == nil && !errors.Is(err, transport.ErrTimeout) && errors.Is(context.Cause(actx), transport.ErrTimeout) {
		err = fmt.Errorf("%w (%v)", cause, err)
	}
	return res, err
}

// applyError classifies an apply that did not reach an outcome.
func applyError(m *nio.Machine, err error) error {
	switch {
	case errors.Is(err, outcome.ErrConfig), stalls(err):
		// E.g. the SSH key Secret is missing or its key unparsable (the agent did
		// not answer, so SSH was needed).
		return err
	case errors.Is(err, transport.ErrBusy):
		return outcome.Wait(10*time.Second, ReasonProgressing, "Machine %s is busy with another operation", m.Name)
	case errors.Is(err, transport.ErrHostKeyMismatch):
		return outcome.Failed(ReasonHostKeyMismatch, err)
	case errors.Is(err, transport.ErrUnreachable):
		return outcome.Failed(ReasonHostUnreachable, fmt.Errorf("Machine %s unreachable: %w", m.Name, err))
	}
	return outcome.Failed(ReasonApplyFailed, err)
}

// stalls tells whether err is the user's to fix (outcome.KindStalling).
func stalls(err error) bool {
	kind, _ := outcome.Classify(err)
	return kind == outcome.KindStalling
}

// record writes the outcome of an apply: on success the configuration's status and a
// Normal event; on failure the attempt, a Warning event with the
// log tail, and a retry after backoff.
func (r *NixosConfigurationReconciler) record(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine, src *resolvedSource, op operation, res transport.ApplyResult, started time.Time) (outcome.Success, error) {
	now := r.now()
	rev := revision(obj.Spec.Ref, src.commit)
	entry := nio.HistoryEntry{
		Commit: src.commit, Action: op.label, Transport: res.Transport, StartTime: metav1.NewTime(started),
		Duration: &metav1.Duration{Duration: now.Sub(started).Round(time.Millisecond)}, Generation: res.Generation,
		SourceDigest: src.archive.Digest, SecretsDigest: src.secretsDigest, Message: truncate(res.Message, 512),
	}
	r.Metrics.observeApply(obj, res, now.Sub(started))
	// The pass ran the operation a requestedAt asked for (whatever its outcome: a
	// failed build is retried with backoff, not forced again).
	if at, ok := obj.Annotations[nio.RequestedAtAnnotation]; ok {
		obj.Status.LastHandledRequestedAt = at
	}

	if res.Outcome != transport.OutcomeSucceeded {
		entry.Result = nio.ResultFailed
		reason := ReasonApplyFailed
		switch {
		case res.Outcome == transport.OutcomeRolledBack:
			entry.Result, reason = nio.ResultRolledBack, ReasonRolledBack
		case res.TimedOut:
			reason = ReasonTimeout
		}
		msg := fmt.Sprintf("Applying revision %s to Machine %s failed (%s via %s): %s", rev, m.Name, entry.Result, res.Transport, res.Message)
		if check, detail, ok := healthFailure(res); ok {
			// The new system ran and was found unhealthy; the host went back to the
			// previous generation, so appliedCommit stays.
			reason, entry.Message = ReasonHealthCheckFailed, truncate(detail, 512)
			msg = fmt.Sprintf("Revision %s failed health check %s on Machine %s (%s via %s): %s", rev, check, m.Name, entry.Result, res.Transport, detail)
			r.Metrics.observeHealthFailures(obj, res.Health)
		}
		pushHistory(&obj.Status, entry)
		setCondition(&obj.Status.Conditions, obj.Generation, nio.ConditionApplied, metav1.ConditionFalse, reason, msg)
		log.FromContext(ctx).Info("apply failed", "revision", rev, "result", entry.Result, "message", res.Message)
		wait, _ := r.decide(obj, m, src, false)
		if wait <= 0 {
			wait = r.retryBase()
		}
		return outcome.Success{}, &outcome.Generic{Reason: reason, Err: errors.New(msg), RequeueAfter: wait,
			Action: "Apply", Note: eventNote(msg, res.LogTail)}
	}

	entry.Result = nio.ResultSucceeded
	pushHistory(&obj.Status, entry)
	st := &obj.Status
	st.AppliedCommit, st.AppliedCommitShort = src.commit, shortCommit(src.commit)
	st.LastAppliedTime = &metav1.Time{Time: now}
	st.AppliedSourceDigest, st.AppliedSpecGeneration = src.archive.Digest, obj.Generation
	st.AppliedSecretsDigest = src.secretsDigest
	st.AppliedSystem, st.TargetMachine = res.StorePath, m.Name
	msg := fmt.Sprintf("Applied revision %s to Machine %s via %s (generation %d%s)", rev, m.Name, res.Transport, res.Generation, healthPassed(res))
	setCondition(&st.Conditions, obj.Generation, nio.ConditionApplied, metav1.ConditionTrue, ReasonSucceeded, msg)
	// The Machine controller copies what was applied into the Machine's status from
	// this status (targetMachine names the Machine): one writer, and a failed write of
	// the Machine is repaired by its next pass, never left until the next commit.
	r.event(obj, corev1.EventTypeNormal, "Applied", "Apply", msg)
	log.FromContext(ctx).Info("applied", "revision", rev, "transport", res.Transport, "generation", res.Generation)
	return outcome.Success{Reason: ReasonSucceeded, Message: "Applied revision " + rev, RequeueAfter: r.interval(obj)}, nil
}

func pushHistory(st *nio.NixosConfigurationStatus, e nio.HistoryEntry) {
	st.History = append([]nio.HistoryEntry{e}, st.History...)
	if len(st.History) > historyLimit {
		st.History = st.History[:historyLimit]
	}
}

func (r *NixosConfigurationReconciler) event(obj *nio.NixosConfiguration, typ, reason, action, note string) {
	if r.Recorder == nil {
		return
	}
	r.Recorder.Eventf(obj, nil, typ, reason, action, "%s", truncate(note, eventNoteLimit))
}

// eventNote is msg followed by as much of the log tail as fits an event.
func eventNote(msg string, tail []string) string {
	note := msg
	if len(tail) == 0 {
		return note
	}
	room := eventNoteLimit - len(note) - len("\nlast output:")
	var lines []string
	for i := len(tail) - 1; i >= 0 && room > 0; i-- {
		l := truncate(tail[i], 200)
		if len(l)+1 > room {
			break
		}
		lines = append([]string{l}, lines...)
		room -= len(l) + 1
	}
	if len(lines) > 0 {
		note += "\nlast output:\n" + strings.Join(lines, "\n")
	}
	return note
}

// redact replaces secret values in s.
func redact(s string, secrets []string) string {
	for _, v := range secrets {
		v = strings.TrimSpace(v)
		if len(v) < 4 {
			continue
		}
		s = strings.ReplaceAll(s, v, "[redacted]")
	}
	return s
}

// tail keeps the last n lines.
type tail struct {
	n   int
	buf []string
}

func newTail(n int) *tail { return &tail{n: n} }

func (t *tail) add(l string) {
	t.buf = append(t.buf, l)
	if len(t.buf) > t.n {
		t.buf = t.buf[len(t.buf)-t.n:]
	}
}

func (t *tail) lines() []string { return append([]string(nil), t.buf...) }

var _ = render.Archive{}

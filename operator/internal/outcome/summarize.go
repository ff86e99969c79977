package outcome

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Limits of what the API server accepts (and what stays readable).
const (
	messageLimit   = 1024
	eventNoteLimit = 1024
)

// Success is the verdict of a pass that reached its goal: Ready=True with Reason
// and Message, and the next look after RequeueAfter (zero: none).
type Success struct {
	Reason       string
	Message      string
	RequeueAfter time.Duration
}

// Summary is what Summarize writes to: the object (for the event and its
// generation), its conditions, and the recorder (nil: no events).
type Summary struct {
	Object     client.Object
	Conditions *[]metav1.Condition
	Recorder   events.EventRecorder
}

// Summarize turns the pass's outcome (ok when err is nil) into the Ready,
// Reconciling and Stalled conditions, records the failure's Warning event, and
// returns the requeue decision. Only errors retried with the workqueue's backoff are
// returned to controller-runtime; the others end the pass without one.
func (s Summary) Summarize(ctx context.Context, ok Success, err error) (reconcile.Result, error) {
	kind, reason, typed := classify(err)
	switch kind {
	case KindNone:
		s.markReady(ok.Reason, ok.Message)
		return reconcile.Result{RequeueAfter: ok.RequeueAfter}, nil
	case KindStalling:
		changed := s.markStalled(reason, err.Error())
		log.FromContext(ctx).Info("stalled", "reason", reason, "message", err.Error())
		if changed {
			// Once per change: a stalled object's passes brought by unrelated watch
			// events must not repeat it.
			s.event(corev1.EventTypeWarning, reason, "Reconcile", err.Error())
		}
		return reconcile.Result{}, nil
	case KindWaiting:
		w := typed.(*Waiting)
		s.markReconciling(reason, err.Error())
		log.FromContext(ctx).V(1).Info("waiting", "reason", reason, "message", err.Error(), "requeueAfter", w.RequeueAfter)
		return reconcile.Result{RequeueAfter: w.RequeueAfter}, nil
	}
	s.markFailed(reason, err.Error())
	if g, ok := typed.(*Generic); ok {
		if g.Action != "" {
			note := g.Note
			if note == "" {
				note = err.Error()
			}
			s.event(corev1.EventTypeWarning, reason, g.Action, note)
		}
		if g.RequeueAfter > 0 {
			return reconcile.Result{RequeueAfter: g.RequeueAfter}, nil
		}
	}
	return reconcile.Result{}, err
}

// Progressing marks the object Reconciling (Ready=Unknown) before a long operation,
// for a status written while it runs; the pass's Summarize gives the verdict.
func (s Summary) Progressing(reason, message string) {
	s.markReconciling(reason, message)
}

func (s Summary) event(typ, reason, action, note string) {
	if s.Recorder != nil {
		s.Recorder.Eventf(s.Object, nil, typ, reason, action, "%s", Truncate(note, eventNoteLimit))
	}
}

func (s Summary) set(typ string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(s.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: Truncate(message, messageLimit),
		ObservedGeneration: s.Object.GetGeneration(),
	})
}

// markReconciling: work is under way (kstatus "in progress").
func (s Summary) markReconciling(reason, message string) {
	s.set(nio.ConditionReconciling, metav1.ConditionTrue, reason, message)
	meta.RemoveStatusCondition(s.Conditions, nio.ConditionStalled)
	s.set(nio.ConditionReady, metav1.ConditionUnknown, reason, message)
}

// markStalled reports whether Ready changed.
func (s Summary) markStalled(reason, message string) bool {
	before := meta.FindStatusCondition(*s.Conditions, nio.ConditionReady)
	var prev metav1.Condition
	if before != nil {
		prev = *before
	}
	s.set(nio.ConditionStalled, metav1.ConditionTrue, reason, message)
	meta.RemoveStatusCondition(s.Conditions, nio.ConditionReconciling)
	s.set(nio.ConditionReady, metav1.ConditionFalse, reason, message)
	after := meta.FindStatusCondition(*s.Conditions, nio.ConditionReady)
	return before == nil || prev.Status != after.Status || prev.Reason != after.Reason ||
		prev.Message != after.Message || prev.ObservedGeneration != after.ObservedGeneration
}

// markFailed: an error that is retried (neither in progress nor stalled).
func (s Summary) markFailed(reason, message string) {
	meta.RemoveStatusCondition(s.Conditions, nio.ConditionReconciling)
	meta.RemoveStatusCondition(s.Conditions, nio.ConditionStalled)
	s.set(nio.ConditionReady, metav1.ConditionFalse, reason, message)
}

func (s Summary) markReady(reason, message string) {
	meta.RemoveStatusCondition(s.Conditions, nio.ConditionReconciling)
	meta.RemoveStatusCondition(s.Conditions, nio.ConditionStalled)
	s.set(nio.ConditionReady, metav1.ConditionTrue, reason, message)
}

// Truncate shortens s to at most n bytes, marking the cut.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

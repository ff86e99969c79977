package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/transport"
)

// reconcileDelete handles a deleted configuration: apply onRemoveFlake (when set and
// this configuration was applied), release the Machine (its configuration fields are
// cleared), then let the object go. A host that can't be reached keeps the finalizer, with a condition
// saying so, until it can or a person sets nio.homystack.com/skip-removal. A nil
// error means the object is gone.
func (r *NixosConfigurationReconciler) reconcileDelete(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration) error {
	if !controllerutil.ContainsFinalizer(obj, nio.Finalizer) {
		return nil
	}
	logger := log.FromContext(ctx)
	m := &nio.Machine{}
	err := r.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: obj.Spec.MachineRef.Name}, m)
	switch {
	case apierrors.IsNotFound(err):
		m = nil // nothing to remove from, nothing to clear
	case err != nil:
		return fmt.Errorf("get Machine: %w", err)
	}

	_, skip := obj.Annotations[nio.SkipRemovalAnnotation]
	applied := obj.Status.AppliedCommit != "" && obj.Status.TargetMachine != ""
	if m != nil && applied && obj.Spec.OnRemoveFlake != "" && !skip {
		if err := r.applyRemoval(ctx, sw, obj, m); err != nil {
			return err
		}
	} else if skip && obj.Spec.OnRemoveFlake != "" {
		logger.Info("removal skipped by annotation", "annotation", nio.SkipRemovalAnnotation)
	}

	// Release the Machine: the Machine controller derives its configuration fields
	// from the configurations applied to it, so forgetting what this one applied
	// clears them. The finalizer goes once the Machine says so: a configuration is
	// never gone while its Machine still names it. (That needs no host: skip-removal
	// does not skip it.)
	if st := &obj.Status; st.TargetMachine != "" || st.AppliedCommit != "" {
		st.TargetMachine, st.AppliedCommit, st.AppliedCommitShort, st.LastAppliedTime = "", "", "", nil
		if err := sw.flush(ctx, obj); err != nil {
			return err
		}
	}
	if m != nil && m.Status.AppliedConfiguration == obj.Name {
		return outcome.Wait(2*time.Second, ReasonRemoving, "Waiting for Machine %s to stop naming this configuration", m.Name)
	}
	patch := client.MergeFrom(obj.DeepCopy())
	controllerutil.RemoveFinalizer(obj, nio.Finalizer)
	if err := r.Patch(ctx, obj, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove finalizer: %w", err)
	}
	r.Logs.Forget(client.ObjectKeyFromObject(obj))
	// The object is gone once the finalizer is: nothing more to write or report.
	sw.base = obj.DeepCopy()
	r.Metrics.forget(obj)
	return nil
}

// removalTarget turns onRemoveFlake into a target: `<dir>#<attr>` is a flake output,
// anything else a NixOS module file.
func removalTarget(onRemove string) (transport.Target, error) {
	if strings.Contains(onRemove, "#") {
		return parseFlake(onRemove)
	}
	return transport.Target{ModuleFile: onRemove}, nil
}

// applyRemoval switches the Machine to onRemoveFlake; nil means it succeeded.
func (r *NixosConfigurationReconciler) applyRemoval(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration, m *nio.Machine) error {
	target, err := removalTarget(obj.Spec.OnRemoveFlake)
	if err != nil {
		return r.removalFailed(obj, m, err, "")
	}
	src, err := r.resolveSource(ctx, obj, m, r.interval(obj))
	if err == nil && src.waitingFor != "" {
		err = errors.New(src.waitingFor)
	}
	if err != nil {
		return r.removalFailed(obj, m, fmt.Errorf("source: %w", err), "")
	}
	unlock, holder, ok := r.Locks.TryLock(types.NamespacedName{Namespace: m.Namespace, Name: m.Name}, "removal of "+obj.Name)
	if !ok {
		return outcome.Wait(5*time.Second, ReasonRemoving, "Waiting for Machine %s: %s is running", m.Name, holder)
	}
	defer unlock()

	op := operation{label: "remove", action: string(nio.ActionSwitch), target: target, timeout: operationTimeout(obj)}
	res, started, err := r.run(ctx, sw, obj, m, src, op)
	if err != nil {
		return r.removalFailed(obj, m, err, "")
	}
	entry := nio.HistoryEntry{
		Commit: src.commit, Action: "remove", Transport: res.Transport, StartTime: metav1.NewTime(started),
		Duration: &metav1.Duration{Duration: r.now().Sub(started).Round(time.Millisecond)}, Generation: res.Generation,
		SourceDigest: src.archive.Digest, Message: truncate(res.Message, 512),
	}
	r.Metrics.observeApply(obj, res, r.now().Sub(started))
	if res.Outcome != transport.OutcomeSucceeded {
		entry.Result = nio.ResultFailed
		pushHistory(&obj.Status, entry)
		note := eventNote("onRemoveFlake failed: "+res.Message, res.LogTail)
		if res.TimedOut {
			return r.removalFailed(obj, m, fmt.Errorf("%s: %w", res.Outcome, timedOutError(res.Message)), note)
		}
		return r.removalFailed(obj, m, fmt.Errorf("%s: %s", res.Outcome, res.Message), note)
	}
	entry.Result = nio.ResultSucceeded
	pushHistory(&obj.Status, entry)
	r.event(obj, corev1.EventTypeNormal, "Removed", "Remove",
		fmt.Sprintf("Applied onRemoveFlake %s (revision %s) to Machine %s via %s", obj.Spec.OnRemoveFlake, revision(obj.Spec.Ref, src.commit), m.Name, res.Transport))
	return nil
}

// removalFailed keeps the finalizer and says why, and how to let go; a Warning event
// carries note when there is one.
func (r *NixosConfigurationReconciler) removalFailed(obj *nio.NixosConfiguration, m *nio.Machine, err error, note string) error {
	msg := fmt.Sprintf("Cannot apply onRemoveFlake %s to Machine %s: %v; the configuration is kept until it succeeds, or set the annotation %s to let it go",
		obj.Spec.OnRemoveFlake, m.Name, err, nio.SkipRemovalAnnotation)
	reason := ReasonRemovalFailed
	switch {
	case errors.Is(err, transport.ErrUnreachable):
		reason = ReasonHostUnreachable
	case errors.Is(err, transport.ErrTimeout):
		reason = ReasonTimeout
	}
	g := &outcome.Generic{Reason: reason, Err: errors.New(msg), RequeueAfter: r.retryBase()}
	if note != "" {
		g.Action, g.Note = "Remove", note
	}
	return g
}

// timedOutError is a host's "timed out" message as an error wrapping
// transport.ErrTimeout (the message already says it timed out).
type timedOutError string

func (e timedOutError) Error() string { return string(e) }
func (e timedOutError) Unwrap() error { return transport.ErrTimeout }

func (r *NixosConfigurationReconciler) retryBase() time.Duration {
	if r.RetryBase > 0 {
		return r.RetryBase
	}
	return 30 * time.Second
}

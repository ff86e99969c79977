package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
)

// NixosFleetReconciler drives a NixosFleet: it resolves the template's ref, keeps one
// NixosConfiguration per selected Machine, and moves them to a new revision in the
// steps of the fleet's strategy (the planner, nixosfleet_rollout.go). The
// configurations do the applying; the fleet only writes their specs.
type NixosFleetReconciler struct {
	client.Client
	// APIReader reads the fleet at the start of a pass: the rollout's state is its
	// status, which the pass must see as the previous pass wrote it.
	APIReader client.Reader
	Scheme    *runtime.Scheme
	Recorder  events.EventRecorder
	Sources   *Sources
	Metrics   *Metrics
	// Trigger, when set, queues fleets on request (the push webhook).
	Trigger *Trigger

	// DefaultInterval applies when template.interval is empty.
	DefaultInterval time.Duration
	// Now is the clock (tests).
	Now func() time.Time

	expect childExpectations
}

// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosfleets,verbs=get;list;watch
// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosfleets/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosfleets/finalizers,verbs=update
// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosconfigurations,verbs=create;delete
// +kubebuilder:rbac:groups=nio.homystack.com,resources=machines,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile runs one pass for one NixosFleet.
func (r *NixosFleetReconciler) Reconcile(ctx context.Context, req reconcile.Request) (result reconcile.Result, retErr error) {
	start := r.now()
	fleet := &nio.NixosFleet{}
	reader := r.APIReader
	if reader == nil {
		reader = r.Client
	}
	if err := reader.Get(ctx, req.NamespacedName, fleet); err != nil {
		if apierrors.IsNotFound(err) {
			r.Metrics.forgetFleet(req.Namespace, req.Name)
			r.expect.forget(req.NamespacedName)
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	defer func() { r.Metrics.observeReconcile("NixosFleet", start, retErr) }()
	if !fleet.DeletionTimestamp.IsZero() {
		return reconcile.Result{}, nil // its configurations go with it (owner references)
	}

	children, err := r.children(ctx, fleet)
	if err != nil {
		return reconcile.Result{}, err
	}
	// The cache must show this fleet's own last writes to its configurations before
	// the next plan: a stale view would move more Machines than the strategy allows.
	if !r.expect.satisfied(req.NamespacedName, children, r.now()) {
		log.FromContext(ctx).V(1).Info("waiting for the cache to show the last writes")
		return reconcile.Result{RequeueAfter: 200 * time.Millisecond}, nil
	}

	sw := newStatusWriter(r.Client, fleet)
	defer func() {
		if err := sw.flush(ctx, fleet); err != nil && retErr == nil {
			retErr = err
		}
	}()
	fleet.Status.ObservedGeneration = fleet.Generation

	ok, err := r.reconcile(ctx, fleet, children)
	result, retErr = r.summary(fleet, err).Summarize(ctx, ok, err)
	if retErr == nil && polls(err) {
		// Whatever the rollout waits for, a new commit of the ref supersedes it.
		if iv := r.interval(fleet); result.RequeueAfter == 0 || result.RequeueAfter > iv {
			result.RequeueAfter = iv
		}
	}
	return result, retErr
}

// summary is where the pass's outcome lands. The planner records the rollout's own
// events (a failed batch, a revert); Summarize records those of other stalls.
func (r *NixosFleetReconciler) summary(fleet *nio.NixosFleet, err error) outcome.Summary {
	s := outcome.Summary{Object: fleet, Conditions: &fleet.Status.Conditions, Recorder: r.Recorder}
	var rollout *rolloutStall
	if errors.As(err, &rollout) {
		s.Recorder = nil
	}
	return s
}

// polls tells whether the fleet keeps polling its ref after a pass that ended with
// err: always, but when its source itself stalls (credentials, a missing repository
// or ref: fixed by a change the watches see, as for a configuration).
func polls(err error) bool {
	kind, reason := outcome.Classify(err)
	if kind != outcome.KindStalling {
		return true
	}
	switch reason {
	case ReasonAuthFailed, ReasonSourceNotFound, ReasonInvalidConfig:
		return false
	}
	return true
}

// rolloutStall is a stall the rollout planner decided (a failed batch, a revert):
// its events are the planner's.
type rolloutStall struct{ stall *outcome.Stalling }

func (e *rolloutStall) Error() string { return e.stall.Error() }
func (e *rolloutStall) Unwrap() error { return e.stall }

func (r *NixosFleetReconciler) reconcile(ctx context.Context, fleet *nio.NixosFleet, children []nio.NixosConfiguration) (outcome.Success, error) {
	commit, err := r.resolve(ctx, fleet)
	if err != nil {
		return outcome.Success{}, err
	}
	revision, err := fleetRevision(commit, fleet.Spec.Template)
	if err != nil {
		return outcome.Success{}, err
	}
	v, err := r.view(ctx, fleet, commit, revision, children)
	if err != nil {
		return outcome.Success{}, err
	}
	if err := r.removeLeaving(ctx, fleet, v.leaving); err != nil {
		return outcome.Success{}, err
	}
	st := &fleet.Status
	st.Selected, st.Excluded = int32(v.selected), v.excluded
	r.count(fleet, v.members)
	if len(v.members) == 0 {
		if v.selected == 0 {
			return outcome.Success{}, outcome.Stalled(ReasonNoMachines, "machineSelector matches no Machine in namespace %s", fleet.Namespace)
		}
		return outcome.Success{}, outcome.Stalled(ReasonNoMachines, "none of the %d selected Machine(s) can be driven by the fleet: see status.excluded", v.selected)
	}
	strategy, err := resolveStrategy(fleet.Spec.Strategy, len(v.members))
	if err != nil {
		return outcome.Success{}, err
	}

	plan := planRollout(rolloutInput{
		strategy: strategy, revision: revision, commit: commit, display: revisionDisplay(fleet, commit),
		members: v.members, rollout: st.Rollout, promote: fleet.Annotations[nio.PromoteAnnotation],
		paused: fleet.Spec.Paused, now: r.now(),
	})
	st.Rollout = plan.rollout
	var errs []error
	for _, mv := range plan.moves {
		errs = append(errs, r.move(ctx, fleet, v, mv, revision))
	}
	for _, m := range plan.reverts {
		errs = append(errs, r.revert(ctx, fleet, v.children[m]))
	}
	r.record(fleet, plan, v.members)
	if err := errors.Join(errs...); err != nil {
		return outcome.Success{}, err
	}
	return verdictOutcome(plan.verdict)
}

// resolve resolves template.ref with the fleet's credentials (status.latestCommit).
func (r *NixosFleetReconciler) resolve(ctx context.Context, fleet *nio.NixosFleet) (string, error) {
	t := fleet.Spec.Template
	var creds map[string][]byte
	if ref := t.CredentialsRef; ref != nil {
		s := &corev1.Secret{}
		if err := r.Get(ctx, types.NamespacedName{Namespace: fleet.Namespace, Name: ref.Name}, s); err != nil {
			if apierrors.IsNotFound(err) {
				return "", outcome.Stalled(ReasonInvalidConfig, "Secret %s not found", ref.Name)
			}
			return "", fmt.Errorf("get Secret %s: %w", ref.Name, err)
		}
		creds = s.Data
	}
	repo, err := r.Sources.Repo(t.GitRepo, creds)
	if err != nil {
		return "", err
	}
	ref := t.Ref
	if ref == "" {
		ref = "main"
	}
	// One listing per interval, shared with the repository's configurations: a
	// fleet pass runs on every status change of its configurations.
	commit, err := repo.ResolveWithin(ctx, ref, pollInterval(t.Interval.Duration, r.DefaultInterval))
	if err != nil {
		return "", sourceError(fmt.Errorf("resolve %s: %w", ref, err))
	}
	fleet.Status.LatestCommit = commit
	return commit, nil
}

// children lists the fleet's own configurations (from the cache, not copied: a pass
// runs on every status change of every configuration of the fleet; move and revert
// write copies).
func (r *NixosFleetReconciler) children(ctx context.Context, fleet *nio.NixosFleet) ([]nio.NixosConfiguration, error) {
	var list nio.NixosConfigurationList
	if err := r.List(ctx, &list, client.InNamespace(fleet.Namespace), client.MatchingFields{indexFleetOwner: fleet.Name},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list the fleet's configurations: %w", err)
	}
	out := list.Items[:0]
	for _, c := range list.Items {
		if controlledBy(&c, fleet) {
			out = append(out, c)
		}
	}
	return out, nil
}

// move writes a Machine's configuration at the target revision: created, or its spec
// replaced, saving what the Machine ran before when it ran it.
func (r *NixosFleetReconciler) move(ctx context.Context, fleet *nio.NixosFleet, v *fleetView, mv fleetMove, revision string) error {
	key := client.ObjectKeyFromObject(fleet)
	m, spec, child := v.machines[mv.machine], v.desired[mv.machine], v.children[mv.machine]
	labels := map[string]string{nio.FleetLabel: fleetLabelValue(fleet.Name), nio.FleetMachineLabel: fleetLabelValue(m.Name)}
	if child == nil {
		c := &nio.NixosConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: fleetChildName(fleet.Name, m.Name), Namespace: fleet.Namespace, Labels: labels,
				Annotations: map[string]string{nio.FleetRevisionAnnotation: revision, nio.FleetBatchAnnotation: mv.batch}},
			Spec: spec,
		}
		if err := controllerutil.SetControllerReference(fleet, c, r.Scheme); err != nil {
			return err
		}
		if err := r.Create(ctx, c); err != nil {
			return fmt.Errorf("create NixosConfiguration %s for Machine %s: %w", c.Name, m.Name, err)
		}
		r.expect.expect(key, c, false, r.now())
		return nil
	}
	patch := client.MergeFrom(child)
	child = child.DeepCopy()
	if cur := child.Annotations[nio.FleetRevisionAnnotation]; cur != "" && cur != revision && childUpdated(child) {
		data, err := json.Marshal(fleetPrevious{Revision: cur, Spec: child.Spec})
		if err != nil {
			return err
		}
		if len(data) <= maxPreviousBytes {
			metav1.SetMetaDataAnnotation(&child.ObjectMeta, nio.FleetPreviousAnnotation, string(data))
		} else {
			log.FromContext(ctx).Info("previous spec too large to keep: a revert leaves this Machine on the new revision", "machine", m.Name, "bytes", len(data))
		}
	}
	for k, val := range labels {
		metav1.SetMetaDataLabel(&child.ObjectMeta, k, val)
	}
	metav1.SetMetaDataAnnotation(&child.ObjectMeta, nio.FleetRevisionAnnotation, revision)
	metav1.SetMetaDataAnnotation(&child.ObjectMeta, nio.FleetBatchAnnotation, mv.batch)
	child.Spec = spec
	if err := r.Patch(ctx, child, patch); err != nil {
		return fmt.Errorf("move NixosConfiguration %s to revision %s: %w", child.Name, revision, err)
	}
	r.expect.expect(key, child, false, r.now())
	return nil
}

// revert gives a configuration back the spec and revision it had before.
func (r *NixosFleetReconciler) revert(ctx context.Context, fleet *nio.NixosFleet, child *nio.NixosConfiguration) error {
	if child == nil {
		return nil
	}
	prev := previousOf(child)
	if prev == nil {
		return nil
	}
	patch := client.MergeFrom(child)
	machine := child.Spec.MachineRef
	child = child.DeepCopy()
	child.Spec = prev.Spec
	child.Spec.MachineRef = machine
	metav1.SetMetaDataAnnotation(&child.ObjectMeta, nio.FleetRevisionAnnotation, prev.Revision)
	metav1.SetMetaDataAnnotation(&child.ObjectMeta, nio.FleetBatchAnnotation, batchRevert)
	if err := r.Patch(ctx, child, patch); err != nil {
		return fmt.Errorf("revert NixosConfiguration %s to revision %s: %w", child.Name, prev.Revision, err)
	}
	r.expect.expect(client.ObjectKeyFromObject(fleet), child, false, r.now())
	return nil
}

// removeLeaving deletes the configurations of Machines that left the fleet; their
// finalizer applies onRemoveFlake as for any configuration.
func (r *NixosFleetReconciler) removeLeaving(ctx context.Context, fleet *nio.NixosFleet, leaving []*nio.NixosConfiguration) error {
	for _, c := range leaving {
		if err := r.Delete(ctx, c, client.Preconditions{UID: &c.UID}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete NixosConfiguration %s: %w", c.Name, err)
		}
		r.expect.expect(client.ObjectKeyFromObject(fleet), c, true, r.now())
		r.event(fleet, corev1.EventTypeNormal, "MachineLeft", "Rollout", fmt.Sprintf(
			"Machine %s left the fleet (no longer selected, or deleted): deleting NixosConfiguration %s (its onRemoveFlake, if any, is applied)",
			c.Spec.MachineRef.Name, c.Name))
	}
	return nil
}

// verdictOutcome turns the planner's verdict into the pass's outcome.
func verdictOutcome(v rolloutVerdict) (outcome.Success, error) {
	switch v.kind {
	case verdictWaiting:
		return outcome.Success{}, &outcome.Waiting{Reason: v.reason, Err: errors.New(v.message), RequeueAfter: v.requeueAfter}
	case verdictStalled:
		return outcome.Success{}, &rolloutStall{&outcome.Stalling{Reason: v.reason, Err: errors.New(v.message)}}
	case verdictDegraded:
		return outcome.Success{}, &outcome.Generic{Reason: v.reason, Err: errors.New(v.message), RequeueAfter: time.Minute}
	}
	return outcome.Success{Reason: v.reason, Message: v.message}, nil
}

// revisionDisplay prints the commit as the configurations do (main@sha1:<hex>).
func revisionDisplay(fleet *nio.NixosFleet, commit string) string {
	ref := fleet.Spec.Template.Ref
	if ref == "" {
		ref = "main"
	}
	return revision(ref, commit)
}

func (r *NixosFleetReconciler) event(fleet *nio.NixosFleet, typ, reason, action, note string) {
	if r.Recorder != nil {
		r.Recorder.Eventf(fleet, nil, typ, reason, action, "%s", truncate(note, eventNoteLimit))
	}
}

func (r *NixosFleetReconciler) interval(fleet *nio.NixosFleet) time.Duration {
	return pollInterval(fleet.Spec.Template.Interval.Duration, r.DefaultInterval)
}

func (r *NixosFleetReconciler) now() time.Time { return clockNow(r.Now) }

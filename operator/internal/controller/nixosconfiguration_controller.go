package controller

import (
	"context"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/oplog"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/pki"
)

// NixosConfigurationReconciler converges a Machine on a NixosConfiguration:
// resolve → render → decide → apply → record (see DESIGN.md, "How a change flows").
type NixosConfigurationReconciler struct {
	client.Client
	// APIReader checks, before a pass acts on a host, that the configuration it read
	// from the cache is the current one (statusWriter.guard): a stale cached status
	// would apply the same commit twice. Passes with nothing to do read only the
	// cache.
	APIReader client.Reader
	Recorder  events.EventRecorder
	Sources   *Sources
	Hosts     host.Hosts
	Locks     *HostLocks
	Installer Installer
	PKI       *pki.Issuer
	Metrics   *Metrics
	// Trigger, when set, queues configurations on request (the push webhook).
	Trigger *Trigger
	// MetaReader reads the metadata of Secrets and ConfigMaps from the manager's
	// cache (their versions, never their data) for the render memo; nil: every pass
	// reads them from the API server.
	MetaReader client.Reader
	memo       renderMemo
	// Logs, when set, keeps each operation's redacted output for `nio logs`.
	Logs *oplog.Store

	// DefaultInterval applies when spec.interval is empty (objects created before
	// defaulting, or by clients that bypass it).
	DefaultInterval time.Duration
	// RetryBase is the first delay after a failed apply of unchanged inputs; it doubles
	// per consecutive failure, up to the configuration's interval or 10 minutes,
	// whichever is longer.
	RetryBase time.Duration
	// OperationWaitMargin is what the operator waits for an operation beyond its
	// spec.timeout, health checks and confirm window, for the transfer and
	// reconnects (default transport.DefaultWaitMargin).
	OperationWaitMargin time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosconfigurations,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosconfigurations/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosconfigurations/finalizers,verbs=update
// +kubebuilder:rbac:groups=nio.homystack.com,resources=machines,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile runs one pass for one NixosConfiguration.
func (r *NixosConfigurationReconciler) Reconcile(ctx context.Context, req reconcile.Request) (result reconcile.Result, retErr error) {
	start := r.now()
	obj := &nio.NixosConfiguration{}
	if err := r.Get(ctx, req.NamespacedName, obj); err != nil {
		if apierrors.IsNotFound(err) {
			r.memo.forget(req.NamespacedName)
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	defer func() { r.Metrics.observeReconcile("NixosConfiguration", start, retErr) }()

	// The status is written at the end of the pass (and, by apply, before a long
	// operation), with what changed since it was read; until the pass has proved it
	// read the current object (guard), only if nothing changed it since.
	sw := newStatusWriter(r.Client, obj)
	sw.optimistic, sw.fresh = true, r.APIReader
	defer func() {
		err := sw.flush(ctx, obj)
		switch {
		case apierrors.IsConflict(err) && retErr == nil || apierrors.IsConflict(retErr):
			// The cache held an older version, or someone changed the object during
			// the pass: the next pass decides on the new one.
			log.FromContext(ctx).V(1).Info("configuration changed during the pass; reconciling again")
			result, retErr = reconcile.Result{RequeueAfter: time.Second}, nil
		case err != nil && retErr == nil:
			retErr = err
		}
	}()

	if !obj.DeletionTimestamp.IsZero() {
		if err := r.reconcileDelete(ctx, sw, obj); err != nil {
			if apierrors.IsConflict(err) {
				return reconcile.Result{}, err // the deferred flush requeues
			}
			return r.summary(obj).Summarize(ctx, outcome.Success{}, err)
		}
		return reconcile.Result{}, nil // gone
	}
	if !controllerutil.ContainsFinalizer(obj, nio.Finalizer) {
		patch := client.MergeFrom(obj.DeepCopy())
		controllerutil.AddFinalizer(obj, nio.Finalizer)
		if err := r.Patch(ctx, obj, patch); err != nil {
			return reconcile.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
		sw.base.SetFinalizers(obj.Finalizers)
		sw.base.SetResourceVersion(obj.ResourceVersion)
	}
	if rollbackPending(obj) {
		// Before the suspend check: a rollback is only acted on while suspended
		// (nixosconfiguration_rollback.go).
		obj.Status.ObservedGeneration = obj.Generation
		ok, err := r.reconcileRollback(ctx, sw, obj)
		if apierrors.IsConflict(err) {
			return reconcile.Result{}, err
		}
		return r.summary(obj).Summarize(ctx, ok, err)
	}
	if obj.Spec.Suspend {
		log.FromContext(ctx).V(1).Info("suspended")
		return reconcile.Result{}, nil
	}
	obj.Status.ObservedGeneration = obj.Generation

	ok, err := r.reconcile(ctx, sw, obj)
	if apierrors.IsConflict(err) {
		return reconcile.Result{}, err // no verdict: the deferred flush requeues
	}
	return r.summary(obj).Summarize(ctx, ok, err)
}

// summary is where the pass's outcome lands: the configuration's conditions, its
// Warning events, the requeue decision. Configuration errors stall (no requeue: a
// change to the object or to what it references triggers the next pass); other
// errors are retried with backoff.
func (r *NixosConfigurationReconciler) summary(obj *nio.NixosConfiguration) outcome.Summary {
	return outcome.Summary{Object: obj, Conditions: &obj.Status.Conditions, Recorder: r.Recorder}
}

func (r *NixosConfigurationReconciler) reconcile(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration) (outcome.Success, error) {
	machine, err := r.machine(ctx, obj)
	if err != nil {
		return outcome.Success{}, err
	}
	if err := r.claim(ctx, obj, machine); err != nil {
		return outcome.Success{}, err
	}

	// A request is recorded as handled only when an apply reaches an outcome (record):
	// a pass that fails before (ls-remote, host unreachable, Machine busy) keeps it
	// pending, so its retry is still forced.
	at, requested := obj.Annotations[nio.RequestedAtAnnotation]
	force := requested && at != obj.Status.LastHandledRequestedAt

	// A forced pass reads everything anew (a fresh listing too); the others may
	// take what is unchanged from the render memo.
	mode := resolveMemoized
	if force {
		mode = resolveFresh
	}
	src, err := r.resolve(ctx, obj, machine, mode)
	if err != nil {
		return outcome.Success{}, err
	}
	if src.waitingFor != "" {
		return outcome.Success{}, outcome.Wait(10*time.Second, ReasonDependencyPending, "%s", src.waitingFor)
	}
	full := func() error {
		if src.partial {
			src, err = r.resolve(ctx, obj, machine, resolveFull)
		}
		return err
	}

	if obj.Spec.FullInstall && installPending(obj) {
		if err := full(); err != nil {
			return outcome.Success{}, err
		}
	}
	if obj.Spec.FullInstall {
		done, ok, err := r.reconcileInstall(ctx, sw, obj, machine, src)
		if err != nil || !done {
			return ok, err
		}
	}

	if err := r.healthGate(obj, src, force); err != nil {
		return outcome.Success{}, err
	}
	if wait, why := r.decide(obj, machine, src, force); why == "" {
		if wait > 0 {
			// The last apply of these inputs failed: its verdict stands until the retry.
			ready := readyCondition(obj.Status.Conditions)
			return outcome.Success{}, outcome.Retry(wait, ready.Reason, ready.Message)
		}
		return outcome.Success{Reason: ReasonSucceeded, RequeueAfter: r.interval(obj),
			Message: "Applied revision " + revision(obj.Spec.Ref, obj.Status.AppliedCommit)}, nil
	} else {
		log.FromContext(ctx).Info("applying", "revision", revision(obj.Spec.Ref, src.commit), "why", why)
	}
	if err := full(); err != nil {
		return outcome.Success{}, err
	}
	if src.waitingFor != "" {
		return outcome.Success{}, outcome.Wait(10*time.Second, ReasonDependencyPending, "%s", src.waitingFor)
	}
	return r.apply(ctx, sw, obj, machine, src)
}

// machine returns the referenced Machine.
func (r *NixosConfigurationReconciler) machine(ctx context.Context, obj *nio.NixosConfiguration) (*nio.Machine, error) {
	m := &nio.Machine{}
	key := types.NamespacedName{Namespace: obj.Namespace, Name: obj.Spec.MachineRef.Name}
	if err := r.Get(ctx, key, m); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, outcome.Stalled(ReasonMachineNotFound, "Machine %s not found", key.Name)
		}
		return nil, fmt.Errorf("get Machine %s: %w", key.Name, err)
	}
	return m, nil
}

// claim enforces one configuration per Machine: the configuration the Machine runs
// keeps it; otherwise the oldest live configuration naming the Machine wins. The
// others stall with MachineInUse until the Machine is free.
func (r *NixosConfigurationReconciler) claim(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine) error {
	var list nio.NixosConfigurationList
	if err := r.List(ctx, &list, client.InNamespace(obj.Namespace), client.MatchingFields{indexMachineRef: m.Name}); err != nil {
		return fmt.Errorf("list configurations of Machine %s: %w", m.Name, err)
	}
	owner := owner(list.Items, m.Status.AppliedConfiguration)
	if owner != nil && owner.Name != obj.Name {
		return outcome.Stalled(ReasonMachineInUse, "Machine %s runs NixosConfiguration %s; delete it first", m.Name, owner.Name)
	}
	return nil
}

// owner is the configuration that owns a Machine among those naming it: the one the
// Machine runs (named by its status) if it is still there, else the earliest created
// (then the first by name; creation times have second precision).
func owner(items []nio.NixosConfiguration, running string) *nio.NixosConfiguration {
	for i := range items {
		if items[i].Name == running && items[i].DeletionTimestamp.IsZero() {
			return &items[i]
		}
	}
	return oldest(items)
}

// oldest is the configuration that owns a Machine: the earliest created (then the
// first by name) among those not being deleted.
func oldest(items []nio.NixosConfiguration) *nio.NixosConfiguration {
	live := make([]*nio.NixosConfiguration, 0, len(items))
	for i := range items {
		if items[i].DeletionTimestamp.IsZero() {
			live = append(live, &items[i])
		}
	}
	if len(live) == 0 {
		return nil
	}
	sort.Slice(live, func(i, j int) bool {
		ti, tj := live[i].CreationTimestamp, live[j].CreationTimestamp
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return live[i].Name < live[j].Name
	})
	return live[0]
}

func (r *NixosConfigurationReconciler) interval(obj *nio.NixosConfiguration) time.Duration {
	return pollInterval(obj.Spec.Interval.Duration, r.DefaultInterval)
}

func (r *NixosConfigurationReconciler) now() time.Time { return clockNow(r.Now) }

// secret reads a Secret of the configuration's namespace; a missing Secret is a
// configuration error.
func (r *NixosConfigurationReconciler) secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, outcome.Stalled(ReasonInvalidConfig, "Secret %s not found", name)
		}
		return nil, fmt.Errorf("get Secret %s: %w", name, err)
	}
	return s, nil
}

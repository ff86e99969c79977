package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Field indexes of the fleet controller.
const (
	// indexFleetOwner indexes NixosConfigurations by the NixosFleet controlling them.
	indexFleetOwner = ".nio.fleetOwner"
	// indexFleetCredentials indexes NixosFleets by template.credentialsRef.
	indexFleetCredentials = ".nio.fleetCredentials"
)

// SetupWithManager registers the fleet controller, its indexes and watches: the
// fleet (spec and annotations: promote), its configurations (their status is the
// rollout's progress), the Machines of its namespace (a Machine joining or leaving
// the selector, or a hostname its flake names), other configurations appearing or
// going (a Machine taken or freed), and its credentials Secret. It uses the
// NixosConfiguration controller's index of configurations by Machine: set that one
// up first.
func (r *NixosFleetReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, concurrency int) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &nio.NixosConfiguration{}, indexFleetOwner, func(o client.Object) []string {
		if name := fleetOwnerName(o); name != "" {
			return []string{name}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &nio.NixosFleet{}, indexFleetCredentials, func(o client.Object) []string {
		if ref := o.(*nio.NixosFleet).Spec.Template.CredentialsRef; ref != nil {
			return []string{ref.Name}
		}
		return nil
	}); err != nil {
		return err
	}
	if r.Scheme == nil {
		r.Scheme = mgr.GetScheme()
	}
	b := ctrl.NewControllerManagedBy(mgr)
	if r.Trigger != nil {
		b = b.WatchesRawSource(source.Channel(r.Trigger.fleetEvents(), &handler.EnqueueRequestForObject{}))
	}
	return b.
		For(&nio.NixosFleet{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&nio.NixosConfiguration{}).
		Watches(&nio.Machine{}, handler.EnqueueRequestsFromMapFunc(r.fleetsOfMachine),
			builder.WithPredicates(machineSelectionChanged)).
		Watches(&nio.NixosConfiguration{}, handler.EnqueueRequestsFromMapFunc(r.fleetsOfForeignConfiguration),
			builder.WithPredicates(appearsOrGoes)).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.fleetsOfSecret)).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(concurrency, 1)}).
		Complete(r)
}

// fleetsOfMachine maps a Machine to the fleets of its namespace whose selector
// matches it (an update maps the old and the new labels: a Machine leaving too).
func (r *NixosFleetReconciler) fleetsOfMachine(ctx context.Context, o client.Object) []reconcile.Request {
	var list nio.NixosFleetList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, f := range list.Items {
		sel, err := metav1.LabelSelectorAsSelector(&f.Spec.MachineSelector)
		if err != nil || !sel.Matches(labels.Set(o.GetLabels())) {
			continue
		}
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: f.Namespace, Name: f.Name}})
	}
	return out
}

// fleetsOfForeignConfiguration maps a configuration no fleet controls to the fleets
// selecting its Machine: it takes the Machine, or frees it.
func (r *NixosFleetReconciler) fleetsOfForeignConfiguration(ctx context.Context, o client.Object) []reconcile.Request {
	c := o.(*nio.NixosConfiguration)
	if fleetOwnerName(c) != "" {
		return nil
	}
	m := &nio.Machine{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: c.Namespace, Name: c.Spec.MachineRef.Name}, m); err != nil {
		return nil
	}
	return r.fleetsOfMachine(ctx, m)
}

// fleetsOfSecret maps a Secret to the fleets whose credentials it holds.
func (r *NixosFleetReconciler) fleetsOfSecret(ctx context.Context, o client.Object) []reconcile.Request {
	var list nio.NixosFleetList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexFleetCredentials: o.GetName()}); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, f := range list.Items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: f.Namespace, Name: f.Name}})
	}
	return out
}

// appearsOrGoes passes a configuration's creation, the start of its deletion and its
// removal.
var appearsOrGoes = predicate.Funcs{
	CreateFunc: func(event.CreateEvent) bool { return true },
	UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetDeletionTimestamp().IsZero() && !e.ObjectNew.GetDeletionTimestamp().IsZero()
	},
	DeleteFunc:  func(event.DeleteEvent) bool { return true },
	GenericFunc: func(event.GenericEvent) bool { return false },
}

// machineSelectionChanged passes the Machine updates a fleet acts on: its labels (the
// selector) and its spec (the hostname its flake names). Status, probes included, is
// not read.
var machineSelectionChanged = predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{})

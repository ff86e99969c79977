package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	nio "github.com/homystack/nio/api/v1alpha1"
)

const (
	indexSSHKeySecret = "spec.sshKeySecretRef.name"
	// indexTargetMachine indexes NixosConfigurations by the Machine they were applied to.
	indexTargetMachine = "status.targetMachine"
)

// SetupWithManager registers the Machine controller: Machines (spec and annotation
// changes; status writes are not events here, so neither controller triggers the
// other in a loop), their SSH key Secrets, and the NixosConfigurations applied to
// them (what was applied changed: the Machine says so at once).
func (r *MachineReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, concurrency int) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &nio.Machine{}, indexSSHKeySecret, func(o client.Object) []string {
		if ref := o.(*nio.Machine).Spec.SSHKeySecretRef; ref != nil {
			return []string{ref.Name}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &nio.NixosConfiguration{}, indexTargetMachine, func(o client.Object) []string {
		if m := o.(*nio.NixosConfiguration).Status.TargetMachine; m != "" {
			return []string{m}
		}
		return nil
	}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&nio.Machine{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.bySSHKeySecret)).
		// An update maps both the old and the new object: a configuration that moves
		// to another Machine updates both.
		Watches(&nio.NixosConfiguration{}, handler.EnqueueRequestsFromMapFunc(byTargetMachine),
			builder.WithPredicates(appliedChanged)).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(concurrency, 1)}).
		Complete(r)
}

// bySSHKeySecret maps a Secret to the Machines whose SSH key it holds; their next
// pass probes the host (a rotated key is tried at once).
func (r *MachineReconciler) bySSHKeySecret(ctx context.Context, o client.Object) []reconcile.Request {
	var list nio.MachineList
	if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexSSHKeySecret: o.GetName()}); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, m := range list.Items {
		key := client.ObjectKeyFromObject(&m)
		r.forgetProbe(key)
		out = append(out, reconcile.Request{NamespacedName: key})
	}
	return out
}

// byTargetMachine maps a configuration to the Machine it was applied to.
func byTargetMachine(_ context.Context, o client.Object) []reconcile.Request {
	c := o.(*nio.NixosConfiguration)
	if c.Status.TargetMachine == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Status.TargetMachine}}}
}

// appliedChanged passes the configuration events that change what a Machine shows:
// a configuration appearing or going, and a change of what it applied where.
var appliedChanged = predicate.Funcs{
	CreateFunc: func(event.CreateEvent) bool { return true },
	DeleteFunc: func(event.DeleteEvent) bool { return true },
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, n := e.ObjectOld.(*nio.NixosConfiguration).Status, e.ObjectNew.(*nio.NixosConfiguration).Status
		return o.TargetMachine != n.TargetMachine || o.AppliedCommit != n.AppliedCommit ||
			!o.LastAppliedTime.Equal(n.LastAppliedTime) || !o.InstalledTime.Equal(n.InstalledTime) ||
			o.InstalledHostKeyFingerprint != n.InstalledHostKeyFingerprint
	},
	GenericFunc: func(event.GenericEvent) bool { return false },
}

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
	"sigs.k8s.io/controller-runtime/pkg/source"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Field indexes on NixosConfiguration.
const (
	indexMachineRef = "spec.machineRef.name"
	indexSecretRefs = ".nio.secretRefs"
	indexGitRepo    = "spec.gitRepo"
)

// secretRefs lists the Secrets a configuration reads.
func secretRefs(c *nio.NixosConfiguration) []string {
	var names []string
	if c.Spec.CredentialsRef != nil {
		names = append(names, c.Spec.CredentialsRef.Name)
	}
	for _, f := range c.Spec.AdditionalFiles {
		if f.Value.SecretRef != nil {
			names = append(names, f.Value.SecretRef.Name)
		}
	}
	return names
}

// SetupWithManager registers the controller, its indexes and its watches: the
// configuration itself, its Machine (including status: facts and the running system
// feed decisions), the Secrets it reads, and the other configurations of its Machine
// (so the next in line takes over when the owner goes).
func (r *NixosConfigurationReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager, concurrency int) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &nio.NixosConfiguration{}, indexMachineRef, func(o client.Object) []string {
		return []string{o.(*nio.NixosConfiguration).Spec.MachineRef.Name}
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &nio.NixosConfiguration{}, indexSecretRefs, func(o client.Object) []string {
		return secretRefs(o.(*nio.NixosConfiguration))
	}); err != nil {
		return err
	}
	if err := idx.IndexField(ctx, &nio.NixosConfiguration{}, indexGitRepo, func(o client.Object) []string {
		return []string{o.(*nio.NixosConfiguration).Spec.GitRepo}
	}); err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr)
	if r.Trigger != nil {
		b = b.WatchesRawSource(source.Channel(r.Trigger.events, &handler.EnqueueRequestForObject{}))
	}
	return b.
		// Generation changes include the start of a deletion; status writes are not
		// events, so a pass never triggers itself.
		For(&nio.NixosConfiguration{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&nio.Machine{}, handler.EnqueueRequestsFromMapFunc(r.byIndex(indexMachineRef))).
		// Secrets are watched as metadata only: their data never sits in the cache
		// (reads go to the API server), but a change still triggers a pass.
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.byIndex(indexSecretRefs))).
		Watches(&nio.NixosConfiguration{}, handler.EnqueueRequestsFromMapFunc(r.siblings),
			builder.WithPredicates(deleting)).
		WithOptions(controller.Options{MaxConcurrentReconciles: max(concurrency, 1)}).
		Complete(r)
}

// byIndex maps an object to the configurations whose index value is its name.
func (r *NixosConfigurationReconciler) byIndex(index string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		var list nio.NixosConfigurationList
		if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{index: o.GetName()}); err != nil {
			return nil
		}
		return requests(list.Items)
	}
}

// siblings maps a configuration being deleted to the others naming its Machine.
func (r *NixosConfigurationReconciler) siblings(ctx context.Context, o client.Object) []reconcile.Request {
	c := o.(*nio.NixosConfiguration)
	var list nio.NixosConfigurationList
	if err := r.List(ctx, &list, client.InNamespace(c.Namespace), client.MatchingFields{indexMachineRef: c.Spec.MachineRef.Name}); err != nil {
		return nil
	}
	var out []reconcile.Request
	for _, req := range requests(list.Items) {
		if req.Name != c.Name {
			out = append(out, req)
		}
	}
	return out
}

// RequestsForRepo lists the configurations naming gitRepo (for the webhook receiver).
func (r *NixosConfigurationReconciler) RequestsForRepo(ctx context.Context, gitRepo string) ([]reconcile.Request, error) {
	var list nio.NixosConfigurationList
	if err := r.List(ctx, &list, client.MatchingFields{indexGitRepo: gitRepo}); err != nil {
		return nil, err
	}
	return requests(list.Items), nil
}

func requests(items []nio.NixosConfiguration) []reconcile.Request {
	out := make([]reconcile.Request, 0, len(items))
	for _, c := range items {
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: c.Namespace, Name: c.Name}})
	}
	return out
}

// deleting passes the events of a configuration going away: its deletion starting,
// and its removal.
var deleting = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	UpdateFunc:  func(e event.UpdateEvent) bool { return !e.ObjectNew.GetDeletionTimestamp().IsZero() },
	DeleteFunc:  func(event.DeleteEvent) bool { return true },
	GenericFunc: func(event.GenericEvent) bool { return false },
}

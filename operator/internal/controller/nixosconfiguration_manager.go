package controller

import (
	"context"
	"strings"

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
// configuration itself, its Machine (the fields a pass reads: machineReadChanged),
// the Secrets it reads, its Machine's facts ConfigMap, and the other configurations
// of its Machine
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
		Watches(&nio.Machine{}, handler.EnqueueRequestsFromMapFunc(r.byIndex(indexMachineRef)),
			builder.WithPredicates(machineReadChanged)).
		// Secrets are watched as metadata only: their data never sits in the cache
		// (reads go to the API server), but a change still triggers a pass.
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.byIndex(indexSecretRefs))).
		// So are ConfigMaps: a facts ConfigMap changed (by hand: the Machine's scan
		// time moves with the operator's own writes) is a new render input.
		WatchesMetadata(&corev1.ConfigMap{}, handler.EnqueueRequestsFromMapFunc(r.byOwningMachine)).
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

// byOwningMachine maps a ConfigMap owned by a Machine (its facts) to the
// configurations of that Machine.
func (r *NixosConfigurationReconciler) byOwningMachine(ctx context.Context, o client.Object) []reconcile.Request {
	for _, ref := range o.GetOwnerReferences() {
		if ref.Kind == "Machine" && strings.HasPrefix(ref.APIVersion, nio.GroupVersion.Group+"/") {
			var list nio.NixosConfigurationList
			if err := r.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{indexMachineRef: ref.Name}); err != nil {
				return nil
			}
			return requests(list.Items)
		}
	}
	return nil
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

// machineReadChanged passes the Machine events a configuration's pass may decide
// differently on: creation, deletion, and an update of a field the pass reads. A
// probe only bumping status.agent.lastSeenTime (every probe interval, on every
// Machine) is not one: at fleet scale it would run every configuration's full pass
// (ls-remote, Secret and facter reads) once a minute for nothing.
var machineReadChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		o, okOld := e.ObjectOld.(*nio.Machine)
		n, okNew := e.ObjectNew.(*nio.Machine)
		if !okOld || !okNew {
			return true
		}
		return machineReadOf(o) != machineReadOf(n)
	},
}

// machineRead is what a configuration's pass reads of its Machine, as a comparable
// value.
type machineRead struct {
	// generation covers the spec: address, ports, SSH user and key, agent disabled.
	generation int64
	deleting   bool
	// appliedConfiguration decides which configuration owns the Machine (claim,
	// deletion).
	appliedConfiguration string
	// sshHostKeyFingerprint is enforced by the SSH transport a pass opens.
	sshHostKeyFingerprint string
	// discoverable and agentConnected: a host coming back retries a pass that found
	// it unreachable, and the agent coming back one whose health checks need it.
	discoverable, agentConnected bool
	// currentSystem and seenSinceApply feed drifted(): another system running, or
	// the first answer of the agent after the last apply (drift is judged only on
	// an answer later than the apply).
	currentSystem  string
	seenSinceApply bool
	// facts: a new nixos-facter report (the summary's ConfigMap, and the scan time,
	// which moves even when the summary does not).
	facts    nio.FactsSummary
	hasFacts bool
	scanTime int64
}

func machineReadOf(m *nio.Machine) machineRead {
	st := m.Status
	r := machineRead{
		generation: m.Generation, deleting: !m.DeletionTimestamp.IsZero(),
		appliedConfiguration: st.AppliedConfiguration, sshHostKeyFingerprint: st.SSHHostKeyFingerprint,
		discoverable: st.Discoverable,
	}
	if st.System != nil {
		r.currentSystem = st.System.CurrentSystem
	}
	if a := st.Agent; a != nil {
		r.agentConnected = a.Connected
		r.seenSinceApply = a.LastSeenTime != nil && st.LastAppliedTime != nil && a.LastSeenTime.After(st.LastAppliedTime.Time)
	}
	if st.Facts != nil {
		r.facts, r.hasFacts = *st.Facts, true
	}
	if st.LastHardwareScanTime != nil {
		r.scanTime = st.LastHardwareScanTime.UnixNano()
	}
	return r
}

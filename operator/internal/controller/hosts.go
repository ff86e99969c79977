package controller

import (
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// HostLocks serialises operations on a Machine across controllers: an apply, an
// install, a removal and the delivery of the agent's identity never overlap.
type HostLocks struct {
	mu   sync.Mutex
	held map[types.NamespacedName]string
}

// TryLock takes the Machine's lock for holder, or reports who holds it.
func (l *HostLocks) TryLock(m types.NamespacedName, holder string) (unlock func(), heldBy string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[types.NamespacedName]string{}
	}
	if h, busy := l.held[m]; busy {
		return nil, h, false
	}
	l.held[m] = holder
	return func() {
		l.mu.Lock()
		delete(l.held, m)
		l.mu.Unlock()
	}, "", true
}

// ClientOptions are the manager's client options: Secrets and ConfigMaps are read
// from the API server, never cached. No Secret data sits in the operator's memory,
// and neither do the nixos-facter reports (50–500 KB each, read once per render).
func ClientOptions() client.Options {
	return client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.ConfigMap{}}}}
}

// CacheTransform strips from every object the manager's cache holds what the
// operator never reads: managedFields, and kubectl's last-applied-configuration
// annotation (a second copy of the spec of every object applied with kubectl apply).
// The operator writes with patches only, so a field missing from the cache is never
// written back as removed.
func CacheTransform() toolscache.TransformFunc {
	strip := cache.TransformStripManagedFields()
	return func(in any) (any, error) {
		out, err := strip(in)
		if err != nil {
			return out, err
		}
		if obj, ok := out.(metav1.Object); ok {
			if a := obj.GetAnnotations(); a != nil {
				if _, ok := a[corev1.LastAppliedConfigAnnotation]; ok {
					delete(a, corev1.LastAppliedConfigAnnotation)
					if len(a) == 0 {
						obj.SetAnnotations(nil)
					}
				}
			}
		}
		return out, nil
	}
}

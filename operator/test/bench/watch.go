package main

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// waitAll watches the objects of list (in namespace) until done is true for want of
// them, and returns, per object name, when done first became true (the time the
// watch event arrived). The watch is started before the caller's action, so no
// change is missed; a closed watch is resumed after a fresh list.
func waitAll(ctx context.Context, c client.WithWatch, list client.ObjectList, namespace string, want int,
	done func(client.Object) bool, started chan<- struct{}) (map[string]time.Time, error) {
	at := map[string]time.Time{}
	observe := func(obj client.Object) {
		if _, ok := at[obj.GetName()]; !ok && done(obj) {
			at[obj.GetName()] = time.Now()
		}
	}
	first := true
	for {
		l := list.DeepCopyObject().(client.ObjectList)
		if err := c.List(ctx, l, client.InNamespace(namespace)); err != nil {
			return at, fmt.Errorf("list: %w", err)
		}
		items, err := meta.ExtractList(l)
		if err != nil {
			return at, err
		}
		for _, it := range items {
			observe(it.(client.Object))
		}
		w, err := c.Watch(ctx, list.DeepCopyObject().(client.ObjectList),
			&client.ListOptions{Namespace: namespace, Raw: &metav1.ListOptions{ResourceVersion: l.GetResourceVersion()}})
		if err != nil {
			return at, fmt.Errorf("watch: %w", err)
		}
		if first && started != nil {
			close(started)
		}
		first = false
		if len(at) >= want {
			w.Stop()
			return at, nil
		}
		closed := false
		for !closed {
			select {
			case <-ctx.Done():
				w.Stop()
				return at, fmt.Errorf("%d of %d done: %w", len(at), want, ctx.Err())
			case ev, ok := <-w.ResultChan():
				if !ok {
					closed = true
					break
				}
				if ev.Type == watch.Added || ev.Type == watch.Modified {
					if obj, ok := ev.Object.(client.Object); ok {
						observe(obj)
					}
				}
				if len(at) >= want {
					w.Stop()
					return at, nil
				}
			}
		}
	}
}

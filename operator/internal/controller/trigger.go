package controller

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Trigger starts passes of configurations from outside the watches (the push
// webhook): the source cache forgets the repositories' refs, and each matching
// configuration is queued at once.
type Trigger struct {
	Client  client.Client
	Sources *Sources
	events  chan event.GenericEvent
}

// NewTrigger returns a Trigger; pass it to NixosConfigurationReconciler.Trigger.
func NewTrigger(c client.Client, s *Sources) *Trigger {
	return &Trigger{Client: c, Sources: s, events: make(chan event.GenericEvent, 1024)}
}

// Repos triggers every configuration whose spec.gitRepo match accepts and returns
// how many were queued.
func (t *Trigger) Repos(ctx context.Context, match func(gitRepo string) bool) (int, error) {
	t.Sources.Cache.InvalidateMatching(match)
	var list nio.NixosConfigurationList
	if err := t.Client.List(ctx, &list); err != nil {
		return 0, fmt.Errorf("list configurations: %w", err)
	}
	n := 0
	for i := range list.Items {
		c := &list.Items[i]
		if !match(c.Spec.GitRepo) {
			continue
		}
		select {
		case t.events <- event.GenericEvent{Object: c}:
			n++
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
	return n, nil
}

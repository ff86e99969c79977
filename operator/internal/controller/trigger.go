package controller

import (
	"context"
	"fmt"
	"sync"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/source"
)

// Trigger starts passes from outside the watches (the push webhook): the source
// cache forgets the repositories' refs, and each matching configuration and fleet is
// queued at once.
type Trigger struct {
	Client  client.Client
	Sources *Sources
	events  chan event.GenericEvent

	mu     sync.Mutex
	fleets chan event.GenericEvent // nil until the fleet controller watches it
}

// NewTrigger returns a Trigger; pass it to NixosConfigurationReconciler.Trigger (and
// NixosFleetReconciler.Trigger).
func NewTrigger(c client.Client, s *Sources) *Trigger {
	return &Trigger{Client: c, Sources: s, events: make(chan event.GenericEvent, 1024)}
}

// fleetEvents is the channel the fleet controller watches.
func (t *Trigger) fleetEvents() chan event.GenericEvent {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fleets == nil {
		t.fleets = make(chan event.GenericEvent, 1024)
	}
	return t.fleets
}

// Repos triggers every configuration and fleet whose gitRepo match accepts, and
// returns how many objects were queued. A fleet's own configurations are not among
// them: they are pinned to the commit their fleet resolved, so a push reaches them
// through their fleet (queued once, however many Machines it has).
func (t *Trigger) Repos(ctx context.Context, match func(gitRepo string) bool) (int, error) {
	t.Sources.Cache.InvalidateMatching(match)
	return t.queue(ctx, match)
}

// WatchSources makes every change of refs one configuration's poll finds (the
// source cache lists each repository once per interval, for all its users) queue
// every configuration and fleet of that repository, as a push webhook would.
func (t *Trigger) WatchSources(ctx context.Context) {
	t.Sources.Cache.OnRefsChanged(func(url string) {
		n, err := t.queue(ctx, func(gitRepo string) bool { return gitRepo == url })
		log.FromContext(ctx).V(1).Info("refs changed", "repo", source.RedactURL(url), "queued", n, "error", err)
	})
}

// queue queues the configurations and fleets whose gitRepo match accepts.
func (t *Trigger) queue(ctx context.Context, match func(gitRepo string) bool) (int, error) {
	var list nio.NixosConfigurationList
	if err := t.Client.List(ctx, &list); err != nil {
		return 0, fmt.Errorf("list configurations: %w", err)
	}
	n := 0
	for i := range list.Items {
		c := &list.Items[i]
		if !match(c.Spec.GitRepo) || fleetOwnerName(c) != "" {
			continue
		}
		select {
		case t.events <- event.GenericEvent{Object: c}:
			n++
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
	t.mu.Lock()
	fleets := t.fleets
	t.mu.Unlock()
	if fleets == nil {
		return n, nil
	}
	var fl nio.NixosFleetList
	if err := t.Client.List(ctx, &fl); err != nil {
		return n, fmt.Errorf("list fleets: %w", err)
	}
	for i := range fl.Items {
		f := &fl.Items[i]
		if !match(f.Spec.Template.GitRepo) {
			continue
		}
		select {
		case fleets <- event.GenericEvent{Object: f}:
			n++
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
	return n, nil
}

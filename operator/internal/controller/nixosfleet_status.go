package controller

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// count writes the fleet's counters from what its Machines run.
func (r *NixosFleetReconciler) count(fleet *nio.NixosFleet, members []fleetMember) {
	st := &fleet.Status
	st.Updated, st.Ready, st.Failed = 0, 0, 0
	for _, m := range members {
		if m.OnTarget && m.Updated {
			st.Updated++
		}
		if m.Ready {
			st.Ready++
		}
		if m.OnTarget && m.Failed {
			st.Failed++
		}
	}
}

// record emits the plan's events and metrics.
func (r *NixosFleetReconciler) record(fleet *nio.NixosFleet, plan rolloutPlan, members []fleetMember) {
	for _, e := range plan.events {
		typ := corev1.EventTypeNormal
		if e.warning {
			typ = corev1.EventTypeWarning
		}
		r.event(fleet, typ, e.reason, "Rollout", e.message)
	}
	m := r.Metrics
	if m == nil {
		return
	}
	if plan.started {
		m.FleetRolloutsStarted.Inc()
	}
	for _, result := range plan.finished {
		m.FleetRolloutsFinished.WithLabelValues(result).Inc()
	}
	for _, b := range plan.batches {
		m.FleetBatchDuration.WithLabelValues(b.result).Observe(b.duration.Seconds())
	}
	for _, phase := range []nio.RolloutPhase{nio.RolloutProgressing, nio.RolloutPaused, nio.RolloutReverting, nio.RolloutReverted, nio.RolloutCompleted} {
		v := 0.0
		if plan.rollout != nil && plan.rollout.Phase == phase {
			v = 1
		}
		m.FleetPhase.WithLabelValues(fleet.Namespace, fleet.Name, string(phase)).Set(v)
	}
	var updated, failed, pending float64
	for _, mem := range members {
		switch {
		case !mem.OnTarget:
			pending++
		case mem.Failed:
			failed++
		case mem.Updated:
			updated++
		}
	}
	m.FleetMachines.WithLabelValues(fleet.Namespace, fleet.Name, "updated").Set(updated)
	m.FleetMachines.WithLabelValues(fleet.Namespace, fleet.Name, "failed").Set(failed)
	m.FleetMachines.WithLabelValues(fleet.Namespace, fleet.Name, "pending").Set(pending)
}

// childExpectations remember the fleet's own writes to its configurations until the
// cache shows them (the ReplicaSet controller's "expectations"): a pass planned on a
// cache that lags behind the previous pass's moves would move more Machines than
// maxParallel or maxUnavailable allow.
type childExpectations struct {
	mu      sync.Mutex
	byFleet map[types.NamespacedName]map[string]expectation
}

type expectation struct {
	gone       bool
	generation int64
	revision   string
	batch      string
	at         time.Time
}

// expectationTTL is how long an unmet expectation holds the fleet (a write the
// cache never shows, e.g. undone at once by someone else).
const expectationTTL = 30 * time.Second

// expect records a write: c as written (its generation and annotations), or gone.
func (e *childExpectations) expect(fleet types.NamespacedName, c *nio.NixosConfiguration, gone bool, now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.byFleet == nil {
		e.byFleet = map[types.NamespacedName]map[string]expectation{}
	}
	if e.byFleet[fleet] == nil {
		e.byFleet[fleet] = map[string]expectation{}
	}
	e.byFleet[fleet][c.Name] = expectation{gone: gone, generation: c.Generation, revision: c.Annotations[nio.FleetRevisionAnnotation],
		batch: c.Annotations[nio.FleetBatchAnnotation], at: now}
}

// satisfied tells whether children (the cache's view) show every recorded write.
func (e *childExpectations) satisfied(fleet types.NamespacedName, children []nio.NixosConfiguration, now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	exps := e.byFleet[fleet]
	if len(exps) == 0 {
		return true
	}
	byName := make(map[string]*nio.NixosConfiguration, len(children))
	for i := range children {
		byName[children[i].Name] = &children[i]
	}
	for name, exp := range exps {
		c := byName[name]
		var met bool
		switch {
		case now.Sub(exp.at) > expectationTTL:
			met = true
		case exp.gone:
			met = c == nil || !c.DeletionTimestamp.IsZero()
		case c != nil:
			met = c.Generation > exp.generation || c.Generation == exp.generation &&
				c.Annotations[nio.FleetRevisionAnnotation] == exp.revision && c.Annotations[nio.FleetBatchAnnotation] == exp.batch
		}
		if met {
			delete(exps, name)
		}
	}
	if len(exps) == 0 {
		delete(e.byFleet, fleet)
		return true
	}
	return false
}

// forget drops a deleted fleet's expectations.
func (e *childExpectations) forget(fleet types.NamespacedName) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byFleet, fleet)
}

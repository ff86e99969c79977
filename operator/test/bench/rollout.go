package main

import (
	"context"
	"fmt"
	"math"
	"os/exec"
	"slices"
	"sort"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// The fleet rounds put the benchmark's Machines into one NixosFleet and roll a commit
// out to them in batches of rolloutBatch, each apply health-checked by the agent.
const (
	benchFleet = "bench"
	// fleetSelectorLabel is on every benchmark Machine; the fleet selects by it.
	fleetSelectorLabel = "nio-bench/fleet"
	rolloutBatch       = "10%"
)

// healthCheckCommand is the fleet's health check: the simulated agent runs it for
// real (agent/internal/health, as the agent's child) after every activation.
var healthCheckCommand = []string{"/bin/true"}

// BatchTiming is one batch of a fleet round, as the benchmark's watch saw it: from
// the first of its configurations moved to the round's commit until the last of
// them ran it (applied, confirmed, health-checked), in seconds since T0.
type BatchTiming struct {
	Name  string  `json:"name"`
	Size  int     `json:"size"`
	Start float64 `json:"startSeconds"`
	End   float64 `json:"endSeconds"`
	// Seconds is End - Start; FloorSeconds is ceil(size / concurrency) × build time
	// + health check time: what the batch would take with nothing but the hosts'
	// work and the operator's concurrency to wait for.
	Seconds      float64 `json:"seconds"`
	FloorSeconds float64 `json:"floorSeconds"`
	// GapSeconds is from the end of the previous batch (or T0) to this one's start:
	// the fleet's reaction time.
	GapSeconds float64 `json:"gapSeconds"`
}

// FleetRollout is what a fleet round adds to its Round.
type FleetRollout struct {
	Batches []BatchTiming `json:"batches"`
	// FloorSeconds is the sum of the batches' floors; TotalSeconds (the Round's) is
	// T0 → the last Machine running the commit.
	FloorSeconds float64 `json:"floorSeconds"`
	// HealthCheckSeconds is the median run time of the health check command here,
	// the floor's health check time.
	HealthCheckSeconds float64 `json:"healthCheckSeconds"`
	// Phase and Updated are the fleet's status.rollout.phase and status.updated at
	// the end of the round; CompletedSeconds is T0 → the fleet's status saying
	// Completed with every Machine updated (it trails the last Machine a little).
	Phase            string  `json:"phase"`
	Updated          int32   `json:"updated"`
	CompletedSeconds float64 `json:"completedSeconds"`
}

// runFleetRounds puts the Machines into one NixosFleet (round fleet-adopt: its first
// rollout, of commit, the repository's HEAD) and rolls a new commit out through it
// (round fleet-rollout). The standalone configurations of the earlier rounds are
// deleted first: a Machine another configuration names is not the fleet's to take.
func runFleetRounds(ctx context.Context, st *stack, git *gitServer, sim *fleetSim, o fleetOptions, repo *gitRepo, commit string, res *FleetResult) error {
	t := time.Now()
	if err := deleteConfigurations(ctx, st.c, o.roundTimeout); err != nil {
		return err
	}
	o.log.Info("standalone configurations deleted", "machines", o.machines, "seconds", time.Since(t).Seconds())
	hc := healthCheckTime()

	r, err := measureFleet(ctx, st, git, sim, o, "fleet-adopt",
		"the N NixosConfigurations deleted (not timed); a NixosFleet over the N Machines created at T0 (batches of "+rolloutBatch+
			", command health check /bin/true); until every Machine runs the current commit again through the fleet's configurations",
		commit, hc, func() error { return createBenchFleet(ctx, st.c, repo.url) })
	res.Rounds = append(res.Rounds, r)
	if err != nil {
		return err
	}

	next, err := repo.commit(fleetTree(3), "version 3")
	if err != nil {
		return err
	}
	o.log.Info("pushed", "commit", next)
	r, err = measureFleet(ctx, st, git, sim, o, "fleet-rollout",
		"commit 3 pushed, signed generic webhook POSTed at T0; the fleet moves "+rolloutBatch+" of the Machines at a time, the next batch once all of one "+
			"run the commit (applied, confirmed, health check passed); until every Machine runs commit 3",
		next, hc, func() error { return st.push(ctx, repo.url, next) })
	res.Rounds = append(res.Rounds, r)
	return err
}

// measureFleet is measure over the fleet's configurations, recording when each was
// moved to commit (its spec.ref) and in which batch, to time the batches.
func measureFleet(ctx context.Context, st *stack, git *gitServer, sim *fleetSim, o fleetOptions, name, desc, commit string,
	hc time.Duration, action func() error) (Round, error) {
	var mu sync.Mutex
	moved := map[string]time.Time{}
	batchOf := map[string]string{}
	done := func(obj client.Object) bool {
		c := obj.(*nio.NixosConfiguration)
		if c.Spec.Ref == commit {
			mu.Lock()
			if _, ok := moved[c.Name]; !ok {
				moved[c.Name], batchOf[c.Name] = time.Now(), c.Annotations[nio.FleetBatchAnnotation]
			}
			mu.Unlock()
		}
		return c.Spec.Ref == commit && c.Status.AppliedCommit == commit && c.Status.CurrentOperation == nil &&
			meta.IsStatusConditionTrue(c.Status.Conditions, nio.ConditionReady)
	}
	var t0 time.Time
	r, err := measure(ctx, st, git, sim, o, name, desc, &nio.NixosConfigurationList{}, done, func() error {
		t0 = time.Now()
		return action()
	})
	if err != nil {
		return r, err
	}
	mu.Lock()
	defer mu.Unlock()
	fr, err := batchTimings(r.doneAt, t0, moved, batchOf, o.concurrency, o.buildTime, hc)
	r.Fleet = fr
	if err != nil {
		return r, fmt.Errorf("%s: %w", name, err)
	}
	// The fleet's own status follows the configurations' (it sees them through its
	// cache): wait for it to say Completed.
	var f nio.NixosFleet
	deadline := time.Now().Add(time.Minute)
	for {
		if err := st.c.Get(ctx, client.ObjectKey{Namespace: fleetNamespace, Name: benchFleet}, &f); err != nil {
			return r, err
		}
		ro := f.Status.Rollout
		if ro != nil {
			fr.Phase = string(ro.Phase)
		}
		fr.Updated = f.Status.Updated
		if ro != nil && ro.Commit == commit && ro.Phase == nio.RolloutCompleted && int(f.Status.Updated) == o.machines {
			fr.CompletedSeconds = time.Since(t0).Seconds()
			break
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("%s: the fleet's rollout is %s with %d updated a minute after every Machine ran %s", name, fr.Phase, fr.Updated, commit)
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	o.log.Info("fleet round", "round", name, "batches", len(fr.Batches), "total_s", r.TotalSeconds, "floor_s", fr.FloorSeconds, "phase", fr.Phase)
	return r, nil
}

// batchTimings groups the configurations by batch: a batch starts when the first of
// them was moved and ends at the last of their convergence times (doneAt: seconds
// since T0, as the round's watch saw them).
func batchTimings(doneAt map[string]float64, t0 time.Time, moved map[string]time.Time, batchOf map[string]string,
	concurrency int, buildTime, hc time.Duration) (*FleetRollout, error) {
	fr := &FleetRollout{HealthCheckSeconds: hc.Seconds()}
	byBatch := map[string]*BatchTiming{}
	for name, at := range moved {
		b := byBatch[batchOf[name]]
		if b == nil {
			b = &BatchTiming{Name: batchOf[name], Start: math.Inf(1)}
			byBatch[batchOf[name]] = b
		}
		b.Size++
		b.Start = min(b.Start, at.Sub(t0).Seconds())
		end, ok := doneAt[name]
		if !ok {
			return fr, fmt.Errorf("configuration %s was moved but never seen done", name)
		}
		b.End = max(b.End, end)
	}
	for _, b := range byBatch {
		fr.Batches = append(fr.Batches, *b)
	}
	sort.Slice(fr.Batches, func(i, j int) bool { return fr.Batches[i].Start < fr.Batches[j].Start })
	prevEnd := 0.0
	for i := range fr.Batches {
		b := &fr.Batches[i]
		b.Seconds = b.End - b.Start
		b.FloorSeconds = math.Ceil(float64(b.Size)/float64(concurrency))*buildTime.Seconds() + hc.Seconds()
		b.GapSeconds = b.Start - prevEnd
		prevEnd = b.End
		fr.FloorSeconds += b.FloorSeconds
	}
	return fr, nil
}

// createBenchFleet creates the NixosFleet over every benchmark Machine: the
// configurations' template of the earlier rounds, a command health check, batches
// of rolloutBatch and no canary.
func createBenchFleet(ctx context.Context, c client.Client, repoURL string) error {
	enabled, facter := true, true
	f := &nio.NixosFleet{
		ObjectMeta: metav1.ObjectMeta{Namespace: fleetNamespace, Name: benchFleet},
		Spec: nio.NixosFleetSpec{
			MachineSelector: metav1.LabelSelector{MatchLabels: map[string]string{fleetSelectorLabel: "true"}},
			Template: nio.FleetTemplate{
				Flake: ".#sim",
				ConfigurationTemplate: nio.ConfigurationTemplate{
					GitRepo: repoURL, Ref: "main",
					AdditionalFiles: []nio.AdditionalFile{
						{Path: "facts/facter.json", Value: nio.AdditionalFileValue{NixosFacter: &facter}},
					},
					Rollback: nio.RollbackSpec{Enabled: &enabled, ConfirmTimeout: metav1.Duration{Duration: time.Minute}},
					HealthChecks: &nio.HealthChecks{
						Timeout:  &metav1.Duration{Duration: time.Minute},
						Interval: &metav1.Duration{Duration: time.Second},
						Checks: []nio.HealthCheck{{Name: "true", Command: &nio.CommandHealthCheck{
							Command: healthCheckCommand, Timeout: &metav1.Duration{Duration: 30 * time.Second}}}},
					},
				},
			},
			Strategy: nio.RolloutStrategy{Batches: []intstr.IntOrString{intstr.FromString(rolloutBatch)}},
		},
	}
	if err := c.Create(ctx, f); err != nil {
		return fmt.Errorf("create NixosFleet %s: %w", benchFleet, err)
	}
	return nil
}

// deleteConfigurations deletes every NixosConfiguration of the benchmark's namespace
// and waits until they are gone (their finalizer has run).
func deleteConfigurations(ctx context.Context, c client.Client, timeout time.Duration) error {
	if err := c.DeleteAllOf(ctx, &nio.NixosConfiguration{}, client.InNamespace(fleetNamespace)); err != nil {
		return fmt.Errorf("delete the configurations: %w", err)
	}
	deadline := time.Now().Add(timeout)
	for {
		var l nio.NixosConfigurationList
		if err := c.List(ctx, &l, client.InNamespace(fleetNamespace)); err != nil {
			return err
		}
		if len(l.Items) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d configurations still there after %s", len(l.Items), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// healthCheckTime is the median of a few runs of the health check command here.
func healthCheckTime() time.Duration {
	var d []float64
	for range 11 {
		t := time.Now()
		if err := exec.Command(healthCheckCommand[0], healthCheckCommand[1:]...).Run(); err != nil {
			return 0
		}
		d = append(d, float64(time.Since(t)))
	}
	slices.Sort(d)
	return time.Duration(d[len(d)/2])
}

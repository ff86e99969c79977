//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/controller"
	"github.com/homystack/nio/operator/test/harness"
	"github.com/homystack/nio/testkit/nixtest"
)

const (
	fleetName = "fleet-demo"
	// fleetCheck is the fleet's health check: the activated system is there, and is
	// not one whose version says it is unhealthy (the failing commit's).
	fleetCheck = "system"
	// unhealthyVersion is the basic fixture's version of the commit that fails it.
	unhealthyVersion = "fleet-unhealthy"
	// fleetRolloutTimeout bounds one rollout over the three hosts.
	fleetRolloutTimeout = 3 * time.Minute
)

// fleetHost is a Machine of the fleet and the demo host it points at.
type fleetHost struct {
	machine string
	host    *harness.Host
}

// A NixosFleet over three demo hosts (the guide's worker-01 and two more) rolls each
// new commit out to its canary first and to the other two only once the canary runs
// it, applied, confirmed and health-checked; the fleet takes worker-01 only once the
// guide's configuration lets it go. A commit whose health check fails is rolled back
// by the canary's agent, and the fleet stops there (onFailure Pause): the other two
// keep running the last good commit.
func TestFleetRollsOutCanaryFirstAndPausesWhenItsHealthCheckFails(t *testing.T) {
	walkGuide(t)
	ctx := testContext(t, 9*time.Minute)

	// A repository of its own: its commits must not move the guide's configuration.
	repo, err := stack.Git.NewRepo("fleet-configs")
	if err != nil {
		t.Fatal(err)
	}
	commitA, err := repo.CommitFixture("basic", map[string]string{nixtest.VarVersion: "fleet-a"}, "fleet: version a")
	if err != nil {
		t.Fatal(err)
	}

	// The guide's configuration holds worker-01 at first, as a user's would.
	_, err = stack.Control.Configuration(ctx, harness.GuideNamespace, harness.GuideConfiguration)
	guideWasThere := err == nil
	if apierrors.IsNotFound(err) {
		kubectl(t, ctx, "apply", "-f", stack.Path("nixosconfiguration.yaml"))
	} else if err != nil {
		t.Fatal(err)
	}
	// The canary is the first Machine by name: fleet-01.
	var hosts []fleetHost
	t.Cleanup(func() { removeFleet(t, hosts, guideWasThere) })
	for _, name := range []string{"fleet-01", "fleet-02"} {
		h, err := stack.StartMachineHost(ctx, name, map[string]string{"role": fleetName})
		if h != nil {
			hosts = append(hosts, fleetHost{name, h})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	hosts = append(hosts, fleetHost{harness.GuideMachine, stack.Host})
	kubectl(t, ctx, "label", "machine", harness.GuideMachine, "-n", harness.GuideNamespace, "role="+fleetName, "--overwrite")

	apply(t, ctx, "fleet.yaml", `apiVersion: nio.homystack.com/v1alpha1
kind: NixosFleet
metadata:
  name: `+fleetName+`
  namespace: `+harness.GuideNamespace+`
spec:
  machineSelector:
    matchLabels:
      role: `+fleetName+`
  template:
    gitRepo: "`+repo.RepoURL+`"
    flake: ".#worker"
    credentialsRef:
      name: git-credentials
    interval: 5s
    healthChecks:
      timeout: 10s
      interval: 500ms
      checks:
      - name: `+fleetCheck+`
        command:
          command: ["/bin/sh", "-c", "test -x /run/current-system/bin/switch-to-configuration && ! grep -q `+unhealthyVersion+` /run/current-system/nixos-version"]
          timeout: 5s
  strategy:
    canary: 1
    batches: ["100%"]
    onFailure: Pause
`)

	// Commit A reaches the two new hosts; worker-01 is not the fleet's to take.
	fl := waitFleet(t, ctx, "commit A on the two free Machines, worker-01 excluded", func(f *nio.NixosFleet) bool {
		return rolledOut(f, commitA, 2) && len(f.Status.Excluded) == 1 && f.Status.Excluded[0].Name == harness.GuideMachine
	})
	if ex := fl.Status.Excluded[0]; ex.Reason != controller.ReasonMachineInUse || !strings.Contains(ex.Message, harness.GuideConfiguration) {
		t.Errorf("excluded worker-01: %s %q, want %s naming %s", ex.Reason, ex.Message, controller.ReasonMachineInUse, harness.GuideConfiguration)
	}
	if fl.Status.Selected != 3 {
		t.Errorf("status.selected = %d, want 3", fl.Status.Selected)
	}
	// Once the guide's configuration is gone, worker-01 joins and gets commit A.
	kubectl(t, ctx, "delete", "nixosconfiguration", harness.GuideConfiguration, "-n", harness.GuideNamespace, "--timeout=3m")
	waitFleet(t, ctx, "worker-01 taken and on commit A", func(f *nio.NixosFleet) bool {
		return rolledOut(f, commitA, 3) && len(f.Status.Excluded) == 0
	})

	// Commit B: the canary first, the other two after it.
	commitB, err := repo.CommitFixture("basic", map[string]string{nixtest.VarVersion: "fleet-b"}, "fleet: version b")
	if err != nil {
		t.Fatal(err)
	}
	fl = waitFleet(t, ctx, "commit B on all three", func(f *nio.NixosFleet) bool { return rolledOut(f, commitB, 3) })
	assertBatches(t, fl.Status.Rollout, []nio.BatchStatus{{Name: "canary", Size: 1, Updated: 1}, {Name: "1", Size: 2, Updated: 2}})
	systemB := ""
	for i, h := range hosts {
		c := fleetConfiguration(t, ctx, h.machine)
		if c.Status.AppliedCommit != commitB || len(c.Status.History) == 0 || c.Status.History[0].Commit != commitB ||
			c.Status.History[0].Result != nio.ResultSucceeded || c.Status.History[0].Transport != nio.TransportAgent {
			t.Errorf("%s: appliedCommit %q, newest history %+v; want %s succeeded via the agent", c.Name, c.Status.AppliedCommit, c.Status.History, commitB)
		}
		if want := []string{"canary", "1", "1"}[i]; c.Annotations[nio.FleetBatchAnnotation] != want {
			t.Errorf("%s: batch %q, want %q", c.Name, c.Annotations[nio.FleetBatchAnnotation], want)
		}
		current, err := h.host.CurrentSystem(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(current, "-nixos-system-worker-fleet-b") || current != c.Status.AppliedSystem {
			t.Errorf("%s's /run/current-system = %q, want the applied system %q (…-nixos-system-worker-fleet-b)", h.machine, current, c.Status.AppliedSystem)
		}
		systemB = current
	}
	// The agents' logs say when each host's operation for B started and ended.
	canaryDone := agentOperation(t, hosts[0].host, commitB).done
	for _, h := range hosts[1:] {
		if start := agentOperation(t, h.host, commitB).start; !start.After(canaryDone) {
			t.Errorf("%s started commit B at %s, before the canary %s was done with it at %s",
				h.machine, start.Format(time.RFC3339Nano), hosts[0].machine, canaryDone.Format(time.RFC3339Nano))
		}
	}
	events := fleetEvents(t, ctx)
	for _, want := range []string{
		"RolloutStarted: Rolling out revision " + fl.Status.Rollout.Revision + " (main@sha1:" + commitB + ") to 3 Machine(s), canary 1 first",
		"BatchStarted: Batch canary started: fleet-01 get revision " + fl.Status.Rollout.Revision,
		"BatchSucceeded: Batch canary succeeded: 1 Machine(s) run revision " + fl.Status.Rollout.Revision,
		"BatchStarted: Batch 1 started: fleet-02, worker-01 get revision " + fl.Status.Rollout.Revision,
		"BatchSucceeded: Batch 1 succeeded: 2 Machine(s) run revision " + fl.Status.Rollout.Revision,
		"RolloutCompleted: Revision " + fl.Status.Rollout.Revision + " (main@sha1:" + commitB + ") rolled out to 3 Machine(s)",
	} {
		if !slices.ContainsFunc(events, func(e string) bool { return strings.HasPrefix(e, want) }) {
			t.Errorf("no fleet event %q; events:\n%s", want, strings.Join(events, "\n"))
		}
	}
	// FAILED is blank while status.failed has never been written (a merge patch of
	// the status leaves out a count that stays 0).
	columns := regexp.MustCompile(`(?m)^` + fleetName + ` +3 +3 +3 +(0 +)?` + commitB[:12] + ` +Completed `)
	if out := kubectl(t, ctx, "get", "nixfleet", fleetName, "-n", harness.GuideNamespace); !columns.MatchString(out) {
		t.Errorf("kubectl get nixfleet, want 3 selected, updated and ready, none failed, %s Completed:\n%s", commitB[:12], out)
	}

	// Commit C fails the health check on the canary: its agent rolls it back, and
	// nothing else moves.
	commitC, err := repo.CommitFixture("basic", map[string]string{nixtest.VarVersion: unhealthyVersion}, "fleet: an unhealthy version")
	if err != nil {
		t.Fatal(err)
	}
	// The canary retries C with its configuration's backoff: between two attempts
	// it counts as failed, during one as applying. Wait for the former.
	fl = waitFleet(t, ctx, "commit C paused after the canary, the canary failed", func(f *nio.NixosFleet) bool {
		ro := f.Status.Rollout
		return ro != nil && ro.Commit == commitC && ro.Phase == nio.RolloutPaused && ro.Reason == controller.ReasonBatchFailed &&
			f.Status.Failed == 1 && f.Status.Updated == 0 && len(ro.Batches) == 1 && ro.Batches[0].Failed == 1
	})
	stalled := meta.FindStatusCondition(fl.Status.Conditions, nio.ConditionStalled)
	if stalled == nil || stalled.Status != "True" || stalled.Reason != controller.ReasonBatchFailed || !strings.Contains(stalled.Message, "fleet-01") {
		t.Errorf("Stalled condition %+v, want True, %s, naming fleet-01", stalled, controller.ReasonBatchFailed)
	}
	if b := fl.Status.Rollout.Batches[0]; b.Name != "canary" || b.Phase != "Failed" || b.Size != 1 {
		t.Errorf("batches %+v, want the canary alone, Failed", fl.Status.Rollout.Batches)
	}
	var canary *nio.NixosConfiguration
	err = harness.WaitFor(ctx, "the canary's configuration reports the failed health check", time.Minute, func() (bool, string, error) {
		canary = fleetConfiguration(t, ctx, hosts[0].machine)
		ready := meta.FindStatusCondition(canary.Status.Conditions, nio.ConditionReady)
		if ready == nil || ready.Reason != controller.ReasonHealthCheckFailed {
			return false, fmt.Sprintf("Ready %+v", ready), nil
		}
		return true, "", nil
	})
	if err != nil {
		t.Error(err)
	}
	if i := slices.IndexFunc(canary.Status.History, func(h nio.HistoryEntry) bool { return h.Commit == commitC }); i < 0 ||
		canary.Status.History[i].Result != nio.ResultRolledBack || !strings.Contains(canary.Status.History[i].Message, "health check "+fleetCheck+" failed") {
		t.Errorf("%s history %+v, want commit %s RolledBack by health check %s", canary.Name, canary.Status.History, commitC, fleetCheck)
	}
	if canary.Status.AppliedCommit != commitB {
		t.Errorf("%s appliedCommit %q, want still %s", canary.Name, canary.Status.AppliedCommit, commitB)
	}
	// The canary retries C with its backoff, so look at its first attempt: the agent
	// switched to C, then back to B.
	if op := agentOperation(t, hosts[0].host, commitC); op.outcome != "OUTCOME_ROLLED_BACK" || op.currentSystem != systemB {
		t.Errorf("the canary's operation for C ended %s on %q, want OUTCOME_ROLLED_BACK on %q", op.outcome, op.currentSystem, systemB)
	}
	acts, err := hosts[0].host.Activations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(acts, func(a string) bool { return strings.HasSuffix(a, "-nixos-system-worker-"+unhealthyVersion) }); i < 0 ||
		i+1 >= len(acts) || acts[i+1] != "switch "+systemB {
		t.Errorf("the canary's activations do not show C switched to and back to B:\n%s", strings.Join(acts, "\n"))
	}
	for _, h := range hosts[1:] {
		c := fleetConfiguration(t, ctx, h.machine)
		if c.Spec.Ref != commitB || c.Status.AppliedCommit != commitB || c.Annotations[nio.FleetBatchAnnotation] != "1" {
			t.Errorf("%s: ref %q appliedCommit %q batch %q; want it left on %s by batch 1", c.Name, c.Spec.Ref, c.Status.AppliedCommit, c.Annotations[nio.FleetBatchAnnotation], commitB)
		}
		if current, err := h.host.CurrentSystem(ctx); err != nil || current != systemB {
			t.Errorf("%s's /run/current-system = %q (%v), want B's %q", h.machine, current, err, systemB)
		}
	}
	if !slices.ContainsFunc(fleetEvents(t, ctx), func(e string) bool {
		return strings.HasPrefix(e, "BatchFailed: Batch canary failed revision "+fl.Status.Rollout.Revision) && strings.Contains(e, "fleet-01: "+controller.ReasonHealthCheckFailed)
	}) {
		t.Errorf("no Warning event BatchFailed for the canary naming fleet-01 and %s:\n%s", controller.ReasonHealthCheckFailed, strings.Join(fleetEvents(t, ctx), "\n"))
	}
}

// removeFleet undoes the test: the fleet and its configurations (nothing runs the
// garbage collector here: no controller-manager), the fleet's label on worker-01,
// the other Machines, their Secrets and hosts; the guide's configuration is back if
// it was there before (and has applied the guide's commit again), else gone.
func removeFleet(t *testing.T, hosts []fleetHost, guideWasThere bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	steps := [][]string{
		{"delete", "nixosfleet", fleetName, "--ignore-not-found", "--timeout=1m"},
		{"delete", "nixosconfiguration", "-l", nio.FleetLabel + "=" + fleetName, "--ignore-not-found", "--timeout=3m"},
		{"patch", "machine", harness.GuideMachine, "--type=merge", "-p", `{"metadata":{"labels":{"role":null}}}`},
	}
	for _, h := range hosts {
		if h.host != stack.Host {
			steps = append(steps, []string{"delete", "machine", h.machine, "--ignore-not-found", "--timeout=1m"},
				[]string{"delete", "secret", h.machine + "-ssh-key", "--ignore-not-found"})
		}
	}
	if !guideWasThere {
		steps = append(steps, []string{"delete", "nixosconfiguration", harness.GuideConfiguration, "--ignore-not-found", "--timeout=3m"})
	}
	for _, args := range steps {
		if _, err := stack.Control.Quiet(ctx, append(args, "-n", harness.GuideNamespace)...); err != nil {
			t.Errorf("clean up: %v", err)
		}
	}
	for _, h := range hosts {
		if h.host != stack.Host {
			if err := h.host.Close(); err != nil {
				t.Errorf("clean up: close demo host %s: %v", h.machine, err)
			}
		}
	}
	if !guideWasThere {
		return
	}
	if _, err := stack.Control.Quiet(ctx, "apply", "-f", stack.Path("nixosconfiguration.yaml")); err != nil {
		t.Errorf("clean up: %v", err)
		return
	}
	head, err := stack.Git.Head()
	if err == nil {
		err = stack.WaitApplied(ctx, head)
	}
	if err != nil {
		t.Errorf("clean up: the guide's configuration again: %v", err)
	}
}

// rolledOut: the fleet's rollout of commit completed with n Machines updated and
// nobody failed.
func rolledOut(f *nio.NixosFleet, commit string, n int32) bool {
	ro := f.Status.Rollout
	return ro != nil && ro.Commit == commit && ro.Phase == nio.RolloutCompleted && ro.Reason == controller.ReasonSucceeded &&
		f.Status.Updated == n && f.Status.Ready == n && f.Status.Failed == 0
}

func waitFleet(t *testing.T, ctx context.Context, what string, cond func(*nio.NixosFleet) bool) *nio.NixosFleet {
	t.Helper()
	var f nio.NixosFleet
	err := harness.WaitFor(ctx, "NixosFleet "+fleetName+": "+what, fleetRolloutTimeout, func() (bool, string, error) {
		if err := stack.Control.Admin.Get(ctx, client.ObjectKey{Namespace: harness.GuideNamespace, Name: fleetName}, &f); err != nil {
			return false, err.Error(), nil
		}
		return cond(&f), describeFleet(&f), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return &f
}

func describeFleet(f *nio.NixosFleet) string {
	st := f.Status
	s := fmt.Sprintf("selected %d updated %d ready %d failed %d excluded %+v", st.Selected, st.Updated, st.Ready, st.Failed, st.Excluded)
	if ro := st.Rollout; ro != nil {
		s += fmt.Sprintf("; rollout %s %s/%s %q", ro.CommitShort, ro.Phase, ro.Reason, ro.Message)
	}
	for _, c := range st.Conditions {
		s += fmt.Sprintf("; %s=%s %s %q", c.Type, c.Status, c.Reason, c.Message)
	}
	return s
}

func assertBatches(t *testing.T, ro *nio.RolloutStatus, want []nio.BatchStatus) {
	t.Helper()
	if len(ro.Batches) != len(want) {
		t.Errorf("rollout batches %+v, want %d", ro.Batches, len(want))
		return
	}
	for i, b := range ro.Batches {
		w := want[i]
		if b.Name != w.Name || b.Size != w.Size || b.Updated != w.Updated || b.Failed != 0 || b.Phase != "Succeeded" || b.FinishTime == nil {
			t.Errorf("batch %d = %+v, want %s of %d, %d updated, Succeeded", i, b, w.Name, w.Size, w.Updated)
		}
		if i > 0 && b.StartTime.Before(ro.Batches[i-1].FinishTime) {
			t.Errorf("batch %s started at %s, before batch %s finished at %s", b.Name, b.StartTime, ro.Batches[i-1].Name, ro.Batches[i-1].FinishTime)
		}
	}
}

// fleetConfiguration is the fleet's configuration for machine (`<fleet>-<machine>`).
func fleetConfiguration(t *testing.T, ctx context.Context, machine string) *nio.NixosConfiguration {
	t.Helper()
	c, err := stack.Control.Configuration(ctx, harness.GuideNamespace, fleetName+"-"+machine)
	if err != nil {
		t.Fatal(err)
	}
	if c.Labels[nio.FleetLabel] != fleetName || c.Labels[nio.FleetMachineLabel] != machine || c.Spec.MachineRef.Name != machine {
		t.Errorf("%s: labels %v, machineRef %s; want the fleet's for %s", c.Name, c.Labels, c.Spec.MachineRef.Name, machine)
	}
	return c
}

// fleetEvents are the fleet's events as "<reason>: <message>".
func fleetEvents(t *testing.T, ctx context.Context) []string {
	t.Helper()
	var list corev1.EventList
	if err := json.Unmarshal([]byte(kubectl(t, ctx, "get", "events", "-n", harness.GuideNamespace,
		"--field-selector", "involvedObject.kind=NixosFleet,involvedObject.name="+fleetName, "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, len(list.Items))
	for _, e := range list.Items {
		out = append(out, e.Reason+": "+e.Message)
	}
	return out
}

// agentOp is the first operation for a commit in a host's agent log.
type agentOp struct {
	start, done            time.Time
	outcome, currentSystem string
}

func agentOperation(t *testing.T, h *harness.Host, commit string) agentOp {
	t.Helper()
	var op agentOp
	id := ""
	for _, line := range strings.Split(h.Agent().Log(), "\n") {
		var e struct {
			Time                            time.Time
			Msg, Commit, Operation, Outcome string
			CurrentSystem                   string `json:"current_system"`
		}
		if json.Unmarshal([]byte(line), &e) != nil {
			continue
		}
		switch {
		case id == "" && e.Msg == "operation start" && e.Commit == commit:
			id, op.start = e.Operation, e.Time
		case id != "" && e.Msg == "operation done" && e.Operation == id:
			op.done, op.outcome, op.currentSystem = e.Time, e.Outcome, e.CurrentSystem
			return op
		}
	}
	t.Fatalf("no finished operation for commit %s in the agent log of %s", commit, h.Address)
	return op
}

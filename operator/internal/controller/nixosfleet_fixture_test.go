package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// fleetTimeout bounds each wait of the fleet scenarios: a rollout is a few passes of
// the fleet and an apply per Machine and batch, on a machine shared with other tests.
const fleetTimeout = 90 * time.Second

// fleetFixture is the usage guide's setup (Secrets, the git server) with a set of
// labelled Machines and a running operator.
type fleetFixture struct {
	*fixture
	hosts *hosttest.Fleet
}

func newFleetFixture(t *testing.T) *fleetFixture {
	t.Helper()
	f := &fleetFixture{fixture: newFixture(t), hosts: hosttest.NewFleet()}
	f.op = startOperator(t, f.ns, f.hosts, nil)
	return f
}

// machines creates Machines carrying labels.
func (f *fleetFixture) machines(labels map[string]string, names ...string) {
	f.t.Helper()
	for _, n := range names {
		m := f.machine(n)
		m.Labels = labels
		f.create(m)
	}
}

var web = map[string]string{"role": "web"}

// fleet is a NixosFleet of the Machines labelled role=web, on the test repository,
// polled every second.
func (f *fleetFixture) fleet(name string, mutate ...func(*nio.NixosFleet)) *nio.NixosFleet {
	fl := &nio.NixosFleet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec: nio.NixosFleetSpec{
			MachineSelector: metav1.LabelSelector{MatchLabels: web},
			Template: nio.FleetTemplate{Flake: ".#worker", ConfigurationTemplate: nio.ConfigurationTemplate{
				GitRepo:        f.repo.URL(),
				CredentialsRef: &nio.LocalObjectReference{Name: "git-credentials"},
				Interval:       metav1.Duration{Duration: time.Second},
			}},
		},
	}
	for _, m := range mutate {
		m(fl)
	}
	return fl
}

func getFleet(t *testing.T, ns, name string) *nio.NixosFleet {
	t.Helper()
	fl := &nio.NixosFleet{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, fl); err != nil {
		t.Fatal(err)
	}
	return fl
}

// waitFleet polls the fleet until ok accepts it.
func (f *fleetFixture) waitFleet(name, what string, ok func(*nio.NixosFleet) error) *nio.NixosFleet {
	f.t.Helper()
	var fl *nio.NixosFleet
	eventually(f.t, fleetTimeout, what, func() error {
		fl = getFleet(f.t, f.ns, name)
		if err := ok(fl); err != nil {
			return fmt.Errorf("%w; status %s", err, fleetSummary(fl))
		}
		return nil
	})
	return fl
}

func fleetSummary(fl *nio.NixosFleet) string {
	st := fl.Status
	s := fmt.Sprintf("selected %d updated %d ready %d failed %d", st.Selected, st.Updated, st.Ready, st.Failed)
	if ro := st.Rollout; ro != nil {
		s += fmt.Sprintf(", rollout %s commit %s %s/%s %q batches %s", ro.Revision, ro.CommitShort, ro.Phase, ro.Reason, ro.Message, batchSummary(ro))
	}
	for _, c := range st.Conditions {
		s += fmt.Sprintf(", %s=%s %s %q", c.Type, c.Status, c.Reason, c.Message)
	}
	return s
}

// rolledOut: the rollout of commit completed, every one of n Machines runs it, Ready.
func rolledOut(commit string, n int32) func(*nio.NixosFleet) error {
	return func(fl *nio.NixosFleet) error {
		ro := fl.Status.Rollout
		ready := condition(fl.Status.Conditions, nio.ConditionReady)
		if ro == nil || ro.Commit != commit || ro.Phase != nio.RolloutCompleted || fl.Status.Updated != n ||
			ready == nil || ready.Status != metav1.ConditionTrue || fl.Status.ObservedGeneration != fl.Generation {
			return fmt.Errorf("not rolled out to %d Machines", n)
		}
		return nil
	}
}

// phase: the rollout of commit is in phase for reason.
func phase(commit string, p nio.RolloutPhase, reason string) func(*nio.NixosFleet) error {
	return func(fl *nio.NixosFleet) error {
		if ro := fl.Status.Rollout; ro == nil || ro.Commit != commit || ro.Phase != p || ro.Reason != reason {
			return fmt.Errorf("not %s/%s", p, reason)
		}
		return nil
	}
}

// opsOf are the Applies a host received for commit.
func (f *fleetFixture) opsOf(host, commit string) []hosttest.AppliedOp {
	var out []hosttest.AppliedOp
	for _, op := range f.hosts.Host(host).Ops() {
		if op.Commit == commit {
			out = append(out, op)
		}
	}
	return out
}

// commits are the commits a host applied successfully, in order.
func (f *fleetFixture) commits(host string) []string {
	var out []string
	for _, op := range f.hosts.Host(host).Ops() {
		if op.Outcome == "Succeeded" {
			out = append(out, shortCommit(op.Commit))
		}
	}
	return out
}

func (f *fleetFixture) patchFleet(name string, mutate func(*nio.NixosFleet)) {
	f.t.Helper()
	fl := getFleet(f.t, f.ns, name)
	patch := client.MergeFrom(fl.DeepCopy())
	mutate(fl)
	if err := env.Client.Patch(context.Background(), fl, patch); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fleetFixture) promote(fleet, value string) {
	f.patchFleet(fleet, func(fl *nio.NixosFleet) { metav1.SetMetaDataAnnotation(&fl.ObjectMeta, nio.PromoteAnnotation, value) })
}

// eventReasons lists the reasons of the fleet's events, by type.
func (f *fleetFixture) eventReasons(fleet, typ string) []string {
	var out []string
	for _, e := range eventsOf(f.t, f.ns, fleet) {
		if e.Type == typ {
			out = append(out, e.Reason)
		}
	}
	return out
}

func (f *fleetFixture) waitEvent(fleet, typ, reason string) {
	f.t.Helper()
	eventually(f.t, fleetTimeout, typ+" event "+reason, func() error {
		if !slices.Contains(f.eventReasons(fleet, typ), reason) {
			return fmt.Errorf("events %v", f.eventReasons(fleet, typ))
		}
		return nil
	})
}

func short(names ...string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = shortCommit(n)
	}
	return out
}

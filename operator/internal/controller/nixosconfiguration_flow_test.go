package controller

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/testkit/gittest"
)

const testToken = "s3cr3t-git-token-4a7f"

// fixture is the usage guide's setup in a namespace of its own: the Machine, its SSH
// key Secret, the git credentials Secret (the guide's `token`) and a
// NixosConfiguration naming a repository on a real git http-backend that wants it.
type fixture struct {
	t    *testing.T
	ns   string
	srv  *gittest.Server
	repo *gittest.Repo
	op   *operator
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, ns: newNamespace(t)}
	f.srv = gittest.NewServer(t, gittest.Options{Auth: gittest.AuthBasic, Username: source.DefaultTokenUser, Password: testToken})
	f.repo = f.srv.NewRepo(t, "nixos-configs")
	ctx := context.Background()
	for _, obj := range []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "worker-ssh-key", Namespace: f.ns},
			Data: map[string][]byte{"ssh-privatekey": []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "git-credentials", Namespace: f.ns},
			Data: map[string][]byte{"token": []byte(testToken)}},
		f.machine("worker-01"),
	} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// machine is the usage guide's Machine.
func (f *fixture) machine(name string) *nio.Machine {
	return &nio.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec: nio.MachineSpec{Hostname: name, IPAddress: "192.168.1.100", SSHUser: "root",
			SSHKeySecretRef: &nio.SSHKeySecretReference{Name: "worker-ssh-key"}},
	}
}

// config is the usage guide's NixosConfiguration, on the test repository, polled
// every second.
func (f *fixture) config(name, machine string, mutate ...func(*nio.NixosConfiguration)) *nio.NixosConfiguration {
	c := &nio.NixosConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
		Spec: nio.NixosConfigurationSpec{
			Flake: ".#worker", MachineRef: nio.LocalObjectReference{Name: machine},
			ConfigurationTemplate: nio.ConfigurationTemplate{
				GitRepo:        f.repo.URL(),
				CredentialsRef: &nio.LocalObjectReference{Name: "git-credentials"},
				Interval:       metav1.Duration{Duration: time.Second},
			},
		},
	}
	for _, m := range mutate {
		m(c)
	}
	return c
}

func (f *fixture) create(objs ...client.Object) {
	f.t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			f.t.Fatal(err)
		}
	}
}

// commit pushes a commit with a flake whose content names version.
func (f *fixture) commit(version string) string {
	return f.repo.CommitFiles(f.t, map[string]string{
		"flake.nix":   "{ outputs = { self }: { nixosConfigurations.worker = import ./worker.nix; }; }\n",
		"worker.nix":  "# system of version " + version + "\n{ }\n",
		"version.txt": version + "\n",
	}, "version "+version)
}

// waitApplied waits until the configuration and the Machine record commit.
func (f *fixture) waitApplied(config, machine, commit string) {
	f.t.Helper()
	eventually(f.t, 30*time.Second, "applied "+shortCommit(commit), func() error {
		c := getConfig(f.t, f.ns, config)
		m := getMachine(f.t, f.ns, machine)
		if c.Status.AppliedCommit != commit || m.Status.AppliedCommit != commit {
			return fmt.Errorf("configuration applied %q, Machine %q; conditions %v", c.Status.AppliedCommit, m.Status.AppliedCommit, c.Status.Conditions)
		}
		return nil
	})
}

var hex40 = regexp.MustCompile(`^[0-9a-f]{40}$`)

// TestUsageGuideFlow is the usage guide end to end through the controllers: the
// Machine's status says which commit runs, and a new commit is picked up by itself.
func TestUsageGuideFlow(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	f.op = startOperator(t, f.ns, hosttest.NewFleet(), nil)
	f.create(f.config("worker-config", "worker-01"))

	f.waitApplied("worker-config", "worker-01", first)
	m := getMachine(t, f.ns, "worker-01")
	if !m.Status.HasConfiguration || m.Status.AppliedConfiguration != "worker-config" || !hex40.MatchString(m.Status.AppliedCommit) ||
		m.Status.LastAppliedTime == nil || m.Status.AppliedCommitShort != first[:12] {
		t.Fatalf("Machine status = %+v, want the usage guide's fields", m.Status)
	}
	c := getConfig(t, f.ns, "worker-config")
	if ready := condition(c.Status.Conditions, nio.ConditionReady); ready == nil || ready.Status != metav1.ConditionTrue ||
		!strings.Contains(ready.Message, "main@sha1:"+first) {
		t.Errorf("Ready = %+v, want True naming main@sha1:%s", ready, first)
	}
	if condition(c.Status.Conditions, nio.ConditionReconciling) != nil || condition(c.Status.Conditions, nio.ConditionStalled) != nil {
		t.Errorf("Reconciling/Stalled present while ready: %v", c.Status.Conditions)
	}
	if c.Status.LatestCommit != first || c.Status.TargetMachine != "worker-01" || c.Status.CurrentOperation != nil {
		t.Errorf("status = %+v", c.Status)
	}
	host := f.op.fleet.Host("worker-01")
	if ops := host.Ops(); len(ops) != 1 || ops[0].Transport != nio.TransportAgent || ops[0].Target.FlakeAttr != "worker" ||
		ops[0].Files["version.txt"] != "1\n" || ops[0].Action != "switch" {
		t.Fatalf("host saw %+v, want one agent switch of .#worker with version 1", ops)
	}

	second := f.commit("2")
	f.waitApplied("worker-config", "worker-01", second)
	c = getConfig(t, f.ns, "worker-config")
	if len(c.Status.History) != 2 || c.Status.History[0].Commit != second || c.Status.History[1].Commit != first ||
		c.Status.History[0].Result != nio.ResultSucceeded || c.Status.History[0].Transport != nio.TransportAgent {
		t.Fatalf("history = %+v, want the second then the first commit, both succeeded", c.Status.History)
	}
	// Events are recorded asynchronously: the second may land after the status.
	eventually(t, 30*time.Second, "an Applied event with the revision per commit", func() error {
		var applied int
		for _, e := range eventsOf(t, f.ns, "worker-config") {
			if e.Reason == "Applied" && e.Type == corev1.EventTypeNormal && strings.Contains(e.Note, "main@sha1:") {
				applied++
			}
		}
		if applied < 2 {
			return fmt.Errorf("%d Applied events", applied)
		}
		return nil
	})
	m2 := f.op.metrics
	if n := testutil.ToFloat64(m2.Applies.WithLabelValues("Succeeded", "agent")); n != 2 {
		t.Errorf("nio_applies_total{Succeeded,agent} = %v, want 2", n)
	}
	if n := testutil.CollectAndCount(m2.ApplyDuration); n != 1 {
		t.Errorf("apply duration series = %d, want 1 (agent)", n)
	}
	if ts := testutil.ToFloat64(m2.LastApplied.WithLabelValues(f.ns, "worker-config")); ts < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last applied timestamp = %v", ts)
	}
	if n := testutil.CollectAndCount(m2.ReconcileDuration); n == 0 {
		t.Error("no reconcile durations recorded")
	}
	// Nothing new: no more applies however many polls pass.
	time.Sleep(3 * time.Second)
	if n := len(host.Ops()); n != 2 {
		t.Errorf("host saw %d applies, want 2 (one per commit)", n)
	}
}

package main

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// rollbackAnswers stands in for the operator: once the configuration carries a
// new rollback request, it records it handled with a Ready condition of reason.
func rollbackAnswers(t *testing.T, key client.ObjectKey, reason, msg string) {
	t.Helper()
	go func() {
		ctx := context.Background()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			var c nio.NixosConfiguration
			if env.Client.Get(ctx, key, &c) != nil {
				continue
			}
			v := c.Annotations[nio.RollbackAnnotation]
			if v == "" || v == c.Status.LastHandledRollbackAt || !c.Spec.Suspend {
				continue
			}
			c.Status.LastHandledRollbackAt = v
			c.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: metav1.ConditionFalse, Reason: reason, Message: msg, LastTransitionTime: metav1.Now()}}
			if env.Client.Status().Update(ctx, &c) == nil {
				return
			}
		}
	}()
}

// machineRunning is a Machine whose status names the configuration it runs.
func machineRunning(t *testing.T, ns, name, config string) {
	t.Helper()
	m := &nio.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: nio.MachineSpec{Hostname: name, IPAddress: "192.0.2.10"}}
	create(t, m)
	if config != "" {
		m.Status.AppliedConfiguration, m.Status.HasConfiguration = config, true
		updateStatus(t, m)
	}
}

func TestRollbackAsksThenSuspendsAnnotatesAndWaitsForTheVerdict(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "rollback")
	c := configuration(ns, "worker-config", "worker-01")
	create(t, c)
	machineRunning(t, ns, "worker-01", "worker-config")
	kc := []string{"--kubeconfig", env.Kubeconfig, "-n", ns}

	if r := nioWith(t, nil, "worker-config\n", append(kc, "rollback", "worker-01")...); r.code != exitCancelled {
		t.Fatalf("a wrong answer: exit %d, want %d", r.code, exitCancelled)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(c), c); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Annotations[nio.RollbackAnnotation]; ok || c.Spec.Suspend {
		t.Fatal("an unconfirmed rollback changed the configuration")
	}

	rollbackAnswers(t, client.ObjectKeyFromObject(c), reasonRolledBackByUser, "Machine worker-01 was rolled back on request to generation 41")
	r := nioWith(t, nil, "worker-01\n", append(kc, "rollback", "worker-01", "--to-generation", "41", "--wait", "--timeout", "30s")...)
	if r.code != 0 || !strings.Contains(r.stdout, "Rolled back: Machine worker-01 was rolled back on request to generation 41") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(c), c); err != nil {
		t.Fatal(err)
	}
	if v := c.Annotations[nio.RollbackAnnotation]; !strings.HasPrefix(v, "41@") || !c.Spec.Suspend {
		t.Fatalf("annotation %q, suspend %t; want 41@<time> and suspended", v, c.Spec.Suspend)
	}

	// Asked again (previous, --yes): a new request, and a refusal exits 5.
	rollbackAnswers(t, client.ObjectKeyFromObject(c), "RollbackNeedsAgent", "Rollback of Machine worker-01 not done: the agent is unreachable")
	time.Sleep(10 * time.Millisecond) // a new timestamp
	r = runNio(t, nil, append(kc, "rollback", "machine/worker-01", "--yes", "-w", "--timeout", "30s")...)
	if r.code != exitFailed || !strings.Contains(r.err, "RollbackNeedsAgent") {
		t.Fatalf("a refused rollback: exit %d, want %d\n%s%s", r.code, exitFailed, r.stdout, r.err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(c), c); err != nil {
		t.Fatal(err)
	}
	if v := c.Annotations[nio.RollbackAnnotation]; !strings.HasPrefix(v, "previous@") {
		t.Errorf("annotation %q, want previous@<time>", v)
	}

	if r := runNio(t, nil, append(kc, "rollback", "worker-01", "--to-generation", "0", "--yes")...); r.code != exitUsage {
		t.Errorf("--to-generation 0: exit %d, want %d", r.code, exitUsage)
	}
	machineRunning(t, ns, "idle", "")
	if r := runNio(t, nil, append(kc, "rollback", "idle", "--yes")...); r.code != exitNotFound {
		t.Errorf("a Machine without configuration: exit %d, want %d (%s)", r.code, exitNotFound, r.err)
	}
	if r := runNio(t, nil, append(kc, "rollback", "gone", "--yes")...); r.code != exitNotFound {
		t.Errorf("a missing Machine: exit %d, want %d (%s)", r.code, exitNotFound, r.err)
	}
}

// TestRollbackOfAFleetMachineWantsTheFleetPaused: a fleet's next rollout rewrites its
// configurations' spec (suspend too) and would re-apply what was rolled back, so the
// rollback is refused, nothing changed, until the fleet is paused.
func TestRollbackOfAFleetMachineWantsTheFleetPaused(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "rollback-fleet")
	f := &nio.NixosFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: nio.NixosFleetSpec{
		MachineSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "web"}},
		Template:        nio.FleetTemplate{Flake: ".#{hostname}", ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://git.example.org/configs.git"}}}}
	c := configuration(ns, "web-web-01", "web-01")
	c.Labels = map[string]string{nio.FleetLabel: "web"}
	create(t, f, c)
	machineRunning(t, ns, "web-01", "web-web-01")
	kc := []string{"--kubeconfig", env.Kubeconfig, "-n", ns}

	r := runNio(t, nil, append(kc, "rollback", "web-01", "--yes")...)
	if r.code != exitError || !strings.Contains(r.err, "nio suspend fleet/web") {
		t.Fatalf("rollback of a running fleet's Machine: exit %d, want %d naming the way out\n%s%s", r.code, exitError, r.stdout, r.err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(c), c); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Annotations[nio.RollbackAnnotation]; ok || c.Spec.Suspend {
		t.Fatal("a refused rollback changed the configuration")
	}

	if r := runNio(t, nil, append(kc, "suspend", "fleet/web")...); r.code != 0 {
		t.Fatalf("suspend fleet/web: exit %d %s", r.code, r.err)
	}
	if r := runNio(t, nil, append(kc, "rollback", "web-01", "--yes")...); r.code != 0 {
		t.Fatalf("rollback with the fleet paused: exit %d\n%s%s", r.code, r.stdout, r.err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(c), c); err != nil {
		t.Fatal(err)
	}
	if v := c.Annotations[nio.RollbackAnnotation]; !strings.HasPrefix(v, "previous@") || !c.Spec.Suspend {
		t.Fatalf("annotation %q, suspend %t", v, c.Spec.Suspend)
	}
}

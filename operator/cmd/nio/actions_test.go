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

// operatorAnswers stands in for the operator: once the configuration carries a new
// requestedAt, it records it handled with a Ready condition of status.
func operatorAnswers(t *testing.T, key client.ObjectKey, status metav1.ConditionStatus, msg string) {
	t.Helper()
	go func() {
		ctx := context.Background()
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			var c nio.NixosConfiguration
			if env.Client.Get(ctx, key, &c) != nil {
				continue
			}
			at := c.Annotations[nio.RequestedAtAnnotation]
			if at == "" {
				continue
			}
			c.Status.LastHandledRequestedAt = at
			c.Status.Conditions = []metav1.Condition{{Type: "Ready", Status: status, Reason: "Test", Message: msg, LastTransitionTime: metav1.Now()}}
			if env.Client.Status().Update(ctx, &c) == nil {
				return
			}
		}
	}()
}

func TestReconcileWaitExitsWithTheOutcome(t *testing.T) {
	ns := env.Namespace(t, "reconcile")
	create(t, configuration(ns, "ok", "m1"), configuration(ns, "bad", "m2"))
	operatorAnswers(t, client.ObjectKey{Namespace: ns, Name: "ok"}, metav1.ConditionTrue, "Applied revision main@sha1:3f2a9c41b7e0")
	r := runNio(t, nil, "--kubeconfig", env.Kubeconfig, "-n", ns, "reconcile", "ok", "--wait", "--timeout", "30s")
	if r.code != 0 || !strings.Contains(r.stdout, "Ready: Applied revision") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.err)
	}
	operatorAnswers(t, client.ObjectKey{Namespace: ns, Name: "bad"}, metav1.ConditionFalse, "build failed")
	r = runNio(t, nil, "--kubeconfig", env.Kubeconfig, "-n", ns, "reconcile", "nixosconfiguration/bad", "-w", "--timeout", "30s")
	if r.code != exitFailed || !strings.Contains(r.err, "build failed") {
		t.Fatalf("a failed pass: exit %d, want %d\n%s%s", r.code, exitFailed, r.stdout, r.err)
	}
	create(t, configuration(ns, "silent", "m3"))
	r = runNio(t, nil, "--kubeconfig", env.Kubeconfig, "-n", ns, "reconcile", "silent", "-w", "--timeout", "2s")
	if r.code != exitTimeout {
		t.Fatalf("no answer: exit %d, want %d\n%s", r.code, exitTimeout, r.err)
	}
	if r := runNio(t, nil, "--kubeconfig", env.Kubeconfig, "-n", ns, "reconcile", "missing"); r.code != exitNotFound {
		t.Fatalf("a missing object: exit %d, want %d (%s)", r.code, exitNotFound, r.err)
	}
}

func TestSuspendResumePromoteAndReinstallSetWhatTheOperatorReads(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "requests")
	c := configuration(ns, "worker-config", "worker-01")
	c.Spec.FullInstall = true
	create(t, c, configuration(ns, "plain", "worker-02"))
	f := &nio.NixosFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: nio.NixosFleetSpec{
		MachineSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "web"}},
		Template:        nio.FleetTemplate{Flake: ".#{hostname}", ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://git.example.org/configs.git"}}}}
	create(t, f)
	kc := []string{"--kubeconfig", env.Kubeconfig, "-n", ns}
	get := func(obj client.Object) {
		t.Helper()
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
			t.Fatal(err)
		}
	}

	if r := runNio(t, nil, append(kc, "suspend", "worker-config")...); r.code != 0 {
		t.Fatal(r.err)
	}
	get(c)
	if !c.Spec.Suspend {
		t.Fatal("suspend did not set spec.suspend")
	}
	if r := runNio(t, nil, append(kc, "resume", "worker-config")...); r.code != 0 {
		t.Fatal(r.err)
	}
	get(c)
	if c.Spec.Suspend {
		t.Fatal("resume did not clear spec.suspend")
	}
	if r := runNio(t, nil, append(kc, "suspend", "fleet/web")...); r.code != 0 {
		t.Fatal(r.err)
	}
	get(f)
	if !f.Spec.Paused {
		t.Fatal("suspend fleet/web did not set spec.paused")
	}
	if r := runNio(t, nil, append(kc, "fleet", "promote", "web")...); r.code != 0 {
		t.Fatal(r.err)
	}
	get(f)
	if f.Annotations[nio.PromoteAnnotation] == "" {
		t.Fatal("promote set no annotation")
	}

	// reinstall asks first: a wrong answer changes nothing.
	if r := nioWith(t, nil, "no\n", append(kc, "reinstall", "worker-config")...); r.code != exitCancelled {
		t.Fatalf("unconfirmed reinstall: exit %d, want %d", r.code, exitCancelled)
	}
	get(c)
	if _, ok := c.Annotations[nio.ReinstallAnnotation]; ok {
		t.Fatal("an unconfirmed reinstall set the annotation")
	}
	if r := nioWith(t, nil, "worker-config\n", append(kc, "reinstall", "worker-config")...); r.code != 0 {
		t.Fatalf("confirmed reinstall: exit %d: %s", r.code, r.err)
	}
	get(c)
	if c.Annotations[nio.ReinstallAnnotation] == "" {
		t.Fatal("a confirmed reinstall set no annotation")
	}
	if r := runNio(t, nil, append(kc, "reinstall", "plain", "--yes")...); r.code != exitUsage {
		t.Fatalf("reinstall without fullInstall: exit %d, want %d", r.code, exitUsage)
	}
}

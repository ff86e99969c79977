package controller

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/operator/internal/render"
)

// secretFile is the usage guide's secret additional file.
func secretFile(c *nio.NixosConfiguration) {
	c.Spec.AdditionalFiles = append(c.Spec.AdditionalFiles, nio.AdditionalFile{
		Path: "secrets/database-password", Mode: "0440", Owner: "postgres", Group: "postgres",
		Value: nio.AdditionalFileValue{SecretRef: &nio.SecretKeyReference{Name: "db-secret"}},
	})
}

func dbSecret(ns string, value []byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "db-secret", Namespace: ns}, Data: map[string][]byte{"password": value}}
}

// waitStalled waits for Stalled=True with reason, and returns its message.
func waitStalled(t *testing.T, ns, name, reason string) string {
	t.Helper()
	var msg string
	eventually(t, 20*time.Second, "Stalled "+reason, func() error {
		c := getConfig(t, ns, name)
		st := condition(c.Status.Conditions, nio.ConditionStalled)
		ready := condition(c.Status.Conditions, nio.ConditionReady)
		if st == nil || st.Status != metav1.ConditionTrue || st.Reason != reason || ready == nil || ready.Status != metav1.ConditionFalse {
			return fmt.Errorf("conditions %v", c.Status.Conditions)
		}
		msg = st.Message
		return nil
	})
	return msg
}

func TestSecretModeAndOwnerReachTheHostBesideTheSource(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	f.create(dbSecret(f.ns, []byte(dbPassword)))
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", secretFile))
	f.waitApplied("worker-config", "worker-01", first)
	op := fleet.Host("worker-01").Ops()[0]
	if s := op.Secrets; s == nil || len(s.Files) != 1 || s.Files[0].Mode != 0o440 || s.Files[0].Owner != "postgres" || s.Files[0].Group != "postgres" {
		t.Fatalf("secrets sent = %+v", op.Secrets)
	}
	if _, ok := op.Files["secrets/database-password"]; ok {
		t.Fatal("the secret is in the source")
	}
	assertNowhere(t, f.ns, dbPassword)
}

func TestSecretPathOfARepositoryFileStallsAndSendsNothing(t *testing.T) {
	f := newFixture(t)
	f.repo.CommitFiles(t, map[string]string{
		"flake.nix":                 "{ outputs = { self }: { }; }\n",
		"secrets/database-password": "placeholder committed by mistake\n",
	}, "a tracked file where the secret goes")
	fleet := hosttest.NewFleet()
	f.create(dbSecret(f.ns, []byte(dbPassword)))
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", secretFile))

	msg := waitStalled(t, f.ns, "worker-config", ReasonSecretPathConflict)
	if !strings.Contains(msg, `"secrets/database-password"`) || !strings.Contains(msg, "choose a path") {
		t.Errorf("message %q does not say which path and what to do", msg)
	}
	if src := condition(getConfig(t, f.ns, "worker-config").Status.Conditions, nio.ConditionSourceReady); src == nil || src.Reason != ReasonSecretPathConflict {
		t.Errorf("SourceReady = %+v", src)
	}
	if ops := fleet.Host("worker-01").Ops(); len(ops) != 0 {
		t.Errorf("the host got %d applies", len(ops))
	}
	assertNowhere(t, f.ns, dbPassword)
}

func TestOversizedSecretsStallBeforeAnythingIsSent(t *testing.T) {
	f := newFixture(t)
	f.commit("1")
	fleet := hosttest.NewFleet()
	// The API server caps one Secret at 1 MiB; five of 900 KiB exceed the 4 MiB all
	// of a configuration's secrets may have.
	var files []nio.AdditionalFile
	for i := range 5 {
		name := fmt.Sprintf("blob-%d", i)
		f.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: f.ns},
			Data: map[string][]byte{"v": bytes.Repeat([]byte("Z"), 900<<10)}})
		files = append(files, nio.AdditionalFile{Path: "secrets/" + name, Value: nio.AdditionalFileValue{SecretRef: &nio.SecretKeyReference{Name: name}}})
	}
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) { c.Spec.AdditionalFiles = files }))

	msg := waitStalled(t, f.ns, "worker-config", ReasonSecretTooLarge)
	if !strings.Contains(msg, fmt.Sprint(render.MaxSecretsBytes)) || strings.Contains(msg, "ZZZZ") {
		t.Errorf("message %q", msg)
	}
	if ops := fleet.Host("worker-01").Ops(); len(ops) != 0 {
		t.Errorf("the host got %d applies", len(ops))
	}
}

// A Secret deleted after an apply (mid-rollout: before the next commit reaches the
// host) stalls the configuration: the host keeps what it runs, nothing half-sent,
// and the status still names the commit that did switch. Re-creating it resumes.
func TestSecretThatDisappearsStallsAndTheHostKeepsWhatItRuns(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	fleet := hosttest.NewFleet()
	f.create(dbSecret(f.ns, []byte(dbPassword)))
	f.op = startOperator(t, f.ns, fleet, nil)
	f.create(f.config("worker-config", "worker-01", secretFile))
	f.waitApplied("worker-config", "worker-01", first)

	ctx := context.Background()
	if err := env.Client.Delete(ctx, dbSecret(f.ns, nil)); err != nil {
		t.Fatal(err)
	}
	second := f.commit("2")
	msg := waitStalled(t, f.ns, "worker-config", ReasonInvalidConfig)
	if !strings.Contains(msg, "db-secret") || !strings.Contains(msg, "not found") {
		t.Errorf("message %q", msg)
	}
	c := getConfig(t, f.ns, "worker-config")
	if c.Status.AppliedCommit != first || len(fleet.Host("worker-01").Ops()) != 1 {
		t.Errorf("applied %s with %d applies, want the first commit only", c.Status.AppliedCommit, len(fleet.Host("worker-01").Ops()))
	}

	f.create(dbSecret(f.ns, []byte(dbPassword)))
	f.waitApplied("worker-config", "worker-01", second)
	assertNowhere(t, f.ns, dbPassword)
}

package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestPinnedCommitOfAPrivateRepoDoesNotLeakToAnotherNamespace: namespace A reaches
// a private repository with a token and applies a pinned commit; namespace B names
// the same URL and commit without credentials. B must be told
// AuthenticationFailed and its host must never receive the tree, although the
// operator already holds A's rendered archive of that commit.
func TestPinnedCommitOfAPrivateRepoDoesNotLeakToAnotherNamespace(t *testing.T) {
	a := newFixture(t)
	commit := a.commit("private")
	nsB := newNamespace(t)
	fleet := hosttest.NewFleet()
	a.op = startOperatorIn(t, []string{a.ns, nsB}, fleet, nil)
	a.create(a.config("worker-config", "worker-01", func(c *nio.NixosConfiguration) { c.Spec.Ref = commit }))
	a.waitApplied("worker-config", "worker-01", commit)

	ctx := context.Background()
	mB := a.machine("worker-b")
	mB.Namespace = nsB
	for _, obj := range []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "worker-ssh-key", Namespace: nsB},
			Data: map[string][]byte{"ssh-privatekey": []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n")}},
		mB,
	} {
		if err := env.Client.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	cB := a.config("worker-config", "worker-b", func(c *nio.NixosConfiguration) {
		c.Namespace = nsB
		c.Spec.Ref = commit
		c.Spec.CredentialsRef = nil
	})
	if err := env.Client.Create(ctx, cB); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "B stalled on authentication", func() error {
		c := getConfig(t, nsB, "worker-config")
		src := condition(c.Status.Conditions, nio.ConditionSourceReady)
		ready := condition(c.Status.Conditions, nio.ConditionReady)
		if src == nil || src.Status != metav1.ConditionFalse || src.Reason != ReasonAuthFailed ||
			ready == nil || ready.Reason != ReasonAuthFailed {
			return errorf("SourceReady %+v, Ready %+v", src, ready)
		}
		return nil
	})
	// A few more polls (interval 1s) must not change that.
	time.Sleep(3 * time.Second)
	c := getConfig(t, nsB, "worker-config")
	if c.Status.AppliedCommit != "" || c.Status.LatestCommit != "" {
		t.Errorf("B's status names the private commit: applied %q, latest %q", c.Status.AppliedCommit, c.Status.LatestCommit)
	}
	if src := condition(c.Status.Conditions, nio.ConditionSourceReady); src == nil || strings.Contains(src.Message, "Rendered") {
		t.Errorf("B's SourceReady = %+v", src)
	}
	if ops := fleet.Host("worker-b").Ops(); len(ops) != 0 {
		t.Fatalf("B's host received %d applies of the private tree (%v)", len(ops), ops[0].Files)
	}
	if n := len(fleet.Host("worker-01").Ops()); n != 1 {
		t.Errorf("A's host saw %d applies, want 1", n)
	}
}

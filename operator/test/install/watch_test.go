package install

import (
	"context"
	"path/filepath"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestWatchNamespacesScopesTheOperator: with --watch-namespaces the operator's
// ClusterRole is bound only in those namespaces (it can't read Secrets elsewhere)
// and the operator is told to watch only them; a run without it goes back to the
// cluster-wide binding and removes the per-namespace ones.
func TestWatchNamespacesScopesTheOperator(t *testing.T) {
	t.Run("dry run", func(t *testing.T) {
		objs := decodeManifests(t, mustSucceed(t, noClusterEnv(t), "--dry-run", "--watch-namespaces", "team-a,team-b").stdout)
		if find(objs, "ClusterRoleBinding", "nio-operator") != nil {
			t.Error("--watch-namespaces still binds the ClusterRole cluster-wide")
		}
		for _, ns := range []string{"team-a", "team-b"} {
			var bound bool
			for _, o := range objs {
				bound = bound || o.GetKind() == "RoleBinding" && o.GetNamespace() == ns && o.GetName() == "nio-operator-watch"
			}
			if !bound {
				t.Errorf("no RoleBinding in %s", ns)
			}
		}
		dep := convert[appsv1.Deployment](t, find(objs, "Deployment", "nio-operator"))
		if v, ok := argValue(dep.Spec.Template.Spec.Containers[0].Args, "watch-namespaces"); !ok || v != "team-a,team-b" {
			t.Errorf("operator args %v, want --watch-namespaces=team-a,team-b", dep.Spec.Template.Spec.Containers[0].Args)
		}
		mustFail(t, 2, "is not a namespace name", noClusterEnv(t), "--dry-run", "--watch-namespaces", "team-a,$(reboot)")
	})

	ctx := context.Background()
	resetCluster(t)
	t.Cleanup(func() {
		resetCluster(t)
		kubectl(t, "apply", "--server-side", "-f", filepath.Join(env.Root, "operator", "config", "crd", "bases"))
		kubectl(t, append([]string{"wait", "--for=condition=Established", "crd"}, crdNames...)...)
	})
	managed, other := tenantNamespace(t, "managed"), tenantNamespace(t, "other")
	for _, ns := range []string{managed, other} {
		if err := env.Client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "git-credentials"}, Data: map[string][]byte{"token": []byte("x")}}); err != nil {
			t.Fatal(err)
		}
	}
	mustSucceed(t, clusterEnv(), "--no-deployment", "--watch-namespaces", managed)
	op := asOperator(t)
	if err := op.Get(ctx, client.ObjectKey{Namespace: managed, Name: "git-credentials"}, &corev1.Secret{}); err != nil {
		t.Errorf("operator can't read a Secret of its namespace %s: %v", managed, err)
	}
	if err := op.Get(ctx, client.ObjectKey{Namespace: other, Name: "git-credentials"}, &corev1.Secret{}); !apierrors.IsForbidden(err) {
		t.Errorf("operator reading a Secret of unmanaged %s: %v, want forbidden", other, err)
	}
	// Its own namespace is not managed: the Role alone lets it watch the webhook Secret.
	checkWebhookSecretAccess(t, op)

	// Back to cluster-wide.
	mustSucceed(t, clusterEnv(), "--no-deployment")
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "nio-operator"}, &rbacv1.ClusterRoleBinding{}); err != nil {
		t.Errorf("ClusterRoleBinding not back: %v", err)
	}
	err := env.Client.Get(ctx, client.ObjectKey{Namespace: managed, Name: "nio-operator-watch"}, &rbacv1.RoleBinding{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("the per-namespace binding stayed: %v", err)
	}
	if err := op.Get(ctx, client.ObjectKey{Namespace: other, Name: "git-credentials"}, &corev1.Secret{}); err != nil {
		t.Errorf("cluster-wide operator can't read %s's Secret: %v", other, err)
	}
}

package install

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

var crdNames = []string{"machines.nio.homystack.com", "nixosconfigurations.nio.homystack.com", "nixosfleets.nio.homystack.com"}

// kubectl runs the control plane's kubectl as an administrator.
func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(env.Kubectl(), append([]string{"--kubeconfig", env.Kubeconfig}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// object reads the cluster's copy of a manifest's object; nil when it does not exist.
func object(t *testing.T, o *unstructured.Unstructured) *unstructured.Unstructured {
	t.Helper()
	got := &unstructured.Unstructured{}
	got.SetGroupVersionKind(o.GroupVersionKind())
	err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(o), got)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		t.Fatalf("get %s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return got
}

// resourceVersions maps "Kind/namespace/name" of the manifests' objects to their
// resourceVersion in the cluster.
func resourceVersions(t *testing.T, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	rv := map[string]string{}
	for _, o := range objs {
		got := object(t, o)
		if got == nil {
			t.Fatalf("%s %s/%s is not installed", o.GetKind(), o.GetNamespace(), o.GetName())
		}
		rv[o.GetKind()+"/"+o.GetNamespace()+"/"+o.GetName()] = got.GetResourceVersion()
	}
	return rv
}

// crd reads a CustomResourceDefinition (the client's scheme has no apiextensions
// types); nil when it does not exist.
func crd(t *testing.T, name string) *apiextensionsv1.CustomResourceDefinition {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
	u.SetName(name)
	got := object(t, u)
	if got == nil {
		return nil
	}
	return convert[apiextensionsv1.CustomResourceDefinition](t, got)
}

// gone says whether an object no longer exists, or is on its way out (a namespace
// stays Terminating here: no controller-manager runs to empty it).
func gone(t *testing.T, o *unstructured.Unstructured) bool {
	t.Helper()
	got := object(t, o)
	return got == nil || got.GetDeletionTimestamp() != nil
}

// resetCluster removes what install.sh installed, the way a full cluster would end its
// uninstall: the namespace controller, which does not run here, would empty the
// operator's namespace and let it go; this does the same for the kinds the operator
// leaves there. The CRDs go too.
func resetCluster(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{}
	err := env.Client.Get(ctx, client.ObjectKey{Name: operatorNamespace}, ns)
	if err == nil {
		in := client.InNamespace(operatorNamespace)
		for _, o := range []client.Object{&corev1.Secret{}, &coordinationv1.Lease{}, &corev1.ConfigMap{}, &corev1.Event{}} {
			if err := env.Client.DeleteAllOf(ctx, o, in); err != nil {
				t.Fatalf("empty %s: %v", operatorNamespace, err)
			}
		}
		if ns.DeletionTimestamp == nil {
			if err := env.Client.Delete(ctx, ns); err != nil {
				t.Fatal(err)
			}
		}
		cs, err := kubernetes.NewForConfig(env.Config)
		if err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Get(ctx, client.ObjectKey{Name: operatorNamespace}, ns); err != nil {
			t.Fatal(err)
		}
		ns.Spec.Finalizers = nil
		if _, err := cs.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatalf("finalize namespace %s: %v", operatorNamespace, err)
		}
	} else if !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	kubectl(t, append([]string{"delete", "--ignore-not-found", "--wait=true", "crd"}, crdNames...)...)
}

var tenantCounter atomic.Int32

// tenantNamespace creates a namespace of users' objects for one test.
func tenantNamespace(t *testing.T, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d", prefix, tenantCounter.Add(1))
	if err := env.Client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestInstallUpgradeUninstall walks install.sh's life on a cluster that has never
// seen NIO: install for an out-of-cluster operator, upgrade to the in-cluster one,
// re-run (nothing changes), and uninstall — refused while it would delete users'
// objects, then keeping the CRDs, then everything.
func TestInstallUpgradeUninstall(t *testing.T) {
	ctx := context.Background()
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	// A cluster that has never seen NIO: testenv installed the CRDs, install.sh must
	// install them itself. Afterwards the other tests get the CRDs back.
	resetCluster(t)
	t.Cleanup(func() {
		resetCluster(t)
		kubectl(t, "apply", "--server-side", "-f", filepath.Join(env.Root, "operator", "config", "crd", "bases"))
		kubectl(t, append([]string{"wait", "--for=condition=Established", "crd"}, crdNames...)...)
	})

	const image = "registry.example.com:5000/nio/operator:v0.1.0"
	upgradeArgs := []string{"--webhook", "--image", image}
	manifests := decodeManifests(t, mustSucceed(t, noClusterEnv(t), append([]string{"--dry-run"}, upgradeArgs...)...).stdout)

	step("installs everything but the Deployment for an out-of-cluster operator", func(t *testing.T) {
		// --kubeconfig instead of KUBECONFIG: the flag reaches every kubectl call.
		r := mustSucceed(t, []string{"PATH=" + os.Getenv("PATH"), "KUBECTL=" + env.Kubectl()},
			"--kubeconfig", env.Kubeconfig, "--no-deployment")
		if !strings.Contains(r.stdout, "kubectl -n "+operatorNamespace+" create token "+operatorSA) {
			t.Errorf("the output does not say how to run the operator out of cluster:\n%s", r.stdout)
		}
		for _, o := range manifests {
			installed := object(t, o) != nil
			inCluster := o.GetKind() == "Deployment" || o.GetKind() == "Service"
			if installed == inCluster {
				t.Errorf("%s %s: installed=%v with --no-deployment", o.GetKind(), o.GetName(), installed)
			}
		}
		for _, name := range crdNames {
			c := crd(t, name)
			if c == nil {
				t.Fatalf("CRD %s is not installed", name)
			}
			established := false
			for _, c := range c.Status.Conditions {
				established = established || (c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue)
			}
			if !established {
				t.Errorf("CRD %s is not Established when install.sh returns", name)
			}
		}
	})

	step("upgrades to the in-cluster operator with the webhook receiver", func(t *testing.T) {
		r := mustSucceed(t, clusterEnv(), upgradeArgs...)
		var dep appsv1.Deployment
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "nio-operator"}, &dep); err != nil {
			t.Fatal(err)
		}
		checkDeployment(t, &dep, image, true)
		var s corev1.Secret
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "nio-webhook"}, &s); err != nil {
			t.Fatalf("--webhook did not create the Secret nio-webhook: %v", err)
		}
		token := string(s.Data["token"])
		if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(token) {
			t.Errorf("webhook token %d bytes, want 64 hex digits", len(token))
		}
		if strings.Contains(r.stdout+r.stderr, token) {
			t.Error("install.sh printed the webhook token")
		}
		for _, o := range manifests {
			if object(t, o) == nil {
				t.Errorf("%s %s is not installed", o.GetKind(), o.GetName())
			}
		}
	})

	step("a second run changes nothing", func(t *testing.T) {
		webhookSecret := &unstructured.Unstructured{}
		webhookSecret.SetAPIVersion("v1")
		webhookSecret.SetKind("Secret")
		webhookSecret.SetNamespace(operatorNamespace)
		webhookSecret.SetName("nio-webhook")
		objs := append(append([]*unstructured.Unstructured{}, manifests...), webhookSecret)
		before := resourceVersions(t, objs)
		r := mustSucceed(t, clusterEnv(), upgradeArgs...)
		after := resourceVersions(t, objs)
		for key, rv := range before {
			if after[key] != rv {
				t.Errorf("%s changed on the second run (resourceVersion %s → %s)", key, rv, after[key])
			}
		}
		if !strings.Contains(r.stdout, "secret/nio-webhook exists: kept") {
			t.Errorf("the second run did not keep the webhook Secret:\n%s", r.stdout)
		}
	})

	step("without --webhook the receiver is turned off, its Secret kept", func(t *testing.T) {
		mustSucceed(t, clusterEnv(), "--image", image)
		var dep appsv1.Deployment
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "nio-operator"}, &dep); err != nil {
			t.Fatal(err)
		}
		checkDeployment(t, &dep, image, false)
		if o := find(manifests, "Service", "nio-operator-webhook"); !gone(t, o) {
			t.Error("the webhook Service is still installed")
		}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "nio-webhook"}, &corev1.Secret{}); err != nil {
			t.Errorf("the webhook Secret was not kept: %v", err)
		}
	})

	step("--no-deployment after a full install leaves no operator in the cluster", func(t *testing.T) {
		mustSucceed(t, clusterEnv(), "--no-deployment")
		for _, o := range manifests {
			inCluster := o.GetKind() == "Deployment" || o.GetKind() == "Service"
			if gone(t, o) != inCluster {
				t.Errorf("%s %s: removed=%v after --no-deployment", o.GetKind(), o.GetName(), !inCluster)
			}
		}
		mustSucceed(t, clusterEnv(), upgradeArgs...)
	})

	step("the operator's pod meets the namespace's restricted Pod Security level", func(t *testing.T) {
		var dep appsv1.Deployment
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "nio-operator"}, &dep); err != nil {
			t.Fatal(err)
		}
		pod := func() *corev1.Pod {
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: "psa-check"},
				Spec: *dep.Spec.Template.Spec.DeepCopy()}
		}
		if err := env.Client.Create(ctx, pod(), client.DryRunAll); err != nil {
			t.Errorf("the operator's pod is refused in its namespace: %v", err)
		}
		// The control: the admission check is live, so the line above can fail.
		hostNetwork := pod()
		hostNetwork.Spec.HostNetwork = true
		if err := env.Client.Create(ctx, hostNetwork, client.DryRunAll); !apierrors.IsForbidden(err) {
			t.Errorf("a pod on the host's network is not refused in %s (got %v): Pod Security is not enforced", operatorNamespace, err)
		}
	})

	step("the ServiceAccount's RBAC is enough and no more", checkOperatorRBAC)

	var tenant string
	step("uninstall refuses to delete users' Machines and NixosConfigurations", func(t *testing.T) {
		tenant = tenantNamespace(t, "users")
		conf := &nio.NixosConfiguration{
			ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "worker-config", Finalizers: []string{nio.Finalizer}},
			Spec: nio.NixosConfigurationSpec{Flake: ".#worker", MachineRef: nio.LocalObjectReference{Name: "worker-01"},
				ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://example.com/nixos-configs.git"}},
		}
		for _, o := range []client.Object{validMachine(tenant, "worker-01"), conf} {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		r := mustFail(t, 1, "Re-run with --yes", clusterEnv(), "--uninstall")
		if !strings.Contains(r.stderr, "Machine(s)") || !strings.Contains(r.stderr, "Nothing was removed") {
			t.Errorf("the refusal does not say what is at stake: %s", r.stderr)
		}
		for _, o := range manifests {
			if gone(t, o) {
				t.Errorf("a refused uninstall removed %s %s", o.GetKind(), o.GetName())
			}
		}
	})

	step("uninstall --keep-crds removes the operator and keeps the CRDs and users' objects", func(t *testing.T) {
		mustSucceed(t, clusterEnv(), "--uninstall", "--keep-crds")
		for _, o := range manifests {
			isCRD := o.GetKind() == "CustomResourceDefinition"
			if gone(t, o) == isCRD {
				t.Errorf("%s %s: removed=%v after --uninstall --keep-crds", o.GetKind(), o.GetName(), !isCRD)
			}
		}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: tenant, Name: "worker-01"}, &nio.Machine{}); err != nil {
			t.Errorf("the Machine did not survive --keep-crds: %v", err)
		}
	})

	step("uninstall --yes removes the CRDs last, and with them users' objects", func(t *testing.T) {
		r := mustSucceed(t, clusterEnv(), "--uninstall", "--yes")
		if !strings.Contains(r.stdout, "nixosconfiguration "+tenant+"/worker-config: finalizer released") {
			t.Errorf("the finalizer nobody would remove was not released:\n%s", r.stdout)
		}
		for _, o := range manifests {
			if !gone(t, o) {
				t.Errorf("%s %s survived --uninstall --yes", o.GetKind(), o.GetName())
			}
		}
		for _, name := range crdNames {
			if crd(t, name) != nil {
				t.Errorf("CRD %s still exists", name)
			}
		}
	})

	step("uninstalling again finds nothing to do and succeeds", func(t *testing.T) {
		mustSucceed(t, clusterEnv(), "--uninstall")
	})
}

package install

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestDryRunPrintsTheManifestsWithoutACluster: --dry-run needs kubectl but no cluster
// (KUBECONFIG points nowhere), and prints every object install.sh installs.
func TestDryRunPrintsTheManifestsWithoutACluster(t *testing.T) {
	r := mustSucceed(t, noClusterEnv(t), "--dry-run")
	objs := decodeManifests(t, r.stdout)
	var got []string
	for _, o := range objs {
		got = append(got, o.GetKind()+"/"+o.GetName())
	}
	want := []string{
		"Namespace/" + operatorNamespace,
		"CustomResourceDefinition/machines.nio.homystack.com",
		"CustomResourceDefinition/nixosconfigurations.nio.homystack.com",
		"CustomResourceDefinition/nixosfleets.nio.homystack.com",
		"ServiceAccount/" + operatorSA,
		"Role/nio-operator",
		"ClusterRole/nio-operator",
		"RoleBinding/nio-operator",
		"ClusterRoleBinding/nio-operator",
		"ClusterRoleBinding/nio-operator-auth-delegator",
		"Service/nio-operator-metrics",
		"Service/nio-operator-logs",
		"Role/nio-logs-proxy",
		"RoleBinding/nio-logs-proxy",
		"Deployment/nio-operator",
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("dry run printed %v, want %v", got, want)
	}
	for _, o := range objs {
		if o.GetLabels()["app.kubernetes.io/part-of"] != "nio" {
			t.Errorf("%s/%s lacks app.kubernetes.io/part-of=nio", o.GetKind(), o.GetName())
		}
		if ns := o.GetNamespace(); ns != "" && ns != operatorNamespace {
			t.Errorf("%s/%s is in namespace %q", o.GetKind(), o.GetName(), ns)
		}
	}
	checkDeployment(t, convert[appsv1.Deployment](t, find(objs, "Deployment", "nio-operator")), defaultImage, false)
	checkBindings(t, objs)
	checkNoWildcards(t, objs)
}

// checkBindings: both bindings give the roles of the same name to the operator's
// ServiceAccount, and to nothing else.
func checkBindings(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, kind := range []string{"ClusterRoleBinding", "RoleBinding"} {
		o := find(objs, kind, "nio-operator")
		if o == nil {
			t.Errorf("no %s nio-operator", kind)
			continue
		}
		b := convert[rbacv1.RoleBinding](t, o)
		wantRole := strings.TrimSuffix(kind, "Binding")
		if b.RoleRef.Kind != wantRole || b.RoleRef.Name != "nio-operator" {
			t.Errorf("%s refers to %s/%s, want %s/nio-operator", kind, b.RoleRef.Kind, b.RoleRef.Name, wantRole)
		}
		want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: operatorSA, Namespace: operatorNamespace}}
		if !slices.Equal(b.Subjects, want) {
			t.Errorf("%s subjects %+v, want %+v", kind, b.Subjects, want)
		}
	}
}

// checkNoWildcards: the roles name every group, resource and verb, and grant nothing
// that hands out more rights (bind, escalate, impersonate) or reaches non-resource URLs.
func checkNoWildcards(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, kind := range []string{"ClusterRole", "Role"} {
		o := find(objs, kind, "nio-operator")
		if o == nil {
			t.Errorf("no %s nio-operator (operator/config/rbac/role.yaml: run make generate)", kind)
			continue
		}
		role := convert[rbacv1.Role](t, o)
		if len(role.Rules) == 0 {
			t.Errorf("%s nio-operator has no rules", kind)
		}
		for _, r := range role.Rules {
			for _, v := range slices.Concat(r.APIGroups, r.Resources, r.Verbs, r.ResourceNames) {
				if strings.Contains(v, "*") {
					t.Errorf("%s rule %+v has a wildcard", kind, r)
				}
			}
			for _, v := range r.Verbs {
				if v == "bind" || v == "escalate" || v == "impersonate" {
					t.Errorf("%s rule %+v grants %s", kind, r, v)
				}
			}
			if len(r.NonResourceURLs) != 0 {
				t.Errorf("%s rule %+v reaches non-resource URLs", kind, r)
			}
			if slices.Contains(r.APIGroups, "rbac.authorization.k8s.io") {
				t.Errorf("%s rule %+v touches RBAC", kind, r)
			}
		}
	}
}

// TestDryRunOptions: --no-deployment leaves out the operator's Deployment and Services
// and keeps everything it runs with elsewhere; --webhook adds the receiver and its
// Service; --image and NIO_IMAGE set the image of every container, the flag winning.
func TestDryRunOptions(t *testing.T) {
	t.Run("no deployment", func(t *testing.T) {
		objs := decodeManifests(t, mustSucceed(t, noClusterEnv(t), "--dry-run", "--no-deployment").stdout)
		for _, gone := range [][2]string{{"Deployment", "nio-operator"}, {"Service", "nio-operator-metrics"}, {"Service", "nio-operator-logs"}} {
			if find(objs, gone[0], gone[1]) != nil {
				t.Errorf("--no-deployment still installs %s/%s", gone[0], gone[1])
			}
		}
		for _, kept := range [][2]string{{"Namespace", operatorNamespace}, {"ServiceAccount", operatorSA},
			{"ClusterRoleBinding", "nio-operator"}, {"RoleBinding", "nio-operator"},
			{"CustomResourceDefinition", "machines.nio.homystack.com"}} {
			if find(objs, kept[0], kept[1]) == nil {
				t.Errorf("--no-deployment lost %s/%s", kept[0], kept[1])
			}
		}
	})
	t.Run("webhook", func(t *testing.T) {
		objs := decodeManifests(t, mustSucceed(t, noClusterEnv(t), "--dry-run", "--webhook").stdout)
		checkDeployment(t, convert[appsv1.Deployment](t, find(objs, "Deployment", "nio-operator")), defaultImage, true)
		svc := find(objs, "Service", "nio-operator-webhook")
		if svc == nil {
			t.Fatal("--webhook installs no Service nio-operator-webhook")
		}
		s := convert[corev1.Service](t, svc)
		if len(s.Spec.Ports) != 1 || s.Spec.Ports[0].Port != 9292 || s.Spec.Ports[0].TargetPort.StrVal != "webhook" ||
			s.Spec.Selector["app"] != "nixos-operator" {
			t.Errorf("webhook Service %+v: want port 9292 to the operator's port webhook", s.Spec)
		}
	})
	t.Run("webhook without deployment", func(t *testing.T) {
		mustFail(t, 2, "--webhook needs the Deployment", noClusterEnv(t), "--dry-run", "--webhook", "--no-deployment")
	})
	for _, tc := range []struct {
		name, flag, envImage, want string
	}{
		{"flag", "registry.example.com:5000/team/nio-operator:v0.1.0", "", "registry.example.com:5000/team/nio-operator:v0.1.0"},
		{"env", "", "nio-operator:dev", "nio-operator:dev"},
		{"flag wins over env", "nio-operator:flag", "nio-operator:env", "nio-operator:flag"},
		{"no tag keeps latest", "localhost:5000/nio", "", "localhost:5000/nio:latest"},
		{"digest", "ghcr.io/homystack/nio-operator@sha256:" + strings.Repeat("ab", 32), "",
			"ghcr.io/homystack/nio-operator@sha256:" + strings.Repeat("ab", 32)},
		{"tag and digest", "ghcr.io/x/y:v1@sha256:" + strings.Repeat("0f", 32), "", "ghcr.io/x/y:v1@sha256:" + strings.Repeat("0f", 32)},
	} {
		t.Run("image "+tc.name, func(t *testing.T) {
			var extra []string
			if tc.envImage != "" {
				extra = append(extra, "NIO_IMAGE="+tc.envImage)
			}
			args := []string{"--dry-run"}
			if tc.flag != "" {
				args = append(args, "--image", tc.flag)
			}
			objs := decodeManifests(t, mustSucceed(t, noClusterEnv(t, extra...), args...).stdout)
			checkDeployment(t, convert[appsv1.Deployment](t, find(objs, "Deployment", "nio-operator")), tc.want, false)
		})
	}
}

// TestImageReferenceIsValidated: --image lands in a kustomization, so anything but an
// image reference is refused before kubectl runs, and nothing is printed.
func TestImageReferenceIsValidated(t *testing.T) {
	for _, ref := range []string{
		"UPPER/case",
		"Nio",
		"nio operator",
		"nio\nkind: Secret",
		"nio:bad tag",
		"nio:'quoted'",
		"nio@sha256:xyz",
		"nio@md5:" + strings.Repeat("a", 32),
		"-rf",
		"nio:" + strings.Repeat("a", 129),
		"a//b",
		"host:99999999/nio",
		"nio'\n  newTag: evil",
	} {
		t.Run(fmt.Sprintf("%q", ref), func(t *testing.T) {
			r := mustFail(t, 1, "--image", noClusterEnv(t), "--dry-run", "--image", ref)
			if r.stdout != "" {
				t.Errorf("refused image still printed manifests:\n%s", r.stdout)
			}
		})
	}
}

// TestArguments: --help documents the options; unknown or contradictory arguments are
// usage errors (exit 2) that say what is wrong.
func TestArguments(t *testing.T) {
	r := mustSucceed(t, noClusterEnv(t), "--help")
	for _, opt := range []string{"--image", "--webhook", "--no-deployment", "--dry-run", "--uninstall", "--yes",
		"--keep-crds", "--kubeconfig", "--context", "KUBECTL", "NIO_IMAGE"} {
		if !strings.Contains(r.stdout, opt) {
			t.Errorf("--help does not mention %s", opt)
		}
	}
	mustFail(t, 2, "unknown argument: --frobnicate", noClusterEnv(t), "--frobnicate")
	mustFail(t, 2, "--image needs a value", noClusterEnv(t), "--image")
	mustFail(t, 2, "--image needs a value", noClusterEnv(t), "--image", "")
	mustFail(t, 2, "--image needs a value", noClusterEnv(t), "--image=")
	mustFail(t, 2, "exclude each other", noClusterEnv(t), "--dry-run", "--uninstall")
	mustFail(t, 2, "go with --uninstall", noClusterEnv(t), "--yes")
}

// TestMissingKubectl: without kubectl, whether KUBECTL names a missing file or kubectl
// is not on PATH, install.sh says so and what to do.
func TestMissingKubectl(t *testing.T) {
	mustFail(t, 1, "kubectl not found", []string{"PATH=" + os.Getenv("PATH"), "KUBECTL=/nonexistent/kubectl"})

	// A PATH with what install.sh needs before it looks for kubectl, and no kubectl.
	bin := t.TempDir()
	for _, tool := range []string{"bash", "dirname"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	r := mustFail(t, 1, "kubectl not found", []string{"PATH=" + bin})
	if !strings.Contains(r.stderr, "KUBECTL=") {
		t.Errorf("the error does not say how to point at a kubectl: %s", r.stderr)
	}
}

// TestUnreachableCluster: a kubeconfig whose API server does not answer gives a clear
// error naming the context, with kubectl's reason, for install and uninstall alike.
func TestUnreachableCluster(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	err = os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: gone
  cluster:
    server: https://%s
    insecure-skip-tls-verify: true
users:
- name: someone
  user:
    token: not-a-real-token
contexts:
- name: gone-context
  context: {cluster: gone, user: someone}
- name: other-context
  context: {cluster: gone, user: someone}
current-context: gone-context
`, addr)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	environ := []string{"PATH=" + os.Getenv("PATH"), "KUBECTL=" + env.Kubectl()}
	for _, args := range [][]string{{"--kubeconfig", kubeconfig}, {"--kubeconfig", kubeconfig, "--uninstall"}} {
		r := mustFail(t, 1, "no cluster reachable with kubectl context 'gone-context'", environ, args...)
		if !strings.Contains(r.stderr, addr+" was refused") {
			t.Errorf("the error does not carry kubectl's reason: %s", r.stderr)
		}
		if strings.Contains(r.stderr, "not-a-real-token") {
			t.Errorf("the error shows the kubeconfig's token: %s", r.stderr)
		}
	}
	mustFail(t, 1, "no cluster reachable with kubectl context 'other-context'", environ,
		"--kubeconfig", kubeconfig, "--context", "other-context")
}

package install

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// asOperator is a client that acts as the operator's ServiceAccount, through
// impersonation: what it may do is exactly what the installed bindings grant.
func asOperator(t *testing.T) client.WithWatch {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + operatorNamespace + ":" + operatorSA,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + operatorNamespace, "system:authenticated"},
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkWebhookSecretAccess checks that the operator can list and watch its webhook
// Secret by name in its namespace — what its Secret cache does — and that this is
// all: not the namespace's other Secrets, and no list without the name.
func checkWebhookSecretAccess(t *testing.T, op client.WithWatch) {
	t.Helper()
	ctx := context.Background()
	byName := client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", "nio-webhook")}
	home := client.InNamespace(operatorNamespace)
	if err := op.List(ctx, &corev1.SecretList{}, home, byName); err != nil {
		t.Errorf("the operator cannot list its webhook Secret by name: %v", err)
	}
	w, err := op.Watch(ctx, &corev1.SecretList{}, home, byName)
	if err != nil {
		t.Errorf("the operator cannot watch its webhook Secret by name: %v", err)
	} else {
		w.Stop()
	}
	if err := op.List(ctx, &corev1.SecretList{}, home); !apierrors.IsForbidden(err) {
		t.Errorf("the operator may list every Secret of %s (want Forbidden, got %v)", operatorNamespace, err)
	}
	other := client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("metadata.name", "some-app-secret")}
	if err := op.List(ctx, &corev1.SecretList{}, home, other); !apierrors.IsForbidden(err) {
		t.Errorf("the operator may list another Secret of %s by name (want Forbidden, got %v)", operatorNamespace, err)
	}
}

func validMachine(namespace, name string) *nio.Machine {
	return &nio.Machine{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: nio.MachineSpec{
			Hostname:        name,
			IPAddress:       "192.168.1.100",
			SSHKeySecretRef: &nio.SSHKeySecretReference{Name: "worker-ssh-key"},
		},
	}
}

// checkOperatorRBAC checks, as the installed ServiceAccount, that the operator can do
// its job — read Machines, configurations, fleets and Secrets everywhere, write
// statuses, facts and events, create and delete the configurations of fleets, keep
// its CA and lease at home — and nothing around it: no Secrets written elsewhere, no
// Machines deleted or re-specified, no fleets written, no workloads, no RBAC.
func checkOperatorRBAC(t *testing.T) {
	ctx := context.Background()
	tenant := tenantNamespace(t, "rbac-tenant")
	admin := env.Client
	machine := validMachine(tenant, "worker-01")
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "worker-ssh-key"},
		StringData: map[string]string{"ssh-privatekey": "placeholder"}}
	for _, o := range []client.Object{machine, secret} {
		if err := admin.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}

	op := asOperator(t)
	secretIn := func(ns, name string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: map[string]string{"k": "v"}}
	}
	leaseIn := func(ns string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "nio-operator.nio.homystack.com"}}
	}
	allowed := []struct {
		name string
		do   func() error
	}{
		{"list Machines in every namespace", func() error { return op.List(ctx, &nio.MachineList{}) }},
		{"list NixosConfigurations in every namespace", func() error { return op.List(ctx, &nio.NixosConfigurationList{}) }},
		{"list NixosFleets in every namespace", func() error { return op.List(ctx, &nio.NixosFleetList{}) }},
		{"create and delete a fleet's NixosConfiguration", func() error {
			c := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "web-worker-01"},
				Spec: nio.NixosConfigurationSpec{Flake: ".#worker", MachineRef: nio.LocalObjectReference{Name: "worker-01"},
					ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://example.com/nixos-configs.git"}}}
			if err := op.Create(ctx, c); err != nil {
				return err
			}
			return op.Delete(ctx, c)
		}},
		{"patch a Machine's status", func() error {
			var m nio.Machine
			if err := op.Get(ctx, client.ObjectKeyFromObject(machine), &m); err != nil {
				return err
			}
			patched := m.DeepCopy()
			patched.Status.Discoverable = true
			return op.Status().Patch(ctx, patched, client.MergeFrom(&m))
		}},
		{"read a Secret of a managed namespace", func() error {
			return op.Get(ctx, client.ObjectKeyFromObject(secret), &corev1.Secret{})
		}},
		{"create its CA Secret", func() error { return op.Create(ctx, secretIn(operatorNamespace, "nio-ca")) }},
		{"read its CA Secret", func() error {
			return op.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: "nio-ca"}, &corev1.Secret{})
		}},
		{"take its leader-election lease", func() error { return op.Create(ctx, leaseIn(operatorNamespace)) }},
		{"write a facts ConfigMap", func() error {
			return op.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "worker-01-facts"}})
		}},
		{"record an event", func() error {
			return op.Create(ctx, &eventsv1.Event{
				ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "worker-01.applied"},
				EventTime:  metav1.NewMicroTime(time.Now()), ReportingController: "nio.homystack.com/operator",
				ReportingInstance: "nio-operator", Action: "Apply", Reason: "Applied", Type: corev1.EventTypeNormal,
				Regarding: corev1.ObjectReference{APIVersion: nio.GroupVersion.String(), Kind: "Machine", Namespace: tenant, Name: "worker-01"},
			})
		}},
	}
	for _, a := range allowed {
		if err := a.do(); err != nil {
			t.Errorf("the operator cannot %s: %v", a.name, err)
		}
	}

	denied := []struct {
		name string
		do   func() error
	}{
		{"create a Secret in a managed namespace", func() error { return op.Create(ctx, secretIn(tenant, "stolen")) }},
		{"overwrite its CA Secret", func() error { return op.Update(ctx, secretIn(operatorNamespace, "nio-ca")) }},
		{"delete its CA Secret", func() error { return op.Delete(ctx, secretIn(operatorNamespace, "nio-ca")) }},
		{"create a Machine", func() error { return op.Create(ctx, validMachine(tenant, "intruder")) }},
		{"delete a Machine", func() error { return op.Delete(ctx, validMachine(tenant, "worker-01")) }},
		{"change a Machine's spec", func() error {
			var m nio.Machine
			if err := admin.Get(ctx, client.ObjectKeyFromObject(machine), &m); err != nil {
				return err
			}
			patched := m.DeepCopy()
			patched.Spec.IPAddress = "10.6.6.6"
			return op.Patch(ctx, patched, client.MergeFrom(&m))
		}},
		{"create a NixosFleet", func() error {
			return op.Create(ctx, &nio.NixosFleet{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "intruder"},
				Spec: nio.NixosFleetSpec{MachineSelector: metav1.LabelSelector{MatchLabels: map[string]string{"a": "b"}},
					Template: nio.FleetTemplate{Flake: ".#x", ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://example.com/r.git"}}}})
		}},
		{"delete a NixosFleet", func() error {
			return op.Delete(ctx, &nio.NixosFleet{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "web"}})
		}},
		{"take a lease in a managed namespace", func() error { return op.Create(ctx, leaseIn(tenant)) }},
		{"list Deployments", func() error { return op.List(ctx, &appsv1.DeploymentList{}, client.InNamespace(operatorNamespace)) }},
		{"create a Deployment", func() error {
			return op.Create(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "miner"}})
		}},
		{"list Pods", func() error { return op.List(ctx, &corev1.PodList{}) }},
		{"bind itself a role", func() error {
			return op.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "nio-escalate"},
				RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
				Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: operatorSA, Namespace: operatorNamespace}}})
		}},
	}
	for _, d := range denied {
		if err := d.do(); !apierrors.IsForbidden(err) {
			t.Errorf("the operator may %s (want Forbidden, got %v)", d.name, err)
		}
	}
}

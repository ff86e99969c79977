package controller

import (
	"bytes"
	"context"
	"sync/atomic"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
)

// TestFailedMachineWriteIsRepaired: the first write of the Machine's status that
// records the applied commit fails (the API server refused it). The Machine still
// ends up naming the commit, without a new commit and without applying again: the
// configuration's status is the record, and a later pass writes the Machine from it.
// (When the configuration controller patched the Machine after its own status, the
// Machine kept the old commit until the next push: kubectl get machines lied.)
func TestFailedMachineWriteIsRepaired(t *testing.T) {
	f := newFixture(t)
	first := f.commit("1")
	var failed atomic.Int32
	failFirstAppliedWrite := func(c client.WithWatch) client.Client {
		return interceptor.NewClient(c, interceptor.Funcs{
			SubResourcePatch: func(ctx context.Context, c client.Client, sub string, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
				if _, ok := obj.(*nio.Machine); ok && sub == "status" {
					if data, err := patch.Data(obj); err == nil && bytes.Contains(data, []byte(`"appliedCommit"`)) && failed.CompareAndSwap(0, 1) {
						return apierrors.NewServiceUnavailable("etcd leader changed")
					}
				}
				return c.SubResource(sub).Patch(ctx, obj, patch, opts...)
			},
		})
	}
	fleet := hosttest.NewFleet()
	f.op = startOperatorWith(t, operatorOptions{namespaces: []string{f.ns}, fleet: fleet, wrapClient: failFirstAppliedWrite})
	f.create(f.config("worker-config", "worker-01"))

	f.waitApplied("worker-config", "worker-01", first)
	if failed.Load() != 1 {
		t.Fatal("no Machine status write recording the commit was refused: the test tests nothing")
	}
	m := getMachine(t, f.ns, "worker-01")
	if !m.Status.HasConfiguration || m.Status.AppliedConfiguration != "worker-config" || m.Status.AppliedCommitShort != first[:12] ||
		m.Status.LastAppliedTime == nil {
		t.Errorf("Machine status = %+v, want worker-config's commit", m.Status)
	}
	if n := len(fleet.Host("worker-01").Ops()); n != 1 {
		t.Errorf("host saw %d applies, want 1: repairing the Machine's status must not apply again", n)
	}
}

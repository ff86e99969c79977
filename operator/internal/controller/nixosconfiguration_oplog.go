package controller

import (
	"errors"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/types"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/oplog"
	"github.com/homystack/nio/operator/internal/transport"
)

// opLog starts, or continues when a pass attaches to it, the kept log of the
// operation cur (nil when the reconciler keeps no logs).
func (r *NixosConfigurationReconciler) opLog(obj *nio.NixosConfiguration, cur *nio.OperationRef) *oplog.Operation {
	return r.Logs.Begin(types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}, oplog.Info{
		ID: cur.ID, Commit: cur.Commit, Action: cur.Action, StartTime: cur.StartTime.Time,
	})
}

// installLog starts the kept log of a nixos-anywhere run.
func (r *NixosConfigurationReconciler) installLog(obj *nio.NixosConfiguration, commit string, started time.Time) *oplog.Operation {
	op := r.Logs.Begin(types.NamespacedName{Namespace: obj.Namespace, Name: obj.Name}, oplog.Info{
		ID: fmt.Sprintf("install-%s-%d", shortCommit(commit), started.UnixNano()), Commit: commit, Action: "install", StartTime: started,
	})
	op.Phase("Installing", "nixos-anywhere")
	return op
}

// endOpLog records how the operation ended for the operator. An error that keeps
// the operation in the status (a lost stream) ends the log too: the next pass that
// attaches reopens it.
func endOpLog(op *oplog.Operation, res transport.ApplyResult, err error, secrets []string) {
	switch {
	case err == nil:
		op.End(string(res.Outcome), redact(res.Message, secrets))
	case errors.Is(err, transport.ErrBusy):
		op.End("NotStarted", "the Machine is busy with another operation")
	default:
		op.End("Error", redact(err.Error(), secrets))
	}
}

// endInstallLog records how a nixos-anywhere run ended.
func endInstallLog(op *oplog.Operation, err error, secrets []string) {
	if err != nil {
		op.End(string(nio.ResultFailed), redact(err.Error(), secrets))
		return
	}
	op.End(string(nio.ResultSucceeded), "")
}

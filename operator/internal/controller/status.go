package controller

import (
	"bytes"
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// statusWriter patches an object's status with what changed since the last write
// (or since it was read). A pass flushes once at its end, and before a long
// operation so the operation is visible (and attachable) while it runs.
type statusWriter struct {
	c    client.Client
	base client.Object
	// optimistic makes a write fail with a conflict when the object changed since it
	// was read, for a status another controller writes fields of too.
	optimistic bool
}

func newStatusWriter(c client.Client, obj client.Object) *statusWriter {
	return &statusWriter{c: c, base: obj.DeepCopyObject().(client.Object)}
}

// flush writes obj's status if it differs from the last write.
func (w *statusWriter) flush(ctx context.Context, obj client.Object) error {
	patch := client.MergeFrom(w.base)
	if w.optimistic {
		patch = client.MergeFromWithOptions(w.base, client.MergeFromWithOptimisticLock{})
	}
	data, err := patch.Data(obj)
	if err != nil {
		return fmt.Errorf("status patch: %w", err)
	}
	if !changesStatus(data) {
		return nil
	}
	if err := w.c.Status().Patch(ctx, obj, patch); err != nil {
		if apierrors.IsNotFound(err) {
			return nil // deleted during the pass
		}
		return fmt.Errorf("patch status: %w", err)
	}
	w.base = obj.DeepCopyObject().(client.Object)
	return nil
}

// changesStatus tells whether a merge patch touches .status (an optimistic patch
// always carries metadata.resourceVersion, so metadata alone says nothing).
func changesStatus(patch []byte) bool {
	return bytes.Contains(patch, []byte(`"status"`))
}

// clockNow is now from a reconciler's Now (tests set it), or the wall clock.
func clockNow(now func() time.Time) time.Time {
	if now != nil {
		return now()
	}
	return time.Now()
}

// pollInterval is a spec's interval, else the operator's default, else 5 minutes.
func pollInterval(spec, operatorDefault time.Duration) time.Duration {
	switch {
	case spec > 0:
		return spec
	case operatorDefault > 0:
		return operatorDefault
	}
	return 5 * time.Minute
}

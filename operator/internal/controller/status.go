package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// statusWriter patches an object's status with what changed since the last write
// (or since it was read). A pass flushes once at its end, and before a long
// operation so the operation is visible (and attachable) while it runs.
type statusWriter struct {
	c    client.Client
	base client.Object
	// optimistic makes a write fail with a conflict when the object changed since it
	// was read, for a status another controller writes fields of too, or for a pass
	// that read the object from the cache (which may lag behind the last write).
	optimistic bool
	// fresh, when set, reads the object from the API server for guard.
	fresh client.Reader
}

func newStatusWriter(c client.Client, obj client.Object) *statusWriter {
	return &statusWriter{c: c, base: obj.DeepCopyObject().(client.Object)}
}

// flush writes obj's status if it differs from the last write.
func (w *statusWriter) flush(ctx context.Context, obj client.Object) error {
	_, err := w.write(ctx, obj)
	return err
}

// guard writes obj's status before the pass acts on a host, and makes sure the pass
// decided on the object as it is now: the write is conditional on the version read,
// and when there is nothing to write the version is checked against the API server
// (fresh). A pass that read a cached object older than the last write (the cache
// lags behind by a watch event) gets a conflict instead of applying the same commit
// twice. Once guarded, the pass holds the latest status (the controller is its one
// writer), and later writes of the pass are unconditional: the record of a long
// operation is not lost to an annotation someone added meanwhile.
func (w *statusWriter) guard(ctx context.Context, obj client.Object) error {
	if w.fresh == nil {
		return w.flush(ctx, obj)
	}
	w.optimistic = true
	wrote, err := w.write(ctx, obj)
	if err != nil {
		return err
	}
	if !wrote {
		gvk, err := apiutil.GVKForObject(obj, w.c.Scheme())
		if err != nil {
			return err
		}
		cur := &metav1.PartialObjectMetadata{}
		cur.SetGroupVersionKind(gvk)
		if err := w.fresh.Get(ctx, client.ObjectKeyFromObject(obj), cur); err != nil {
			return fmt.Errorf("read %s: %w", obj.GetName(), err)
		}
		if cur.ResourceVersion != w.base.GetResourceVersion() {
			return apierrors.NewConflict(schema.GroupResource{Group: gvk.Group, Resource: gvk.Kind}, obj.GetName(),
				fmt.Errorf("changed since the pass read it (version %s, now %s)", w.base.GetResourceVersion(), cur.ResourceVersion))
		}
	}
	w.optimistic = false
	return nil
}

// write patches obj's status if it differs from the last write, and says whether it
// did. The patch is computed from the two statuses alone: a pass that changed
// nothing (most Machine passes after a probe) costs a comparison, not two JSON
// encodings and a diff of the whole object.
func (w *statusWriter) write(ctx context.Context, obj client.Object) (bool, error) {
	data, err := statusPatch(w.base, obj, w.optimistic)
	if err != nil {
		return false, fmt.Errorf("status patch: %w", err)
	}
	if data == nil {
		return false, nil
	}
	if err := w.c.Status().Patch(ctx, obj, client.RawPatch(types.MergePatchType, data)); err != nil {
		if apierrors.IsNotFound(err) {
			return false, nil // deleted during the pass
		}
		return false, fmt.Errorf("patch status: %w", err)
	}
	w.base = obj.DeepCopyObject().(client.Object)
	return true, nil
}

// statusPatch is the JSON merge patch taking base's status to obj's (nil when they
// are the same); optimistic adds base's resourceVersion, so the API server refuses
// the patch if the object changed since base was read. obj must be a pointer to a
// struct with a Status field (every object a statusWriter writes).
func statusPatch(base, obj client.Object, optimistic bool) ([]byte, error) {
	before, after := statusOf(base), statusOf(obj)
	if !before.IsValid() || !after.IsValid() {
		return nil, fmt.Errorf("%T has no status", obj)
	}
	if equality.Semantic.DeepEqual(before.Interface(), after.Interface()) {
		return nil, nil
	}
	from, err := json.Marshal(before.Interface())
	if err != nil {
		return nil, err
	}
	to, err := json.Marshal(after.Interface())
	if err != nil {
		return nil, err
	}
	diff, err := jsonpatch.CreateMergePatch(from, to)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(diff, []byte("{}")) {
		return nil, nil // equal once encoded (times differing below a second)
	}
	patch := map[string]any{"status": json.RawMessage(diff)}
	if optimistic {
		patch["metadata"] = map[string]string{"resourceVersion": base.GetResourceVersion()}
	}
	return json.Marshal(patch)
}

func statusOf(obj client.Object) reflect.Value {
	v := reflect.ValueOf(obj)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return reflect.Value{}
	}
	return v.Elem().FieldByName("Status")
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

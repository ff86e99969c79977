package controller

import (
	"encoding/json"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
)

func TestStatusPatchCarriesOnlyWhatChangedInTheStatus(t *testing.T) {
	base := &nio.Machine{ObjectMeta: metav1.ObjectMeta{Name: "m", ResourceVersion: "7", Labels: map[string]string{"a": "b"}}}
	base.Status.AppliedCommit = "c1"
	base.Status.Discoverable = true
	at := metav1.NewTime(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC))
	base.Status.LastAppliedTime = &at

	same := base.DeepCopy()
	same.Labels["a"] = "changed" // not status: never in a status patch
	if p, err := statusPatch(base, same, true); err != nil || p != nil {
		t.Fatalf("unchanged status: patch %s, err %v; want none", p, err)
	}
	subSecond := base.DeepCopy()
	later := metav1.NewTime(at.Add(300 * time.Millisecond))
	subSecond.Status.LastAppliedTime = &later
	if p, err := statusPatch(base, subSecond, false); err != nil || p != nil {
		t.Fatalf("a time equal once encoded: patch %s, err %v; want none", p, err)
	}

	changed := base.DeepCopy()
	changed.Status.AppliedCommit = "c2"
	changed.Status.Discoverable = false
	changed.Labels["a"] = "changed"
	p, err := statusPatch(base, changed, false)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(p, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"status": map[string]any{"appliedCommit": "c2", "discoverable": nil}}
	if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
		t.Fatalf("patch %s, want %s", g, w)
	}

	p, err = statusPatch(base, changed, true)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := json.Unmarshal(p, &got); err != nil {
		t.Fatal(err)
	}
	want["metadata"] = map[string]any{"resourceVersion": "7"}
	if g, w := mustJSON(t, got), mustJSON(t, want); g != w {
		t.Fatalf("optimistic patch %s, want %s", g, w)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

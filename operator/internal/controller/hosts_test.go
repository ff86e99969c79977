package controller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
)

func TestCacheTransformDropsWhatTheOperatorNeverReads(t *testing.T) {
	obj := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{
		Name:          "web",
		Annotations:   map[string]string{corev1.LastAppliedConfigAnnotation: `{"spec":{}}`, nio.RequestedAtAnnotation: "now"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
	}}
	out, err := CacheTransform()(obj)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*nio.NixosConfiguration)
	if len(got.ManagedFields) != 0 {
		t.Errorf("managedFields kept: %v", got.ManagedFields)
	}
	if want := map[string]string{nio.RequestedAtAnnotation: "now"}; len(got.Annotations) != 1 || got.Annotations[nio.RequestedAtAnnotation] != "now" {
		t.Errorf("annotations %v, want %v", got.Annotations, want)
	}

	only := &metav1.PartialObjectMetadata{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{corev1.LastAppliedConfigAnnotation: "{}"}}}
	out, err = CacheTransform()(only)
	if err != nil {
		t.Fatal(err)
	}
	if a := out.(*metav1.PartialObjectMetadata).Annotations; a != nil {
		t.Errorf("annotations %v, want none", a)
	}
}

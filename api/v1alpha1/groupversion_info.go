// Package v1alpha1 holds the NIO API: Machine (how to reach a host),
// NixosConfiguration (which flake output it must run) and NixosFleet (many Machines
// from one template, with staged rollouts).
//
// +kubebuilder:object:generate=true
// +groupName=nio.homystack.com
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of every NIO kind.
var GroupVersion = schema.GroupVersion{Group: "nio.homystack.com", Version: "v1alpha1"}

var (
	// SchemeBuilder registers the NIO kinds with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the NIO kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion,
		&Machine{}, &MachineList{},
		&NixosConfiguration{}, &NixosConfigurationList{},
		&NixosFleet{}, &NixosFleetList{},
	)
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}

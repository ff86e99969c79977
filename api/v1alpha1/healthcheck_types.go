package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// HealthChecks are the checks the agent runs after an activation. Each check is
// retried every interval until it has passed once; all must have passed within
// timeout.
type HealthChecks struct {
	// Timeout is the overall deadline, from the end of the activation, for every
	// check to have passed once (default 2m, at most 1h). It comes before the
	// confirmation window (rollback.confirmTimeout) and after spec.timeout's bound.
	// +kubebuilder:default="2m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('1h')",message="healthChecks.timeout must be positive and at most 1h"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// Interval is the pause between a failed attempt of a check and its next one
	// (default 1s, at least 100ms).
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms')",message="healthChecks.interval must be at least 100ms"
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`

	// Checks are run concurrently; their names are unique.
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +required
	Checks []HealthCheck `json:"checks"`
}

// HealthCheck is one named check: exactly one of units, http and command.
// +kubebuilder:validation:XValidation:rule="(has(self.units) ? 1 : 0) + (has(self.http) ? 1 : 0) + (has(self.command) ? 1 : 0) == 1",message="a health check sets exactly one of units, http, command"
type HealthCheck struct {
	// Name identifies the check in the status, events and the agent's log.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9._-]*$`
	// +required
	Name string `json:"name"`
	// Units asks systemd about units.
	// +optional
	Units *UnitsHealthCheck `json:"units,omitempty"`
	// HTTP is a GET that must be answered with an expected status.
	// +optional
	HTTP *HTTPHealthCheck `json:"http,omitempty"`
	// Command runs a program that must exit 0.
	// +optional
	Command *CommandHealthCheck `json:"command,omitempty"`
}

// UnitsHealthCheck passes when the named units are active and, with
// noNewFailures, no unit is failed that was not failed before the activation.
// +kubebuilder:validation:XValidation:rule="(has(self.names) && size(self.names) > 0) || (has(self.noNewFailures) && self.noNewFailures)",message="a units check needs names, noNewFailures, or both"
type UnitsHealthCheck struct {
	// Names of units that must be active (or reloading). A name without a type
	// suffix is a .service. A oneshot service without RemainAfterExit is inactive
	// once it succeeded: check it with a command instead.
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:items:Pattern=`^[^-*?\[\]\s/][^*?\[\]\s/]*$`
	// +optional
	Names []string `json:"names,omitempty"`
	// NoNewFailures fails the check while any unit is failed that was not failed
	// before the activation.
	// +optional
	NoNewFailures bool `json:"noNewFailures,omitempty"`
}

// HTTPHealthCheck is a GET of url that must be answered with expectStatus.
// +kubebuilder:validation:XValidation:rule="(has(self.allowRemote) && self.allowRemote) || self.url.matches('^https?://([Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt][.]?|[0-9]{1,3}([.][0-9]{1,3}){3}|\\\\[[0-9A-Fa-f:.]+\\\\])(:[0-9]+)?([/?#].*)?$')",message="the URL's host must be localhost or an IP address of the host itself (loopback or its own address); set allowRemote to check another host"
type HTTPHealthCheck struct {
	// URL to GET: http:// or https://, without credentials. Its host must be
	// localhost, a loopback address or one of the host's own addresses (the agent
	// checks the last; a DNS name is not resolved to decide) unless allowRemote.
	// https verifies the certificate against the host's system roots.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.matches('^https?://[^\\\\s/?#@]+([/?#][^\\\\s]*)?$')",message="url must be an http:// or https:// URL with a host and without credentials"
	// +required
	URL string `json:"url"`
	// ExpectStatus is the status code that passes (default 200).
	// +kubebuilder:default=200
	// +kubebuilder:validation:Minimum=100
	// +kubebuilder:validation:Maximum=599
	// +optional
	ExpectStatus int32 `json:"expectStatus,omitempty"`
	// AllowRemote lets url name another host.
	// +optional
	AllowRemote bool `json:"allowRemote,omitempty"`
}

// CommandHealthCheck runs command (no shell, no PATH lookup) on the host, with the
// host's view (outside the agent's sandbox); it must exit 0 within timeout. The
// last lines of its output are in the check's message: it must not print secrets.
type CommandHealthCheck struct {
	// Command is the program, an absolute path, and its arguments.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self[0].startsWith('/')",message="command[0] must be an absolute path (there is no PATH lookup)"
	// +required
	Command []string `json:"command"`
	// Timeout bounds one attempt (default 30s); the command's processes are killed
	// when it ends. At most healthChecks.timeout.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s')",message="the command's timeout must be positive"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

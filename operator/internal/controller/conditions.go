package controller

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/outcome"
)

// Condition reasons. Constants, so users and alerts can match on them.
const (
	ReasonSucceeded         = "Succeeded"
	ReasonProgressing       = "Progressing"
	ReasonApplying          = "Applying"
	ReasonApplyFailed       = "ApplyFailed"
	ReasonRolledBack        = "RolledBack"
	ReasonSourceFailed      = "SourceFailed"
	ReasonSourceReady       = "SourceReady"
	ReasonAuthFailed        = "AuthenticationFailed"
	ReasonSourceNotFound    = "SourceNotFound"
	ReasonInvalidConfig     = outcome.ReasonInvalidConfiguration
	ReasonMachineNotFound   = "MachineNotFound"
	ReasonMachineInUse      = "MachineInUse"
	ReasonInstalling        = "Installing"
	ReasonInstallFailed     = "InstallFailed"
	ReasonInstalled         = "Installed"
	ReasonAlreadyInstalled  = "AlreadyInstalled"
	ReasonRemovalFailed     = "RemovalFailed"
	ReasonRemoving          = "Removing"
	ReasonHostUnreachable   = "HostUnreachable"
	ReasonHostKeyMismatch   = "HostKeyMismatch"
	ReasonAgentUnreachable  = "AgentUnreachable"
	ReasonAgentDisabled     = "AgentDisabled"
	ReasonConnected         = "Connected"
	ReasonReachable         = "Reachable"
	ReasonSSHKeyMissing     = host.ReasonSSHKeyMissing
	ReasonDependencyPending = "DependencyNotReady"
	ReasonReconcileFailed   = outcome.ReasonFailed
	// A secretRef file's path is a file or directory of the source (or the source
	// has its own nio-secrets.nix).
	ReasonSecretPathConflict = "SecretPathConflict"
	// The secretRef files exceed render.MaxSecretBytes or render.MaxSecretsBytes.
	ReasonSecretTooLarge = "SecretTooLarge"
	// ReasonTimeout: an operation (apply, removal, install) did not end in time; it
	// is recorded Failed and retried with backoff.
	ReasonTimeout = "Timeout"
	// ReasonHealthCheckFailed: the new system did not pass a health check in time and
	// the agent went back to the previous generation; retried with backoff.
	ReasonHealthCheckFailed = "HealthCheckFailed"
	// ReasonHealthChecksNeedAgent: the configuration has health checks and no agent
	// that runs them answers (disabled, unreachable, too old); nothing is applied
	// (never over SSH, unchecked) and it is retried later.
	ReasonHealthChecksNeedAgent = "HealthChecksNeedAgent"
	// ReasonInvalidHealthChecks: the agent refused spec.healthChecks before building
	// (e.g. an HTTP URL off the host without allowRemote); stalled until they change.
	ReasonInvalidHealthChecks = "InvalidHealthChecks"
)

// Event reasons of the Machine controller's agent identity duties.
const (
	ReasonAgentIdentityFailed    = "AgentIdentityFailed"
	ReasonAgentIdentityDelivered = "AgentIdentityDelivered"
)

// setCondition sets a condition with the object's generation. Ready, Reconciling and
// Stalled are outcome.Summary's alone: a pass returns its outcome, and the summary
// sets them.
func setCondition(conds *[]metav1.Condition, generation int64, typ string, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(conds, metav1.Condition{
		Type:               typ,
		Status:             status,
		Reason:             reason,
		Message:            truncate(message, 1024),
		ObservedGeneration: generation,
	})
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func shortCommit(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// revision prints a commit the way Flux does: `main@sha1:<hex>`.
func revision(ref, commit string) string {
	if commit == "" {
		return ""
	}
	if ref == "" || ref == commit {
		return "sha1:" + commit
	}
	return ref + "@sha1:" + commit
}

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Action is what is done with a built system, as nixos-rebuild names it.
// +kubebuilder:validation:Enum=switch;boot;test
type Action string

const (
	// ActionSwitch activates the system now and makes it the boot default.
	ActionSwitch Action = "switch"
	// ActionBoot makes the system the boot default; it runs after the next reboot.
	ActionBoot Action = "boot"
	// ActionTest activates the system now without making it the boot default.
	ActionTest Action = "test"
)

// NixosConfigurationSpec says which flake output a Machine must run.
// +kubebuilder:validation:XValidation:rule="!has(self.kexecImage) || self.fullInstall",message="kexecImage is only used with fullInstall: true"
// +kubebuilder:validation:XValidation:rule="!has(self.healthChecks) || !has(self.action) || self.action != 'boot'",message="healthChecks need action switch or test: with boot nothing is activated to check"
type NixosConfigurationSpec struct {
	// Flake names the NixOS system as `<dir>#<attr>`: dir is relative to the
	// repository root (`.` for the root), attr is the name under
	// nixosConfigurations. Example: `.#worker`.
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.matches('^[^#\\\\s]+#[A-Za-z0-9_][A-Za-z0-9_.-]*$')",message="flake must be <dir>#<attr>, e.g. .#worker"
	// +kubebuilder:validation:XValidation:rule="!self.split('#')[0].startsWith('/') && !self.split('#')[0].matches('(^|/)[.][.](/|$)')",message="the flake directory must be relative to the repository root, without .."
	// +required
	Flake string `json:"flake"`

	// MachineRef names the Machine, in this namespace, that runs this configuration.
	// A Machine runs one configuration: when several name it, the oldest wins and the
	// others report Ready=False, reason MachineInUse.
	// +required
	MachineRef LocalObjectReference `json:"machineRef"`

	ConfigurationTemplate `json:",inline"`
}

// ConfigurationTemplate is every field of a NixosConfiguration's spec but flake and
// machineRef: what a NixosFleet's template gives each of its configurations.
type ConfigurationTemplate struct {
	// GitRepo is the repository holding the flake: https://, http://, ssh://,
	// scp-like (git@host:path) or file:// URL.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="self.matches('^(https?|ssh|file)://[^\\\\s]+$') || self.matches('^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\\\\s]+$')",message="gitRepo must be an https://, http://, ssh://, file:// or scp-like (git@host:path) URL"
	// +required
	GitRepo string `json:"gitRepo"`

	// Ref is the branch, tag or full 40-hex commit to run. A branch or tag is
	// followed: every new commit it points to is applied.
	// +kubebuilder:default=main
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:XValidation:rule="!self.matches('[\\\\x00-\\\\x20~^:?*\\\\[\\\\\\\\\\\\x7f]') && !self.contains('..') && !self.contains('@{') && !self.contains('//') && !self.startsWith('-') && !self.startsWith('/') && !self.endsWith('/') && !self.endsWith('.') && !self.endsWith('.lock')",message="ref must be a branch name, tag name or commit hash"
	// +optional
	Ref string `json:"ref,omitempty"`

	// FullInstall installs the host with nixos-anywhere (wiping its disks) before the
	// first switch. The install runs once: a host that carries the marker
	// /var/lib/nio/installed, or answers as nio-agent, is never installed again unless
	// the annotation nio.homystack.com/reinstall is set.
	// +kubebuilder:default=false
	// +optional
	FullInstall bool `json:"fullInstall,omitempty"`

	// CredentialsRef names a Secret, in this namespace, with the Git credentials:
	// `token` or `bearerToken` (HTTP bearer), `username` and `password` (HTTP basic),
	// or `identity` / `ssh-privatekey` with `known_hosts` (SSH; the host key is always
	// checked). Optional `ca.crt` is trusted for HTTPS.
	// +optional
	CredentialsRef *LocalObjectReference `json:"credentialsRef,omitempty"`

	// AdditionalFiles add files to what the host builds (they are not committed
	// anywhere). inline and nixosFacter files are written into the source tree before
	// the build, so the flake can read them; they end up in the world-readable Nix
	// store.
	// secretRef files never do: their bytes go to the host outside the source, into
	// /run/nio-secrets/current/<path> (tmpfs, root-only unless owner, group or mode
	// say otherwise), and the source gets a generated nio-secrets.nix at its root
	// that maps each such path to that location, for options like passwordFile:
	// `(import ./nio-secrets.nix)."secrets/db-password"`. A secret path must not be
	// a file or directory of the repository. Limits: 1 MiB per secret, 4 MiB in all.
	// +listType=map
	// +listMapKey=path
	// +kubebuilder:validation:MaxItems=256
	// +optional
	AdditionalFiles []AdditionalFile `json:"additionalFiles,omitempty"`

	// OnRemoveFlake is applied to the host when this configuration is deleted: a flake
	// ref like `.#minimal`, or the repository path of a NixOS module file like
	// `hosts/minimal.nix` (switched with `nixos-rebuild switch -I nixos-config=<file>`).
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.matches('^[^#\\\\s]+#[A-Za-z0-9_][A-Za-z0-9_.-]*$') || (self.matches('^[^#\\\\s]+$') && !self.startsWith('/') && !self.matches('(^|/)[.][.]?(/|$)'))",message="onRemoveFlake must be <dir>#<attr> or a relative path to a NixOS module file"
	// +optional
	OnRemoveFlake string `json:"onRemoveFlake,omitempty"`

	// Interval is how often the Git ref is polled (a webhook triggers sooner).
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	// +optional
	Interval metav1.Duration `json:"interval,omitempty"`

	// Suspend stops all reconciliation (no polling, no applies) until cleared.
	// Deletion is still handled, and so is a rollback request
	// (nio.homystack.com/rollback), which is acted on only while suspended.
	// +kubebuilder:default=false
	// +optional
	Suspend bool `json:"suspend,omitempty"`

	// Action is what is done with the built system: switch (default), boot or test.
	// +kubebuilder:default=switch
	// +optional
	Action Action `json:"action,omitempty"`

	// Rollback configures magic rollback: after activating, the agent waits for the
	// operator to confirm over a new connection and re-activates the previous
	// generation when no confirmation comes.
	// +kubebuilder:default={}
	// +optional
	Rollback RollbackSpec `json:"rollback,omitempty"`

	// HealthChecks run on the host after activation, before the operator confirms:
	// systemd units, HTTP GETs, commands. Every check must pass once within
	// healthChecks.timeout; when one does not, the agent re-activates the previous
	// generation (as when no confirmation comes, whether or not rollback.enabled),
	// and the configuration reports Ready=False, reason HealthCheckFailed, naming the
	// check. They need the agent: over SSH a configuration with health checks is not
	// applied (reason HealthChecksNeedAgent) rather than applied unchecked. Not with
	// action boot.
	// +optional
	HealthChecks *HealthChecks `json:"healthChecks,omitempty"`

	// Timeout bounds one operation on the host: build, setting the system profile
	// and starting the activation (default 1h, at most 24h). The agent kills the
	// build's processes when it runs out and ends the operation Failed, the previous
	// system still active; an activation that has begun is never interrupted (a
	// half-activated system is worse than a late one) and is waited for. The
	// operator waits at most timeout + healthChecks.timeout + rollback.confirmTimeout
	// + a few minutes for transfer and reconnects, then records the operation Failed with reason
	// Timeout, frees the Machine and retries with backoff. Over SSH the operator's
	// wait is the only bound: it closes the session. The install (fullInstall) is
	// bounded by the operator's --install-timeout instead.
	// +kubebuilder:default="1h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('24h')",message="timeout must be positive and at most 24h"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// KexecImage is a URL of a kexec tarball passed to nixos-anywhere --kexec (only
	// with fullInstall).
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:Pattern=`^(https?|file)://[^\s]+$`
	// +optional
	KexecImage string `json:"kexecImage,omitempty"`
}

// AdditionalFile is one file added to the source tree before the build, or, from a
// Secret, delivered to the host outside the Nix store.
// +kubebuilder:validation:XValidation:rule="has(self.value.secretRef) || (!has(self.mode) && !has(self.owner) && !has(self.group))",message="mode, owner and group apply only to files from a secretRef"
type AdditionalFile struct {
	// Path of the file in the source tree: relative, clean (no `.` or `..` segments,
	// no `//`), and not inside `.git`.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('/')",message="path must be relative"
	// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.][.]?(/|$)') && !self.contains('//') && !self.endsWith('/')",message="path must be clean: no . or .. segments, no empty segments"
	// +kubebuilder:validation:XValidation:rule="!self.matches('(^|/)[.]git(/|$)')",message="path must not be inside .git"
	// +kubebuilder:validation:XValidation:rule="!self.matches('[\\\\x00\\\\\\\\]')",message="path must not contain NUL or backslash"
	// +required
	Path string `json:"path"`

	// Value is where the content comes from: exactly one of inline, secretRef,
	// nixosFacter.
	// +required
	Value AdditionalFileValue `json:"value"`

	// Mode of a secretRef file on the host, as an octal string of permission bits
	// (default "0400"). Only with secretRef.
	// +kubebuilder:validation:Pattern=`^0?[0-7]{3}$`
	// +optional
	Mode string `json:"mode,omitempty"`
	// Owner of a secretRef file on the host: a user name or a numeric uid (default
	// root). A name is looked up on the host; a user the new system creates is
	// resolved after its activation. Only with secretRef.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^([0-9]+|[A-Za-z_][A-Za-z0-9_.-]*[$]?)$`
	// +optional
	Owner string `json:"owner,omitempty"`
	// Group of a secretRef file on the host: a group name or a numeric gid (default
	// root). Only with secretRef.
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^([0-9]+|[A-Za-z_][A-Za-z0-9_.-]*[$]?)$`
	// +optional
	Group string `json:"group,omitempty"`
}

// AdditionalFileValue is the content of an additional file: exactly one source.
// +kubebuilder:validation:XValidation:rule="(has(self.inline) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) + (has(self.nixosFacter) && self.nixosFacter ? 1 : 0) == 1",message="value must set exactly one of inline, secretRef, nixosFacter"
type AdditionalFileValue struct {
	// Inline is the file's content.
	// +kubebuilder:validation:MaxLength=262144
	// +optional
	Inline *string `json:"inline,omitempty"`
	// SecretRef takes the content from a Secret in this namespace. Without key, the
	// Secret must have exactly one key, which is used. The content is not put into
	// the source (see additionalFiles): the host gets it under /run/nio-secrets.
	// +optional
	SecretRef *SecretKeyReference `json:"secretRef,omitempty"`
	// NixosFacter takes the Machine's last nixos-facter report (JSON), collected by the
	// operator. With fullInstall and no report yet, nixos-anywhere generates it.
	// +optional
	NixosFacter *bool `json:"nixosFacter,omitempty"`
}

// RollbackSpec configures magic rollback.
type RollbackSpec struct {
	// Enabled turns magic rollback on (switch and test through the agent).
	// +kubebuilder:default=true
	// +optional
	Enabled *bool `json:"enabled,omitempty"`
	// ConfirmTimeout is how long the agent waits for the operator's confirmation.
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	// +optional
	ConfirmTimeout metav1.Duration `json:"confirmTimeout,omitempty"`
}

// NixosConfigurationStatus records what was resolved, attempted and applied.
type NixosConfigurationStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// LatestCommit is what ref resolved to at the last poll.
	// +optional
	LatestCommit string `json:"latestCommit,omitempty"`

	// LastAttemptedCommit is the commit of the last apply, successful or not.
	// +optional
	LastAttemptedCommit string `json:"lastAttemptedCommit,omitempty"`

	// AppliedCommit is the commit running on the Machine. Written only after the
	// switch succeeded (and was confirmed): it never names a commit that did not
	// switch.
	// +optional
	AppliedCommit string `json:"appliedCommit,omitempty"`

	// AppliedCommitShort is the first 12 hex digits of appliedCommit, for display.
	// +optional
	AppliedCommitShort string `json:"appliedCommitShort,omitempty"`

	// LastAppliedTime is when appliedCommit was applied.
	// +optional
	LastAppliedTime *metav1.Time `json:"lastAppliedTime,omitempty"`

	// AppliedSourceDigest is the sha256 of the source archive (tree plus additional
	// files) last applied. A different digest means a new apply.
	// +optional
	AppliedSourceDigest string `json:"appliedSourceDigest,omitempty"`

	// AppliedSecretsDigest identifies the set of secretRef files (paths, modes,
	// owners and contents) last delivered with a successful apply: a keyed digest
	// (HMAC-SHA256, keyed with a secret of the operator), so it tells nothing about
	// the contents. A different value means a new apply.
	// +optional
	AppliedSecretsDigest string `json:"appliedSecretsDigest,omitempty"`

	// AppliedSpecGeneration is the spec generation last applied.
	// +optional
	AppliedSpecGeneration int64 `json:"appliedSpecGeneration,omitempty"`

	// AppliedSystem is the store path of the system last applied.
	// +optional
	AppliedSystem string `json:"appliedSystem,omitempty"`

	// TargetMachine is the Machine this configuration was last applied to. That
	// Machine's status (appliedConfiguration, appliedCommit, lastAppliedTime) is
	// derived from this status by the Machine controller.
	// +optional
	TargetMachine string `json:"targetMachine,omitempty"`

	// FullInstallCompleted is true once nixos-anywhere installed the host.
	// +optional
	FullInstallCompleted bool `json:"fullInstallCompleted,omitempty"`

	// InstalledTime is when the install finished.
	// +optional
	InstalledTime *metav1.Time `json:"installedTime,omitempty"`

	// InstalledHostKeyFingerprint is the SHA256 fingerprint of the SSH host key the
	// operator generated for the installed system. The Machine takes it as its
	// recorded host key (status.sshHostKeyFingerprint), so SSH trusts the new system
	// without trust on first use.
	// +optional
	InstalledHostKeyFingerprint string `json:"installedHostKeyFingerprint,omitempty"`

	// LastHandledReinstallAt is the value of the nio.homystack.com/reinstall
	// annotation last acted on (each new value allows one more install).
	// +optional
	LastHandledReinstallAt string `json:"lastHandledReinstallAt,omitempty"`

	// CurrentOperation is the operation in flight on the Machine. It is written before
	// the operation starts, so an operator that restarts attaches to the same
	// operation instead of starting a second build.
	// +optional
	CurrentOperation *OperationRef `json:"currentOperation,omitempty"`

	// LastHandledRequestedAt is the value of the nio.homystack.com/requestedAt
	// annotation last acted on.
	// +optional
	LastHandledRequestedAt string `json:"lastHandledRequestedAt,omitempty"`

	// LastHandledRollbackAt is the value of the nio.homystack.com/rollback
	// annotation last acted on (whatever the rollback's outcome; a new value is a
	// new request).
	// +kubebuilder:validation:MaxLength=1024
	// +optional
	LastHandledRollbackAt string `json:"lastHandledRollbackAt,omitempty"`

	// History holds the last 10 operations, newest first.
	// +kubebuilder:validation:MaxItems=10
	// +optional
	History []HistoryEntry `json:"history,omitempty"`

	// Conditions: Ready (always), Reconciling and Stalled (only while true),
	// SourceReady, Applied, Installed.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// OperationRef identifies an operation in flight.
type OperationRef struct {
	// ID of the operation, as sent to the agent.
	ID string `json:"id"`
	// Commit being applied.
	Commit string `json:"commit"`
	// SourceDigest of the archive being applied.
	SourceDigest string `json:"sourceDigest"`
	// SecretsDigest identifies the secrets delivered with it (see
	// appliedSecretsDigest).
	// +optional
	SecretsDigest string `json:"secretsDigest,omitempty"`
	// Action being performed.
	Action string `json:"action"`
	// StartTime is when the operation started.
	StartTime metav1.Time `json:"startTime"`
}

// Result is how an operation ended.
// +kubebuilder:validation:Enum=Succeeded;Failed;RolledBack
type Result string

const (
	// ResultSucceeded: the action completed and, where asked, was confirmed.
	ResultSucceeded Result = "Succeeded"
	// ResultFailed: the operation failed; the previous system stayed active.
	ResultFailed Result = "Failed"
	// ResultRolledBack: activated, not confirmed in time, previous generation restored.
	ResultRolledBack Result = "RolledBack"
)

// HistoryEntry records one operation.
type HistoryEntry struct {
	// Commit the source was rendered from ("" for a rollback to a generation no
	// recorded operation built).
	Commit string `json:"commit"`
	// Action performed (switch, boot, test, install, remove, rollback: an earlier
	// generation activated on request, with commit the one that built it when
	// known).
	Action string `json:"action"`
	// Transport that ran it.
	Transport Transport `json:"transport"`
	// StartTime is when the operation started.
	StartTime metav1.Time `json:"startTime"`
	// Duration of the operation.
	// +optional
	Duration *metav1.Duration `json:"duration,omitempty"`
	// Result of the operation.
	Result Result `json:"result"`
	// Generation of the system profile after the operation.
	// +optional
	Generation int64 `json:"generation,omitempty"`
	// SourceDigest of the archive the operation applied.
	// +optional
	SourceDigest string `json:"sourceDigest,omitempty"`
	// SecretsDigest identifies the secrets the operation delivered (see
	// appliedSecretsDigest).
	// +optional
	SecretsDigest string `json:"secretsDigest,omitempty"`
	// Message: the error on failure.
	// +optional
	Message string `json:"message,omitempty"`
}

// NixosConfiguration is a NixOS system (a flake output in Git) that a Machine runs.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=nixconf,categories=nio
// +kubebuilder:printcolumn:name="Machine",type=string,JSONPath=`.spec.machineRef.name`
// +kubebuilder:printcolumn:name="Flake",type=string,JSONPath=`.spec.flake`
// +kubebuilder:printcolumn:name="Applied",type=string,JSONPath=`.status.appliedCommitShort`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NixosConfiguration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says which system the Machine must run.
	// +required
	Spec NixosConfigurationSpec `json:"spec"`
	// Status records what was resolved, attempted and applied.
	// +optional
	Status NixosConfigurationStatus `json:"status,omitempty"`
}

// NixosConfigurationList is a list of NixosConfigurations.
// +kubebuilder:object:root=true
type NixosConfigurationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NixosConfiguration `json:"items"`
}

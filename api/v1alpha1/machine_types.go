package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MachineSpec says how to reach a host.
type MachineSpec struct {
	// Hostname is the host's name (informational; the host is reached at ipAddress).
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Hostname string `json:"hostname"`

	// IPAddress is where the operator reaches the host: an IPv4 or IPv6 address, or a
	// DNS name. A dotted name made only of digits must be a valid IPv4 address.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="isIP(self) || (self.matches('^([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\\\\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*\\\\.?$') && !self.matches('^[0-9.]+$'))",message="ipAddress must be an IP address or a DNS name"
	// +required
	IPAddress string `json:"ipAddress"`

	// SSHUser is the login for SSH. A user other than root runs the privileged steps
	// through `sudo -n` and so needs passwordless sudo.
	// +kubebuilder:default=root
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^[a-z_][a-z0-9_-]*[$]?$`
	// +optional
	SSHUser string `json:"sshUser,omitempty"`

	// SSHPort is the host's SSH port.
	// +kubebuilder:default=22
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	SSHPort int32 `json:"sshPort,omitempty"`

	// SSHKeySecretRef names the Secret holding the private key the operator logs in
	// with (OpenSSH or PEM format, unencrypted). SSH is used to install hosts, to
	// deliver the agent's TLS identity, and as the fallback when the agent can't be
	// reached.
	// +optional
	SSHKeySecretRef *SSHKeySecretReference `json:"sshKeySecretRef,omitempty"`

	// SSHHostKey pins the host's SSH public key, in authorized_keys form
	// (`ssh-ed25519 AAAA…`). When absent, the first key the host presents is recorded
	// in status.sshHostKeyFingerprint and enforced afterwards; a different key is then
	// refused (condition Reachable=False, reason HostKeyMismatch) until a person
	// clears status.sshHostKeyFingerprint or sets this field. NIO never skips the
	// host key check.
	// +kubebuilder:validation:MaxLength=16384
	// +kubebuilder:validation:Pattern=`^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}( .*)?$`
	// +optional
	SSHHostKey string `json:"sshHostKey,omitempty"`

	// Agent configures how the operator talks to nio-agent on the host.
	// +kubebuilder:default={}
	// +optional
	Agent AgentSpec `json:"agent,omitempty"`
}

// SSHKeySecretReference names the Secret key holding an SSH private key.
type SSHKeySecretReference struct {
	// Name of the Secret, in the Machine's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// Key in the Secret holding the private key.
	// +kubebuilder:default=ssh-privatekey
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	// +optional
	Key string `json:"key,omitempty"`
}

// AgentSpec configures the connection to nio-agent.
type AgentSpec struct {
	// Port nio-agent listens on (mTLS gRPC).
	// +kubebuilder:default=9443
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port int32 `json:"port,omitempty"`
	// Disabled makes the operator use SSH only, never the agent.
	// +kubebuilder:default=false
	// +optional
	Disabled bool `json:"disabled,omitempty"`
}

// MachineStatus is what the operator last observed of the host.
type MachineStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Discoverable is true when the host answered the last probe (agent or SSH).
	// +optional
	Discoverable bool `json:"discoverable,omitempty"`

	// HasConfiguration is true once a NixosConfiguration has been applied to this
	// Machine, until that configuration is removed. It and the three fields after it
	// are copied from the status of the NixosConfiguration applied last to this
	// Machine (its status.targetMachine names the Machine).
	// +optional
	HasConfiguration bool `json:"hasConfiguration,omitempty"`

	// AppliedConfiguration is the name of the NixosConfiguration applied last.
	// +optional
	AppliedConfiguration string `json:"appliedConfiguration,omitempty"`

	// AppliedCommit is the full Git commit the running system was built from. It is
	// written only after the switch succeeded (and was confirmed).
	// +optional
	AppliedCommit string `json:"appliedCommit,omitempty"`

	// AppliedCommitShort is the first 12 hex digits of appliedCommit, for display.
	// +optional
	AppliedCommitShort string `json:"appliedCommitShort,omitempty"`

	// LastAppliedTime is when appliedCommit was applied.
	// +optional
	LastAppliedTime *metav1.Time `json:"lastAppliedTime,omitempty"`

	// SSHHostKeyFingerprint is the SHA256 fingerprint of the host key seen on first
	// contact (or of spec.sshHostKey), enforced on every later connection. Clear it to
	// accept a new host key.
	// +optional
	SSHHostKeyFingerprint string `json:"sshHostKeyFingerprint,omitempty"`

	// Agent is the state of nio-agent on the host.
	// +optional
	Agent *AgentStatus `json:"agent,omitempty"`

	// System is the NixOS system the host runs.
	// +optional
	System *SystemStatus `json:"system,omitempty"`

	// Facts summarises the host's last nixos-facter report. The whole report is in the
	// ConfigMap named by facts.reportConfigMap.
	// +optional
	Facts *FactsSummary `json:"facts,omitempty"`

	// LastHardwareScanTime is when the last nixos-facter report was taken.
	// +optional
	LastHardwareScanTime *metav1.Time `json:"lastHardwareScanTime,omitempty"`

	// LastHandledRescanAt is the value of the nio.homystack.com/rescan annotation
	// last acted on.
	// +optional
	LastHandledRescanAt string `json:"lastHandledRescanAt,omitempty"`

	// Conditions: Ready, Reachable, AgentConnected.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AgentStatus is the state of nio-agent on a host.
type AgentStatus struct {
	// Connected is true when the last mTLS call to the agent succeeded.
	Connected bool `json:"connected"`
	// Version of the agent.
	// +optional
	Version string `json:"version,omitempty"`
	// LastSeenTime is when the agent was last seen answering: set by the first answer,
	// one after an outage, one with a new version or another running system;
	// otherwise refreshed every 30 minutes while the agent keeps answering (probes
	// that see nothing new write nothing). Connected says whether the last probe got
	// an answer.
	// +optional
	LastSeenTime *metav1.Time `json:"lastSeenTime,omitempty"`
	// CertificateNotAfter is when the agent's serving certificate expires. The operator
	// renews it at two thirds of its life.
	// +optional
	CertificateNotAfter *metav1.Time `json:"certificateNotAfter,omitempty"`
}

// SystemStatus is the NixOS system a host runs.
type SystemStatus struct {
	// CurrentSystem is the store path of the running system (/run/current-system).
	// +optional
	CurrentSystem string `json:"currentSystem,omitempty"`
	// BootedSystem is the store path of the system the host booted.
	// +optional
	BootedSystem string `json:"bootedSystem,omitempty"`
	// Generation is the system profile's current generation number.
	// +optional
	Generation int64 `json:"generation,omitempty"`
	// NeedsReboot is true when only a reboot runs all of the system the profile
	// holds: the running system differs from the booted one in kernel, initrd or
	// kernel modules (NixOS's own check), or a generation set with action boot
	// waits in the system profile (neither running nor booted).
	// +optional
	NeedsReboot bool `json:"needsReboot,omitempty"`
}

// FactsSummary is the part of a nixos-facter report worth seeing at a glance.
type FactsSummary struct {
	// System is the Nix system double, e.g. x86_64-linux.
	// +optional
	System string `json:"system,omitempty"`
	// CPUs is the number of logical CPUs (threads) the report lists.
	// +optional
	CPUs int32 `json:"cpus,omitempty"`
	// MemoryBytes is the main memory size.
	// +optional
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// Virtualisation is the hypervisor the host runs under (`none` on bare metal).
	// +optional
	Virtualisation string `json:"virtualisation,omitempty"`
	// ReportConfigMap names the ConfigMap (owned by this Machine) holding the whole
	// report under the key `facter.json`.
	// +optional
	ReportConfigMap string `json:"reportConfigMap,omitempty"`
}

// Machine is a host NIO manages: where it is and how to log in.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mach,categories=nio
// +kubebuilder:printcolumn:name="Hostname",type=string,JSONPath=`.spec.hostname`
// +kubebuilder:printcolumn:name="IP",type=string,JSONPath=`.spec.ipAddress`
// +kubebuilder:printcolumn:name="Agent",type=string,JSONPath=`.status.agent.version`
// +kubebuilder:printcolumn:name="Config",type=string,JSONPath=`.status.appliedConfiguration`
// +kubebuilder:printcolumn:name="Commit",type=string,JSONPath=`.status.appliedCommitShort`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Machine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says how to reach the host.
	// +required
	Spec MachineSpec `json:"spec"`
	// Status is what the operator last observed.
	// +optional
	Status MachineStatus `json:"status,omitempty"`
}

// MachineList is a list of Machines.
// +kubebuilder:object:root=true
type MachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Machine `json:"items"`
}

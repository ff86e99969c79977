package v1alpha1

// Annotations a person sets to ask NIO for something. Their value is free-form (a
// timestamp is customary); a new value is a new request.
const (
	// RequestedAtAnnotation on a NixosConfiguration forces a reconcile pass, like
	// `flux reconcile`: the source is resolved again and the configuration re-applied
	// when anything differs from what was last applied.
	RequestedAtAnnotation = "nio.homystack.com/requestedAt"
	// RescanAnnotation on a Machine asks for a new nixos-facter report.
	RescanAnnotation = "nio.homystack.com/rescan"
	// ReinstallAnnotation on a NixosConfiguration with fullInstall allows one more
	// nixos-anywhere run on a host that is already installed. It wipes the host's disks.
	ReinstallAnnotation = "nio.homystack.com/reinstall"
	// RollbackAnnotation on a NixosConfiguration asks the operator to activate an
	// earlier generation of the Machine's system profile through nio-agent:
	// `<generation>@<request>` or `previous@<request>` (the generation before the
	// current one), where request is any token (`nio rollback` writes a timestamp),
	// so the same rollback can be asked for again. It is acted on only while
	// spec.suspend is true — otherwise the next pass would re-apply the commit at
	// once — and once per value (status.lastHandledRollbackAt). `nio rollback` sets
	// both.
	RollbackAnnotation = "nio.homystack.com/rollback"
	// SkipRemovalAnnotation on a NixosConfiguration being deleted lets it go without
	// applying onRemoveFlake, e.g. when the host is gone for good.
	SkipRemovalAnnotation = "nio.homystack.com/skip-removal"

	// Finalizer guards a NixosConfiguration until its removal has been handled.
	Finalizer = "nio.homystack.com/finalizer"
)

// Condition types. Ready is always present; Reconciling and Stalled only while true
// (kstatus).
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"

	// Machine conditions.
	ConditionReachable      = "Reachable"
	ConditionAgentConnected = "AgentConnected"

	// NixosConfiguration conditions.
	ConditionSourceReady = "SourceReady"
	ConditionApplied     = "Applied"
	ConditionInstalled   = "Installed"
)

// Transport names how an operation reached a host.
// +kubebuilder:validation:Enum=agent;ssh;install
type Transport string

const (
	// TransportAgent is nio-agent's mTLS gRPC API.
	TransportAgent Transport = "agent"
	// TransportSSH is nixos-rebuild over OpenSSH.
	TransportSSH Transport = "ssh"
	// TransportInstall is nixos-anywhere.
	TransportInstall Transport = "install"
)

// LocalObjectReference names an object in the same namespace.
type LocalObjectReference struct {
	// Name of the referent.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
}

// SecretKeyReference names one key of a Secret in the same namespace.
type SecretKeyReference struct {
	// Name of the Secret.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
	// Key in the Secret's data.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	// +optional
	Key string `json:"key,omitempty"`
}

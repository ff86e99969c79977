package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Labels and annotations of a NixosFleet and the NixosConfigurations it owns.
const (
	// FleetLabel on a NixosConfiguration names the NixosFleet that owns it (its
	// controller owner reference says the same, with the fleet's UID). A name longer
	// than a label value may be (63 characters) is cut and ends with a hash.
	FleetLabel = "nio.homystack.com/fleet"
	// FleetMachineLabel on a NixosConfiguration names the Machine it was made for
	// (cut like FleetLabel).
	FleetMachineLabel = "nio.homystack.com/fleet-machine"
	// FleetRevisionAnnotation on a NixosConfiguration is the fleet revision (commit
	// and template) its spec was rendered from.
	FleetRevisionAnnotation = "nio.homystack.com/fleet-revision"
	// FleetBatchAnnotation on a NixosConfiguration is the batch of the rollout that
	// moved it to its revision ("canary", "1", "2"...), or "revert" when a revert
	// moved it back.
	FleetBatchAnnotation = "nio.homystack.com/fleet-batch"
	// FleetPreviousAnnotation on a NixosConfiguration holds the spec (JSON) and
	// revision the Machine ran before its current revision: what a revert restores.
	// It is written when a rollout moves a configuration whose revision was applied
	// (a Machine moved again in the middle of an apply keeps what it ran before);
	// a fleet's first rollout has none, and a spec over 128 KiB is not kept.
	FleetPreviousAnnotation = "nio.homystack.com/fleet-previous"
	// PromoteAnnotation on a NixosFleet moves a paused rollout on: past a manual
	// gate or a failure pause (the next batch starts), or, after a revert, starts the
	// reverted revision's rollout again, from the canary. A new value is a new
	// request; it is recorded in status.rollout.lastHandledPromote when acted on (a
	// value present when a rollout starts is recorded at once: it asks nothing).
	PromoteAnnotation = "nio.homystack.com/promote"
)

// NixosFleetSpec says which Machines run which flake outputs, and how a new revision
// reaches them.
type NixosFleetSpec struct {
	// MachineSelector selects the Machines, in this namespace, of the fleet. It must
	// not be empty (an empty selector would take every Machine of the namespace).
	// +kubebuilder:validation:XValidation:rule="(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",message="machineSelector must have matchLabels or matchExpressions"
	// +required
	MachineSelector metav1.LabelSelector `json:"machineSelector"`

	// Template is what each Machine's NixosConfiguration is made from.
	// +required
	Template FleetTemplate `json:"template"`

	// Strategy says how a new revision (a new commit of template.ref, or a template
	// change) reaches the Machines.
	//
	// The Machines not on the new revision move in the order of their names: first
	// the canary, then the batches. Sizes are taken of the fleet: the selected
	// Machines the fleet drives (not those in status.excluded). A new revision while
	// a rollout runs (or is paused, or was reverted) supersedes it: a new rollout
	// starts from the canary over every Machine not on the new revision
	// (status.rollout.supersedes names the old one); Machines in the middle of an
	// apply finish it first. A revert in the new rollout gives each Machine back
	// what it ran before it was moved (a Machine moved again before it ran the first
	// move goes back to what it ran before both). Machines joining the fleet after a
	// rollout completed get its revision in batches (no canary: it passed already).
	// +kubebuilder:default={}
	// +optional
	Strategy RolloutStrategy `json:"strategy,omitempty"`

	// Paused stops the rollout from moving further Machines: operations already
	// started finish, no new one starts. Machines joining the fleet are not given a
	// configuration either. Clearing it continues where the rollout stopped. A
	// revert that onFailure: Revert decided still runs, and a Machine leaving the
	// selector still has its configuration deleted; a promote waits for the end of
	// the pause.
	// +optional
	Paused bool `json:"paused,omitempty"`
}

// FleetTemplate is a NixosConfiguration spec without machineRef, whose flake
// attribute may name the Machine.
// +kubebuilder:validation:XValidation:rule="!has(self.kexecImage) || self.fullInstall",message="kexecImage is only used with fullInstall: true"
// +kubebuilder:validation:XValidation:rule="!has(self.healthChecks) || !has(self.action) || self.action != 'boot'",message="healthChecks need action switch or test: with boot nothing is activated to check"
type FleetTemplate struct {
	// Flake names each Machine's NixOS system as `<dir>#<attr>`, where attr may use
	// the placeholders {name} (the Machine's name) and {hostname} (its
	// spec.hostname), e.g. `.#{hostname}` or `.#web-{name}`; `.#web` gives every
	// Machine the same system. A Machine whose value makes no valid attribute is
	// reported in the fleet's status and gets no configuration.
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.matches('^[^#\\\\s{}]+#([A-Za-z0-9_.-]|[{](name|hostname)[}])+$')",message="flake must be <dir>#<attr>; attr may use only the placeholders {name} and {hostname}"
	// +kubebuilder:validation:XValidation:rule="!self.split('#')[0].startsWith('/') && !self.split('#')[0].matches('(^|/)[.][.](/|$)')",message="the flake directory must be relative to the repository root, without .."
	// +required
	Flake string `json:"flake"`

	ConfigurationTemplate `json:",inline"`
}

// FailurePolicy is what a rollout does when a Machine fails the new revision.
// +kubebuilder:validation:Enum=Pause;Revert
type FailurePolicy string

const (
	// FailurePause stops the rollout: no further Machine moves until a new
	// revision, or the promote annotation.
	FailurePause FailurePolicy = "Pause"
	// FailureRevert stops the rollout and moves every Machine the rollout moved
	// back to the revision it ran before.
	FailureRevert FailurePolicy = "Revert"
)

// Promotion says whether a rollout goes on to the next batch by itself.
// +kubebuilder:validation:Enum=Automatic;Manual
type Promotion string

const (
	// PromotionAutomatic starts the next batch when one has succeeded (after
	// pauseBetweenBatches).
	PromotionAutomatic Promotion = "Automatic"
	// PromotionManual waits, after the canary and after every batch, for a new value
	// of the promote annotation.
	PromotionManual Promotion = "Manual"
)

// RolloutStrategy says how a new revision reaches a fleet's Machines.
type RolloutStrategy struct {
	// Canary is how many Machines get a new revision first; the rollout goes on only
	// when they all run it (applied, confirmed, health checks passed). 0: no canary.
	// It must not be larger than the fleet (else Stalled, reason CanaryExceedsFleet).
	// +kubebuilder:validation:Minimum=0
	// +optional
	Canary int32 `json:"canary,omitempty"`

	// Batches are the sizes of the steps after the canary, each a number of Machines
	// or a percentage of the fleet ("10%", rounded up, at least 1 Machine). When the
	// listed batches do not cover the fleet, the last size repeats; they must not add
	// up to more than the fleet (numbers with the canary at most the fleet,
	// percentages at most 100%; else Stalled, reason InvalidStrategy). A batch
	// succeeds when all its Machines run the revision. Default: one batch of
	// everything after the canary.
	// +kubebuilder:validation:MaxItems=100
	// +optional
	Batches []intstr.IntOrString `json:"batches,omitempty"`

	// MaxParallel is how many Machines of a batch apply at once (0: the whole batch).
	// +kubebuilder:validation:Minimum=0
	// +optional
	MaxParallel int32 `json:"maxParallel,omitempty"`

	// MaxUnavailable is how many Machines of the fleet may be unavailable (applying,
	// or their configuration not Ready) before the rollout moves another: a number
	// (at least 1) or a percentage (rounded down, at least 1 Machine). Unset: only
	// the batch and maxParallel bound it.
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`

	// PauseBetweenBatches is how long the rollout waits after a batch succeeded
	// before the next one starts (with promotion Manual, the promote is acted on
	// once the pause is over).
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern="^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$"
	// +optional
	PauseBetweenBatches *metav1.Duration `json:"pauseBetweenBatches,omitempty"`

	// Promotion: Automatic (default) or Manual (the rollout waits for the promote
	// annotation after the canary and after every batch).
	// +kubebuilder:default=Automatic
	// +optional
	Promotion Promotion `json:"promotion,omitempty"`

	// OnFailure is what happens when a Machine fails the new revision (its apply
	// fails, is rolled back, or a health check fails, or its configuration stalls on
	// its spec): Pause (default: phase Paused, reason BatchFailed, Stalled=True; the
	// failed Machines keep the revision and retry with their own backoff) or Revert
	// (phase Reverting, then Reverted: the Machines the rollout moved that ran
	// something before get it back; a reverted revision is not rolled out again
	// until the commit or template changes, or a promote).
	// +kubebuilder:default=Pause
	// +optional
	OnFailure FailurePolicy `json:"onFailure,omitempty"`
}

// RolloutPhase is where a fleet's rollout stands.
// +kubebuilder:validation:Enum=Progressing;Paused;Reverting;Reverted;Completed
type RolloutPhase string

const (
	RolloutProgressing RolloutPhase = "Progressing"
	RolloutPaused      RolloutPhase = "Paused"
	RolloutReverting   RolloutPhase = "Reverting"
	RolloutReverted    RolloutPhase = "Reverted"
	RolloutCompleted   RolloutPhase = "Completed"
)

// NixosFleetStatus is what the fleet's Machines run and where its rollout stands.
type NixosFleetStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Selected is how many Machines the selector matches.
	// +kubebuilder:default=0
	// +optional
	Selected int32 `json:"selected"`
	// Updated is how many run the rollout's revision (applied and Ready).
	// +kubebuilder:default=0
	// +optional
	Updated int32 `json:"updated"`
	// Ready is how many have a Ready configuration of the fleet, on any revision.
	// +kubebuilder:default=0
	// +optional
	Ready int32 `json:"ready"`
	// Failed is how many failed the rollout's revision.
	// +kubebuilder:default=0
	// +optional
	Failed int32 `json:"failed"`

	// LatestCommit is what template.ref resolved to at the last poll.
	// +optional
	LatestCommit string `json:"latestCommit,omitempty"`

	// Rollout is the current (or last) rollout.
	// +optional
	Rollout *RolloutStatus `json:"rollout,omitempty"`

	// Excluded lists the selected Machines that have no configuration of the fleet
	// and why (another configuration holds the Machine, its flake attribute is not
	// valid), at most 50.
	// +kubebuilder:validation:MaxItems=50
	// +optional
	Excluded []ExcludedMachine `json:"excluded,omitempty"`

	// Conditions: Ready (always), Reconciling and Stalled (only while true).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// ExcludedMachine is a selected Machine the fleet does not drive.
type ExcludedMachine struct {
	// Name of the Machine.
	Name string `json:"name"`
	// Reason, a CamelCase word (MachineInUse, InvalidFlake).
	Reason string `json:"reason"`
	// Message says more.
	// +optional
	Message string `json:"message,omitempty"`
}

// RolloutStatus is one rollout: the move of the fleet to one revision.
type RolloutStatus struct {
	// Revision identifies the commit and template rolled out (a hash of both).
	Revision string `json:"revision"`
	// Commit rolled out.
	Commit string `json:"commit"`
	// CommitShort is its first 12 hex digits, for display.
	// +optional
	CommitShort string `json:"commitShort,omitempty"`
	// Phase: Progressing, Paused, Reverting, Reverted or Completed.
	Phase RolloutPhase `json:"phase"`
	// Reason says why the phase is what it is: Progressing, PauseBetweenBatches,
	// MaxUnavailable, AwaitingPromotion, Paused (spec.paused), BatchFailed,
	// Reverting, RevertFailed, Reverted, Succeeded, MachinesFailed (completed, but
	// Machines failed the revision and a promote went past them).
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says it for a person.
	// +optional
	Message string `json:"message,omitempty"`
	// StartTime is when the rollout began.
	StartTime metav1.Time `json:"startTime"`
	// FinishTime is when it completed or was reverted.
	// +optional
	FinishTime *metav1.Time `json:"finishTime,omitempty"`
	// Supersedes is the revision of the rollout this one replaced while it ran.
	// +optional
	Supersedes string `json:"supersedes,omitempty"`
	// LastHandledPromote is the value of the promote annotation last acted on.
	// +optional
	LastHandledPromote string `json:"lastHandledPromote,omitempty"`
	// Batches are the steps so far, the canary first; at most 100 are kept (the
	// canary and the latest).
	// +kubebuilder:validation:MaxItems=1000
	// +optional
	Batches []BatchStatus `json:"batches,omitempty"`
}

// BatchStatus is the progress of one step of a rollout.
type BatchStatus struct {
	// Name: "canary", or the batch's number from 1.
	Name string `json:"name"`
	// Size is how many Machines the batch moves.
	Size int32 `json:"size"`
	// Updated is how many of them run the revision.
	Updated int32 `json:"updated"`
	// Failed is how many failed it.
	Failed int32 `json:"failed"`
	// Phase: Progressing, Succeeded or Failed.
	// +kubebuilder:validation:Enum=Progressing;Succeeded;Failed
	Phase string `json:"phase"`
	// StartTime is when its first Machine was moved.
	StartTime metav1.Time `json:"startTime"`
	// FinishTime is when its last Machine was done.
	// +optional
	FinishTime *metav1.Time `json:"finishTime,omitempty"`
}

// NixosFleet is a set of Machines, selected by label, that run NixOS configurations
// made from one template, with new revisions rolled out in batches.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=nixfleet,categories=nio
// +kubebuilder:printcolumn:name="Selected",type=integer,JSONPath=`.status.selected`
// +kubebuilder:printcolumn:name="Updated",type=integer,JSONPath=`.status.updated`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.ready`
// +kubebuilder:printcolumn:name="Failed",type=integer,JSONPath=`.status.failed`
// +kubebuilder:printcolumn:name="Commit",type=string,JSONPath=`.status.rollout.commitShort`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.rollout.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type NixosFleet struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// Spec says which Machines run what, and how new revisions reach them.
	//
	// The fleet owns one NixosConfiguration per selected Machine, named
	// `<fleet>-<machine>` (cut and ended with a hash when too long), whose spec is the
	// template with the flake's placeholders filled and ref pinned to the commit the
	// fleet resolved; deleting the fleet deletes them (owner references), and a
	// Machine that stops matching the selector has its configuration deleted (its
	// onRemoveFlake is applied). A Machine another NixosConfiguration already names
	// is never taken (status.excluded, reason MachineInUse). A revision is a commit
	// of template.ref together with the template: a change of either starts a
	// rollout.
	// +required
	Spec NixosFleetSpec `json:"spec"`
	// Status is what the Machines run and where the rollout stands.
	// +optional
	Status NixosFleetStatus `json:"status,omitempty"`
}

// NixosFleetList is a list of NixosFleets.
// +kubebuilder:object:root=true
type NixosFleetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []NixosFleet `json:"items"`
}

package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
)

// Reasons a selected Machine is not driven by the fleet (status.excluded).
const (
	ReasonInvalidFlake = "InvalidFlake"
	// ReasonMachineInUse (conditions.go) also: another configuration holds the Machine.
)

const (
	// maxExcluded bounds status.excluded.
	maxExcluded = 50
	// maxPreviousBytes bounds FleetPreviousAnnotation (annotations share 256 KiB):
	// a larger spec is not saved, and a revert leaves that Machine as it is.
	maxPreviousBytes = 128 << 10
	// maxFlakeLength is NixosConfiguration.flake's MaxLength.
	maxFlakeLength = 512
)

// childFlake is NixosConfiguration.flake's CEL rule.
var childFlake = regexp.MustCompile(`^[^#\s]+#[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// fleetPrevious is FleetPreviousAnnotation's value: what a revert restores.
type fleetPrevious struct {
	Revision string                     `json:"revision"`
	Spec     nio.NixosConfigurationSpec `json:"spec"`
}

// fleetRevision identifies what a fleet rolls out: the commit and the template.
func fleetRevision(commit string, t nio.FleetTemplate) (string, error) {
	data, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("template: %w", err)
	}
	h := sha256.New()
	h.Write([]byte(commit))
	h.Write([]byte{0})
	h.Write(data)
	return hex.EncodeToString(h.Sum(nil))[:10], nil
}

// fleetChildName is the name of the fleet's configuration for a Machine:
// `<fleet>-<machine>`, cut and ended with a hash when that is no valid name.
func fleetChildName(fleet, machine string) string {
	name := fleet + "-" + machine
	if len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	return hashedName(name, validation.DNS1123SubdomainMaxLength)
}

// fleetLabelValue is a name as a label value: itself, or cut and ended with a hash
// when longer than a label value may be.
func fleetLabelValue(name string) string {
	if len(validation.IsValidLabelValue(name)) == 0 {
		return name
	}
	return hashedName(name, validation.LabelValueMaxLength)
}

// hashedName cuts s (made of DNS-name characters) to fit limit with a hash of the
// whole, so distinct long names stay distinct.
func hashedName(s string, limit int) string {
	sum := sha256.Sum256([]byte(s))
	suffix := hex.EncodeToString(sum[:])[:10]
	prefix := strings.TrimRight(s[:min(len(s), limit-len(suffix)-1)], "-.")
	return prefix + "-" + suffix
}

// renderFlake fills the template's flake placeholders for a Machine; the result must
// be a valid NixosConfiguration flake.
func renderFlake(tmpl string, m *nio.Machine) (string, error) {
	flake := strings.NewReplacer("{name}", m.Name, "{hostname}", m.Spec.Hostname).Replace(tmpl)
	if len(flake) > maxFlakeLength || !childFlake.MatchString(flake) {
		return flake, fmt.Errorf("template.flake %q gives %q for Machine %s, which is not <dir>#<attr> (attr: letters, digits, _ . -, not starting with . or -)", tmpl, flake, m.Name)
	}
	return flake, nil
}

// fleetChildSpec is the spec of the fleet's configuration for a Machine at commit.
func fleetChildSpec(fleet *nio.NixosFleet, m *nio.Machine, flake, commit string) nio.NixosConfigurationSpec {
	t := fleet.Spec.Template.ConfigurationTemplate.DeepCopy()
	t.Ref = commit
	return nio.NixosConfigurationSpec{Flake: flake, MachineRef: nio.LocalObjectReference{Name: m.Name}, ConfigurationTemplate: *t}
}

// controlledBy tells whether the fleet is o's controller.
func controlledBy(o metav1.Object, fleet *nio.NixosFleet) bool {
	ref := metav1.GetControllerOf(o)
	return ref != nil && ref.UID == fleet.UID
}

// fleetOwnerName is the name of the NixosFleet controlling o ("" when none does).
func fleetOwnerName(o metav1.Object) string {
	ref := metav1.GetControllerOf(o)
	if ref == nil || ref.Kind != "NixosFleet" || !strings.HasPrefix(ref.APIVersion, nio.GroupVersion.Group+"/") {
		return ""
	}
	return ref.Name
}

// childUpdated: the Machine runs the configuration's current spec — applied at this
// generation, Ready, nothing in flight.
func childUpdated(c *nio.NixosConfiguration) bool {
	st := c.Status
	ready := meta.FindStatusCondition(st.Conditions, nio.ConditionReady)
	return st.CurrentOperation == nil && st.AppliedCommit != "" && st.AppliedCommit == c.Spec.Ref &&
		st.AppliedSpecGeneration == c.Generation && ready != nil && ready.Status == metav1.ConditionTrue &&
		ready.ObservedGeneration == c.Generation
}

// childFailed: the configuration's current spec failed on its Machine — the newest
// operation, an apply of its commit at this generation, failed or was rolled back
// and none runs now; or the configuration stalls on its spec (a configuration
// error). Its message is the configuration's Ready reason and message.
func childFailed(c *nio.NixosConfiguration) (bool, string) {
	st := c.Status
	if st.CurrentOperation != nil || st.ObservedGeneration != c.Generation {
		return false, ""
	}
	message := func() string {
		if ready := meta.FindStatusCondition(st.Conditions, nio.ConditionReady); ready != nil {
			return ready.Reason + ": " + ready.Message
		}
		return ""
	}
	if s := meta.FindStatusCondition(st.Conditions, nio.ConditionStalled); s != nil && s.Status == metav1.ConditionTrue &&
		s.ObservedGeneration == c.Generation && s.Reason != ReasonMachineInUse {
		return true, s.Reason + ": " + s.Message
	}
	applied := meta.FindStatusCondition(st.Conditions, nio.ConditionApplied)
	if applied == nil || applied.Status != metav1.ConditionFalse || applied.ObservedGeneration != c.Generation || len(st.History) == 0 {
		return false, ""
	}
	h := st.History[0]
	if h.Commit != c.Spec.Ref || h.Action == "remove" || (h.Result != nio.ResultFailed && h.Result != nio.ResultRolledBack) {
		return false, ""
	}
	return true, message()
}

// childReady: the configuration is Ready (on whatever it runs).
func childReady(c *nio.NixosConfiguration) bool {
	return meta.IsStatusConditionTrue(c.Status.Conditions, nio.ConditionReady)
}

// childAvailable: Ready at its current spec and nothing in flight.
func childAvailable(c *nio.NixosConfiguration) bool {
	ready := meta.FindStatusCondition(c.Status.Conditions, nio.ConditionReady)
	return c.Status.CurrentOperation == nil && ready != nil && ready.Status == metav1.ConditionTrue && ready.ObservedGeneration == c.Generation
}

// previousOf reads a configuration's FleetPreviousAnnotation (nil: none, or unreadable).
func previousOf(c *nio.NixosConfiguration) *fleetPrevious {
	v, ok := c.Annotations[nio.FleetPreviousAnnotation]
	if !ok {
		return nil
	}
	var p fleetPrevious
	if err := json.Unmarshal([]byte(v), &p); err != nil || p.Revision == "" {
		return nil
	}
	return &p
}

// fleetView is the fleet as one pass finds it.
type fleetView struct {
	// members are the Machines the fleet drives, by name.
	members []fleetMember
	// machines, children (the fleet's own configurations) and desired (their specs at
	// the target revision) are by Machine name.
	machines map[string]*nio.Machine
	children map[string]*nio.NixosConfiguration
	desired  map[string]nio.NixosConfigurationSpec
	// selected counts the Machines the selector matches.
	selected int
	excluded []nio.ExcludedMachine
	// leaving are the fleet's configurations whose Machine is no longer selected.
	leaving []*nio.NixosConfiguration
}

// view reads the fleet's Machines and configurations (children: the fleet's own).
func (r *NixosFleetReconciler) view(ctx context.Context, fleet *nio.NixosFleet, commit, revision string, children []nio.NixosConfiguration) (*fleetView, error) {
	sel, err := metav1.LabelSelectorAsSelector(&fleet.Spec.MachineSelector)
	if err != nil {
		return nil, outcome.Stalled(ReasonInvalidConfig, "machineSelector: %v", err)
	}
	var list nio.MachineList
	// Not copied (read only): a pass runs on every status change of the fleet's
	// configurations.
	if err := r.List(ctx, &list, client.InNamespace(fleet.Namespace), client.MatchingLabelsSelector{Selector: sel},
		client.UnsafeDisableDeepCopy); err != nil {
		return nil, fmt.Errorf("list Machines: %w", err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })

	own := map[string]*nio.NixosConfiguration{}
	for i := range children {
		c := &children[i]
		m := c.Spec.MachineRef.Name
		if prev, ok := own[m]; !ok || c.Name == fleetChildName(fleet.Name, m) && prev.Name != c.Name {
			own[m] = c
		}
	}
	v := &fleetView{machines: map[string]*nio.Machine{}, children: map[string]*nio.NixosConfiguration{}, desired: map[string]nio.NixosConfigurationSpec{}}
	keep := map[string]bool{} // children of selected Machines
	for i := range list.Items {
		m := &list.Items[i]
		if !m.DeletionTimestamp.IsZero() {
			continue
		}
		v.selected++
		child := own[m.Name]
		if child != nil {
			keep[child.Name] = true
		}
		flake, err := renderFlake(fleet.Spec.Template.Flake, m)
		if err != nil {
			msg := err.Error()
			if child != nil {
				msg += fmt.Sprintf("; its NixosConfiguration %s is kept as it is", child.Name)
			}
			v.exclude(m.Name, ReasonInvalidFlake, msg)
			continue
		}
		if child == nil {
			why, err := r.inUse(ctx, fleet, m)
			if err != nil {
				return nil, err
			}
			if why != "" {
				v.exclude(m.Name, ReasonMachineInUse, why)
				continue
			}
		} else if s := meta.FindStatusCondition(child.Status.Conditions, nio.ConditionStalled); s != nil && s.Status == metav1.ConditionTrue && s.Reason == ReasonMachineInUse {
			// The configuration lost the Machine to another one (the oldest wins): it
			// takes over when the Machine is free.
			v.exclude(m.Name, ReasonMachineInUse, s.Message)
			continue
		}
		v.machines[m.Name] = m
		v.desired[m.Name] = fleetChildSpec(fleet, m, flake, commit)
		mem := fleetMember{Name: m.Name}
		if child != nil {
			v.children[m.Name] = child
			mem.Child = true
			mem.OnTarget = child.Annotations[nio.FleetRevisionAnnotation] == revision && child.Spec.Flake == flake &&
				child.Spec.Ref == commit && child.Spec.MachineRef.Name == m.Name
			mem.Batch = child.Annotations[nio.FleetBatchAnnotation]
			if prev := previousOf(child); prev != nil {
				mem.Previous = prev.Revision
			}
			mem.Updated = childUpdated(child)
			mem.Failed, mem.Message = childFailed(child)
			if ready := meta.FindStatusCondition(child.Status.Conditions, nio.ConditionReady); !mem.Failed && ready != nil && ready.Status == metav1.ConditionFalse {
				mem.Message = ready.Reason + ": " + ready.Message // why it is not done (unreachable, retrying)
			}
			mem.Ready = childReady(child)
			mem.Unavailable = !childAvailable(child)
		}
		v.members = append(v.members, mem)
	}
	for i := range children {
		if c := &children[i]; !keep[c.Name] && c.DeletionTimestamp.IsZero() {
			v.leaving = append(v.leaving, c)
		}
	}
	return v, nil
}

func (v *fleetView) exclude(machine, reason, message string) {
	if len(v.excluded) < maxExcluded {
		v.excluded = append(v.excluded, nio.ExcludedMachine{Name: machine, Reason: reason, Message: truncate(message, 512)})
	}
}

// inUse says why a Machine the fleet has no configuration for is not the fleet's to
// take ("": it is): another configuration names it, or the fleet's name for its
// configuration is taken.
func (r *NixosFleetReconciler) inUse(ctx context.Context, fleet *nio.NixosFleet, m *nio.Machine) (string, error) {
	var list nio.NixosConfigurationList
	if err := r.List(ctx, &list, client.InNamespace(fleet.Namespace), client.MatchingFields{indexMachineRef: m.Name}); err != nil {
		return "", fmt.Errorf("list configurations of Machine %s: %w", m.Name, err)
	}
	for i := range list.Items {
		if c := &list.Items[i]; c.DeletionTimestamp.IsZero() && !controlledBy(c, fleet) {
			return fmt.Sprintf("Machine %s is taken by NixosConfiguration %s, which is not this fleet's: delete it for the fleet to take the Machine", m.Name, c.Name), nil
		}
	}
	name := fleetChildName(fleet.Name, m.Name)
	c := &nio.NixosConfiguration{}
	switch err := r.Get(ctx, types.NamespacedName{Namespace: fleet.Namespace, Name: name}, c); {
	case apierrors.IsNotFound(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("get NixosConfiguration %s: %w", name, err)
	case !controlledBy(c, fleet):
		return fmt.Sprintf("NixosConfiguration %s (the fleet's name for Machine %s's configuration) exists and is not this fleet's", name, m.Name), nil
	}
	return "", nil
}

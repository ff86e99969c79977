package controller

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// probedMachine is a Machine as the Machine controller leaves it after a probe that
// came after the last apply.
func probedMachine() *nio.Machine {
	applied := metav1.NewTime(time.Unix(1000, 0))
	seen := metav1.NewTime(time.Unix(2000, 0))
	return &nio.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: "m", Generation: 1, Labels: map[string]string{"role": "web"}},
		Status: nio.MachineStatus{
			Discoverable: true, AppliedConfiguration: "c", LastAppliedTime: &applied,
			Agent:  &nio.AgentStatus{Connected: true, Version: "1", LastSeenTime: &seen},
			System: &nio.SystemStatus{CurrentSystem: "/nix/store/a", Generation: 3},
			Conditions: []metav1.Condition{{Type: nio.ConditionReachable, Status: metav1.ConditionTrue,
				Reason: ReasonReachable, Message: "reachable over agent", LastTransitionTime: seen}},
		},
	}
}

// TestMachineHeartbeatPassesNoWatch: an update moving only lastSeenTime (and the
// condition's message) enqueues neither the configuration nor the fleet; one of the
// fields a configuration's pass reads does.
func TestMachineHeartbeatPassesNoWatch(t *testing.T) {
	heartbeat := func(m *nio.Machine) {
		later := metav1.NewTime(m.Status.Agent.LastSeenTime.Add(time.Minute))
		m.Status.Agent.LastSeenTime = &later
		m.Status.Conditions[0].Message = "reachable over the agent"
		m.ResourceVersion = "2"
	}
	for _, tc := range []struct {
		name                string
		change              func(*nio.Machine)
		wantConfig, wantFlt bool
	}{
		{"heartbeat", heartbeat, false, false},
		{"another system", func(m *nio.Machine) { m.Status.System.CurrentSystem = "/nix/store/b" }, true, false},
		{"first answer after an apply", func(m *nio.Machine) {
			m.Status.LastAppliedTime = &metav1.Time{Time: m.Status.Agent.LastSeenTime.Add(time.Second)}
		}, true, false},
		{"agent gone", func(m *nio.Machine) { m.Status.Agent.Connected = false }, true, false},
		{"host gone", func(m *nio.Machine) { m.Status.Discoverable = false }, true, false},
		{"spec", func(m *nio.Machine) { m.Generation++ }, true, true},
		{"labels", func(m *nio.Machine) { m.Labels = map[string]string{"role": "db"} }, false, true},
		{"new facts", func(m *nio.Machine) {
			m.Status.Facts = &nio.FactsSummary{ReportConfigMap: "m-facter"}
			m.Status.LastHardwareScanTime = &metav1.Time{Time: time.Unix(3000, 0)}
		}, true, false},
		{"owner changed", func(m *nio.Machine) { m.Status.AppliedConfiguration = "other" }, true, false},
		{"host key recorded", func(m *nio.Machine) { m.Status.SSHHostKeyFingerprint = "SHA256:x" }, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old := probedMachine()
			n := old.DeepCopy()
			tc.change(n)
			e := event.UpdateEvent{ObjectOld: old, ObjectNew: n}
			if got := machineReadChanged.Update(e); got != tc.wantConfig {
				t.Errorf("configuration watch passes it: %v, want %v", got, tc.wantConfig)
			}
			if got := machineSelectionChanged.Update(e); got != tc.wantFlt {
				t.Errorf("fleet watch passes it: %v, want %v", got, tc.wantFlt)
			}
		})
	}
}

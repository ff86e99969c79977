package main

import (
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

var goldenNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	commitA = "3f2a9c41b7e0aa11bb22cc33dd44ee55ff667788"
	commitB = "9b1d0e7c55aa11bb22cc33dd44ee55ff66778899"
)

// seedGet writes a Machine, two configurations and a fleet with the statuses the
// operator writes, through the real API server (status subresources included).
func seedGet(t *testing.T, ns string) {
	t.Helper()
	ready := func(status metav1.ConditionStatus, reason, msg string) []metav1.Condition {
		return []metav1.Condition{{Type: "Ready", Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.NewTime(goldenNow)}}
	}
	m := &nio.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "worker-01"}, Spec: nio.MachineSpec{Hostname: "worker-01", IPAddress: "192.168.1.100"}}
	m2 := &nio.Machine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "worker-02"}, Spec: nio.MachineSpec{Hostname: "worker-02", IPAddress: "192.168.1.101"}}
	create(t, m, m2)
	m.Status = nio.MachineStatus{AppliedConfiguration: "worker-config", AppliedCommit: commitA, HasConfiguration: true,
		Agent:      &nio.AgentStatus{Connected: true, Version: "0.1.0", CertificateNotAfter: &metav1.Time{Time: goldenNow.Add(60 * 24 * time.Hour)}},
		System:     &nio.SystemStatus{Generation: 42, NeedsReboot: true},
		Conditions: ready(metav1.ConditionTrue, "Succeeded", "Applied")}
	m2.Status = nio.MachineStatus{Agent: &nio.AgentStatus{Connected: false, Version: "0.1.0", CertificateNotAfter: &metav1.Time{Time: goldenNow.Add(5 * 24 * time.Hour)}},
		Conditions: ready(metav1.ConditionFalse, "HostUnreachable", "Machine worker-02 unreachable: dial tcp 192.168.1.101:22: connection refused")}
	updateStatus(t, m, m2)

	c := configuration(ns, "worker-config", "worker-01")
	c2 := configuration(ns, "worker-02-config", "worker-02")
	create(t, c, c2)
	c.Status = nio.NixosConfigurationStatus{LatestCommit: commitB, AppliedCommit: commitA,
		History: []nio.HistoryEntry{
			{Commit: commitB, Action: "switch", Transport: nio.TransportAgent, StartTime: metav1.NewTime(goldenNow), Result: nio.ResultFailed, Generation: 42, Message: "build failed: error: attribute 'nginx' missing"},
			{Commit: commitA, Action: "switch", Transport: nio.TransportAgent, StartTime: metav1.NewTime(goldenNow.Add(-time.Hour)), Result: nio.ResultSucceeded, Generation: 42},
		},
		Conditions: ready(metav1.ConditionFalse, "BuildFailed", "Applying revision main@sha1:9b1d0e7c55aa failed: build failed")}
	c2.Status = nio.NixosConfigurationStatus{LatestCommit: commitA,
		History:    []nio.HistoryEntry{{Commit: commitA, Action: "switch", Transport: nio.TransportSSH, StartTime: metav1.NewTime(goldenNow), Result: nio.ResultSucceeded, Generation: 7}},
		Conditions: ready(metav1.ConditionTrue, "Succeeded", "Applied revision main@sha1:3f2a9c41b7e0")}
	updateStatus(t, c, c2)

	f := &nio.NixosFleet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: nio.NixosFleetSpec{
		MachineSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "web"}},
		Template:        nio.FleetTemplate{Flake: ".#{hostname}", ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://git.example.org/configs.git"}}}}
	create(t, f)
	f.Status = nio.NixosFleetStatus{Selected: 3, Updated: 1, Ready: 2, Failed: 1, LatestCommit: commitB,
		Rollout:    &nio.RolloutStatus{Revision: "r1", Commit: commitB, Phase: nio.RolloutPaused, Reason: "BatchFailed", Message: "canary failed: Machine web-01 RolledBack", StartTime: metav1.NewTime(goldenNow)},
		Conditions: ready(metav1.ConditionFalse, "BatchFailed", "rollout paused")}
	updateStatus(t, f)
}

func configuration(ns, name, machine string) *nio.NixosConfiguration {
	return &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: nio.NixosConfigurationSpec{
		Flake: ".#worker", MachineRef: nio.LocalObjectReference{Name: machine},
		ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://git.example.org/configs.git"}}}
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
}

func updateStatus(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Status().Update(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update)", err, t.Name())
	}
	if got != string(want) {
		t.Fatalf("%s differs (go test -run %s -update rewrites it):\n--- got\n%s--- want\n%s", path, t.Name(), got, want)
	}
}

func TestGetPrintsOneTableOfMachinesConfigurationsAndFleets(t *testing.T) {
	ns := env.Namespace(t, "get")
	seedGet(t, ns)
	defer func(f func() time.Time) { clockNow = f }(clockNow)
	clockNow = func() time.Time { return goldenNow }

	// Piped: no colour.
	r := runNio(t, nil, "--kubeconfig", env.Kubeconfig, "-n", ns, "get")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.err)
	}
	golden(t, "get.golden", r.stdout)
	if strings.Contains(r.stdout, "\x1b[") {
		t.Error("piped output has colour codes")
	}
	r = runNio(t, nil, "--kubeconfig", env.Kubeconfig, "-n", ns, "get", "--color", "always")
	golden(t, "get-color.golden", r.stdout)
	if r := runNio(t, map[string]string{"NO_COLOR": "1"}, "--kubeconfig", env.Kubeconfig, "-n", ns, "get"); strings.Contains(r.stdout, "\x1b[") {
		t.Error("NO_COLOR output has colour codes")
	}

	r = runNio(t, nil, "--kubeconfig", env.Kubeconfig, "-n", ns, "get", "-o", "json")
	var rows []row
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("-o json: %v\n%s", err, r.stdout)
	}
	if len(rows) != 5 || rows[0].Name != "worker-01" || !rows[0].NeedsReboot || rows[0].LatestCommit != commitB || rows[0].Transport != "agent" {
		t.Fatalf("-o json rows: %+v", rows)
	}
}

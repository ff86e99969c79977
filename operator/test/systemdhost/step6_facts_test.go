//go:build e2e

package systemdhost

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The Facts RPC runs nixos-facter (here its stand-in, which reports what it sees)
// outside the agent's sandbox, through systemd-run: the report names a transient
// unit, not nio-agent.service, and sees the host's devices, not PrivateDevices'
// handful. The Machine's summary is the host's CPUs and memory.
func TestFactsSeeTheHostFromOutsideTheSandbox(t *testing.T) {
	setUp(t)
	ctx := testContext(t, 3*time.Minute)
	// The first report was taken over SSH, before the agent had its identity: ask
	// for a new one, which the connected agent takes.
	if err := waitMachine(ctx, "agent connected", time.Minute, func(m *nio.Machine) (bool, string) {
		return m.Status.Agent != nil && m.Status.Agent.Connected, fmt.Sprintf("agent %+v", m.Status.Agent)
	}); err != nil {
		t.Fatal(err)
	}
	asked := time.Now().Add(-time.Second) // the status has second precision
	if _, err := stack.Control.Run(ctx, "annotate", "--overwrite", "machine", machineName, "-n", namespace,
		"nio.homystack.com/rescan="+asked.Format(time.RFC3339Nano)); err != nil {
		t.Fatal(err)
	}
	var m *nio.Machine
	if err := waitMachine(ctx, "a new facts report", 2*time.Minute, func(got *nio.Machine) (bool, string) {
		m = got
		s := got.Status
		return s.Facts != nil && s.Facts.ReportConfigMap != "" && s.LastHardwareScanTime != nil && s.LastHardwareScanTime.After(asked),
			fmt.Sprintf("facts %+v at %v", s.Facts, s.LastHardwareScanTime)
	}); err != nil {
		t.Fatal(err)
	}
	cpus := hostInt(t, ctx, `grep -c '^processor' /proc/cpuinfo`)
	mem := hostInt(t, ctx, `awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo`)
	f := m.Status.Facts
	if int(f.CPUs) != cpus || f.MemoryBytes != int64(mem) || f.Virtualisation != "systemd-nspawn" {
		t.Errorf("facts %+v, want %d CPUs, %d bytes, systemd-nspawn", *f, cpus, mem)
	}

	cm := &corev1.ConfigMap{}
	if err := stack.Control.Admin.Get(ctx, client.ObjectKey{Namespace: namespace, Name: f.ReportConfigMap}, cm); err != nil {
		t.Fatal(err)
	}
	var report struct {
		Standin struct {
			Cgroup  string `json:"cgroup"`
			Devices int    `json:"devices"`
		} `json:"nio_standin"`
	}
	for _, v := range cm.Data {
		if err := json.Unmarshal([]byte(v), &report); err != nil {
			t.Fatalf("report: %v", err)
		}
	}
	if strings.Contains(report.Standin.Cgroup, "nio-agent.service") || !strings.HasSuffix(report.Standin.Cgroup, ".service") {
		t.Errorf("nixos-facter ran in cgroup %q, want a transient unit outside nio-agent.service", report.Standin.Cgroup)
	}
	hostDevices := hostInt(t, ctx, `ls /dev | wc -l`)
	if report.Standin.Devices != hostDevices {
		t.Errorf("nixos-facter saw %d entries in /dev, the host has %d", report.Standin.Devices, hostDevices)
	}
}

func hostInt(t *testing.T, ctx context.Context, script string) int {
	t.Helper()
	out, err := host.Shell(ctx, script)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

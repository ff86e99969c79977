//go:build e2e

package systemdhost

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/test/harness"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The agent is SIGKILLed in the confirm window, while the operator stands still
// (paused: it has not confirmed yet). systemd restarts the agent, which finds the
// unconfirmed operation in its journal and opens a fresh confirm window. Either the
// operator, back, re-attaches and confirms — the new system stays and is recorded —
// or nobody confirms and the agent goes back to the previous generation, which the
// operator records as RolledBack. Never an unconfirmed system left as if applied.
func TestAgentKilledInTheConfirmWindow(t *testing.T) {
	setUp(t)

	t.Run("confirmed after the restart", func(t *testing.T) {
		ctx := testContext(t, 6*time.Minute)
		p := killInConfirmWindow(t, ctx)
		if err := stack.Operator.Resume(); err != nil {
			t.Fatal(err)
		}
		if err := waitApplied(ctx, p.commit); err != nil {
			t.Fatal(err)
		}
		conf := configurationNow(t, ctx)
		if h := historyOf(conf, p.commit); h == nil || h.Result != nio.ResultSucceeded {
			t.Errorf("history entry of %s: %+v, want Succeeded", p.commit, h)
		}
		current, err := host.Link(ctx, "/run/current-system")
		if err != nil || current != conf.Status.AppliedSystem || !strings.HasSuffix(current, "-host-"+p.version) {
			t.Errorf("/run/current-system = %q (%v), want the confirmed %q", current, err, conf.Status.AppliedSystem)
		}
	})

	t.Run("rolled back with nobody to confirm", func(t *testing.T) {
		ctx := testContext(t, 6*time.Minute)
		before := configurationNow(t, ctx)
		prevCommit, prevSystem := before.Status.AppliedCommit, before.Status.AppliedSystem
		p := killInConfirmWindow(t, ctx)
		// Suspended before the operator is back, so it records the outcome of the
		// operation it was in and starts no retry.
		if err := setSuspend(ctx, true); err != nil {
			t.Fatal(err)
		}
		// Resumed, the configuration retries the commit (its activation is held only
		// once), and the next test starts from a settled host.
		t.Cleanup(func() {
			ctx := context.Background()
			if err := setSuspend(ctx, false); err != nil {
				t.Error(err)
			}
			if err := waitApplied(ctx, p.commit); err != nil {
				t.Errorf("the retry after the rollback: %v", err)
			}
		})
		if err := harness.WaitFor(ctx, "the host back on "+prevSystem, confirmWindow+time.Minute, func() (bool, string, error) {
			current, err := host.Link(ctx, "/run/current-system")
			return current == prevSystem, current, err
		}); err != nil {
			t.Fatal(err)
		}
		if err := stack.Operator.Resume(); err != nil {
			t.Fatal(err)
		}
		if err := waitConfiguration(ctx, "RolledBack recorded", 2*time.Minute, func(c *nio.NixosConfiguration) (bool, string) {
			ready := meta(c.Status.Conditions, nio.ConditionReady)
			h := historyOf(c, p.commit)
			return h != nil && h.Result == nio.ResultRolledBack && ready != nil && ready.Reason == "RolledBack",
				fmt.Sprintf("history %+v; %s", h, readyText(c.Status.Conditions))
		}); err != nil {
			t.Fatal(err)
		}
		conf := configurationNow(t, ctx)
		if conf.Status.AppliedCommit != prevCommit || conf.Status.LastAttemptedCommit != p.commit {
			t.Errorf("appliedCommit %s lastAttemptedCommit %s, want %s and %s", conf.Status.AppliedCommit, conf.Status.LastAttemptedCommit, prevCommit, p.commit)
		}
		if m := machineNow(t, ctx); m.Status.AppliedCommit != prevCommit {
			t.Errorf("Machine appliedCommit %s, want the previous %s", m.Status.AppliedCommit, prevCommit)
		}
		profile, err := host.Link(ctx, "/nix/var/nix/profiles/system")
		if err != nil || profile != prevSystem {
			t.Errorf("system profile %q (%v), want the previous generation's %q", profile, err, prevSystem)
		}
	})
}

// killInConfirmWindow pushes a held version, pauses the operator once the host is
// about to activate, lets the activation finish, SIGKILLs the agent in its confirm
// window and waits until systemd has restarted it and it has recovered the
// operation. The operator is left paused.
func killInConfirmWindow(t *testing.T, ctx context.Context) pushed {
	t.Helper()
	p := mustPush(t, map[string]string{varHold: "yes"})
	if _, err := waitActivation(ctx, p, "hold", "switch"); err != nil {
		t.Fatal(err)
	}
	if err := stack.Operator.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stack.Operator.Resume() })
	pid, err := host.AgentPID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	release(t, ctx)
	if err := harness.WaitFor(ctx, "the agent awaiting Confirm for "+p.commit, time.Minute, func() (bool, string, error) {
		j, err := readJournal()
		return j.Step == "awaiting-confirm" && j.Commit() == p.commit, fmt.Sprintf("%+v", j), err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Exec(ctx, "systemctl", "kill", "--signal=SIGKILL", "nio-agent.service"); err != nil {
		t.Fatal(err)
	}
	if err := harness.WaitFor(ctx, "systemd restarted the agent and it recovered the operation", time.Minute, func() (bool, string, error) {
		now, err := host.AgentPID(ctx)
		if err != nil || now == 0 || now == pid {
			return false, fmt.Sprintf("pid %d", now), err
		}
		j, err := host.AgentJournal(ctx)
		return strings.Count(j, "recovering operation interrupted by an agent restart") > recoveries, "no recovery line yet", err
	}); err != nil {
		t.Fatal(err)
	}
	recoveries++
	return p
}

// recoveries counts the agent's recoveries the suite has caused.
var recoveries int

// agentJournal is the part of the agent's operation journal the tests read.
type agentJournal struct {
	Step   string `json:"step"`
	Header struct {
		Commit string `json:"commit"`
	} `json:"header"`
}

func (j agentJournal) Commit() string { return j.Header.Commit }

func readJournal() (agentJournal, error) {
	var j agentJournal
	b, err := os.ReadFile(host.Path(stateDir + "/journal.json"))
	if os.IsNotExist(err) {
		return j, nil
	}
	if err != nil {
		return j, err
	}
	return j, json.Unmarshal(b, &j)
}

func setSuspend(ctx context.Context, on bool) error {
	_, err := stack.Control.Quiet(ctx, "patch", "nixosconfiguration", configName, "-n", namespace,
		"--type=merge", "-p", fmt.Sprintf(`{"spec":{"suspend":%t}}`, on))
	return err
}

func meta(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

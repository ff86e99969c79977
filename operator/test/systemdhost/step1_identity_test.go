//go:build e2e

package systemdhost

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// The unit starts on a host that has no TLS identity yet, and neither fails with
// 226/NAMESPACE (a ReadWritePaths entry that does not exist) nor restarts in a loop:
// the agent waits. Once the operator has delivered the identity over SSH and
// restarted the unit, the agent serves, with its state in the custom stateDir.
func TestAgentUnitStartsBeforeItsIdentityAndServesAfterDelivery(t *testing.T) {
	ctx := testContext(t, 8*time.Minute)
	b := beforeIdentity
	if b.ActiveState != "active" || b.SubState != "running" {
		t.Errorf("before the identity, nio-agent.service is %s/%s, want active/running (waiting)", b.ActiveState, b.SubState)
	}
	if b.NRestarts != "0" || b.ExecMainStatus == "226" {
		t.Errorf("before the identity: NRestarts=%s ExecMainStatus=%s, want 0 restarts and no 226", b.NRestarts, b.ExecMainStatus)
	}
	if !strings.Contains(b.Journal, "waiting for the TLS identity") {
		t.Errorf("the agent's journal does not say it waits for its identity:\n%s", lastLines(b.Journal, 20))
	}

	setUp(t)
	if err := waitMachine(ctx, "agent connected", time.Minute, func(m *nio.Machine) (bool, string) {
		return m.Status.Agent != nil && m.Status.Agent.Connected, fmt.Sprintf("agent %+v", m.Status.Agent)
	}); err != nil {
		t.Fatal(err)
	}
	after, err := readUnitState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.ActiveState != "active" || after.ExecMainStatus == "226" || strings.Contains(after.Journal, "226/NAMESPACE") {
		t.Errorf("after delivery: %s, ExecMainStatus %s; journal:\n%s", after.ActiveState, after.ExecMainStatus, lastLines(after.Journal, 20))
	}
	if !strings.Contains(after.Journal, "nio-agent listening") {
		t.Errorf("the agent never said it listens:\n%s", lastLines(after.Journal, 20))
	}
	for _, f := range []string{"tls/ca.crt", "tls/tls.crt", "tls/tls.key"} {
		if _, err := os.Stat(host.Path(filepath.Join("/var/lib/nio-agent", f))); err != nil {
			t.Errorf("delivered identity: %v", err)
		}
	}
	// The custom state dir holds the sources and the operation record.
	for _, p := range []string{stateDir + "/last-operation.json", stateDir + "/sources"} {
		if _, err := os.Stat(host.Path(p)); err != nil {
			t.Errorf("custom stateDir %s: %v", stateDir, err)
		}
	}
	if st, err := os.Stat(host.Path(stateDir)); err == nil && st.Mode().Perm() != 0o700 {
		t.Errorf("%s has mode %v, want 0700", stateDir, st.Mode().Perm())
	}
	conf := configurationNow(t, ctx)
	if h := historyOf(conf, first.commit); h == nil || h.Transport != nio.TransportAgent || h.Result != nio.ResultSucceeded {
		t.Errorf("first apply's history entry: %+v, want a succeeded agent apply", h)
	}
}

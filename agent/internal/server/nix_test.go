package server

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/testkit/nixtest"
)

// nixHost is an agent over real Nix with a scratch profile; the fixtures'
// switch-to-configuration moves env.CurrentSystemLink like /run/current-system.
type nixHost struct {
	env     *nixtest.Env
	profile string
	client  agentv1.AgentServiceClient
}

func startNixHost(t *testing.T) *nixHost {
	t.Helper()
	env := nixtest.New(t)
	env.Setenv(t) // the agent's children inherit its environment
	dir := t.TempDir()
	profile := filepath.Join(dir, "profiles", "system")
	if err := os.MkdirAll(filepath.Dir(profile), 0o755); err != nil {
		t.Fatal(err)
	}
	x := nixos.NewHost(nixos.Config{Profile: profile, CurrentSystemLink: env.CurrentSystemLink()})
	return &nixHost{env: env, profile: profile, client: startBufconn(t, newTestServer(t, x, filepath.Join(dir, "state")))}
}

func (h *nixHost) apply(t *testing.T, id, fixture string, vars map[string]string, confirm time.Duration, onEvent func(*agentv1.ApplyResponse) bool) *applyRun {
	t.Helper()
	arch := archiveDir(t, nixtest.CopyFlake(t, fixture, vars))
	hdr := flakeHeader(id, agentv1.Action_ACTION_SWITCH, arch)
	if confirm > 0 {
		withConfirm(hdr, confirm)
	}
	return apply(t, h.client, hdr, arch, onEvent)
}

func (h *nixHost) current(t *testing.T) string {
	t.Helper()
	p, err := os.Readlink(h.env.CurrentSystemLink())
	if err != nil {
		t.Fatalf("current system: %v", err)
	}
	return p
}

func wantOutcome(t *testing.T, r *applyRun, want agentv1.Outcome) *agentv1.ApplyResult {
	t.Helper()
	if r.result.GetOutcome() != want {
		t.Fatalf("outcome %v (%s), want %v; stream err %v; log:\n%s", r.result.GetOutcome(), r.result.GetMessage(), want, r.streamed, r.logText())
	}
	return r.result
}

// switchV1 applies the basic fixture at version v1 and checks generation 1.
func (h *nixHost) switchV1(t *testing.T) *agentv1.ApplyResult {
	t.Helper()
	r := wantOutcome(t, h.apply(t, "op-v1", "basic", map[string]string{nixtest.VarVersion: "v1"}, 0, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if r.GetGeneration() != 1 || h.current(t) != r.GetStorePath() || r.GetCurrentSystem() != r.GetStorePath() {
		t.Fatalf("after the first switch: %v, current-system %s", r, h.current(t))
	}
	return r
}

func TestRealNixSwitchesGenerationByGeneration(t *testing.T) {
	h := startNixHost(t)
	v1 := h.switchV1(t)

	// A version never built before, so nix really builds and prints the output.
	fresh := fmt.Sprintf("v2-%d", time.Now().UnixNano())
	run := h.apply(t, "op-v2", "basic", map[string]string{nixtest.VarVersion: fresh}, 0, nil)
	v2 := wantOutcome(t, run, agentv1.Outcome_OUTCOME_SUCCEEDED)
	if v2.GetStorePath() == v1.GetStorePath() || v2.GetGeneration() != 2 || h.current(t) != v2.GetStorePath() {
		t.Fatalf("second commit: %v, current %s", v2, h.current(t))
	}
	if !strings.Contains(run.logText(), "nio-fixture: building system worker version "+fresh) {
		t.Errorf("the build's own output was not streamed:\n%s", run.logText())
	}
	want := []agentv1.Phase{agentv1.Phase_PHASE_RECEIVING_SOURCE, agentv1.Phase_PHASE_UNPACKING, agentv1.Phase_PHASE_BUILDING,
		agentv1.Phase_PHASE_SETTING_PROFILE, agentv1.Phase_PHASE_ACTIVATING, agentv1.Phase_PHASE_DONE}
	if got := run.phases(); !equalPhases(got, want) {
		t.Errorf("phases %v, want %v", got, want)
	}
	if got := h.env.Activations(t); len(got) != 2 || got[1] != "switch "+v2.GetStorePath() {
		t.Errorf("activations %q", got)
	}
	st, err := h.client.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || st.GetGeneration() != 2 || st.GetCurrentSystem() != v2.GetStorePath() || st.GetLastOperation().GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Errorf("status %v (%v)", st, err)
	}
}

func TestRealNixBuildErrorStreamsNixOutputAndKeepsTheSystem(t *testing.T) {
	h := startNixHost(t)
	v1 := h.switchV1(t)

	run := h.apply(t, "op-broken", "failing", nil, 0, nil)
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_FAILED)
	var stderrLine bool
	for _, ev := range run.events {
		if l := ev.GetLog(); l != nil && l.GetStream() == agentv1.LogStream_LOG_STREAM_STDERR && strings.Contains(l.GetText(), nixtest.FailingBuildError) {
			stderrLine = true
		}
	}
	if !stderrLine || !strings.Contains(run.logText(), nixtest.FailingBuildLine) {
		t.Errorf("nix's error lines were not streamed:\n%s", run.logText())
	}
	if r.GetGeneration() != 1 || h.current(t) != v1.GetStorePath() || len(h.env.Activations(t)) != 1 {
		t.Errorf("a failed build changed the system: %v, current %s, activations %q", r, h.current(t), h.env.Activations(t))
	}
}

func TestRealNixWithoutConfirmRollsBackToTheFirstGeneration(t *testing.T) {
	h := startNixHost(t)
	v1 := h.switchV1(t)

	run := h.apply(t, "op-unconfirmed", "basic", map[string]string{nixtest.VarVersion: "v2"}, time.Second, nil)
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_ROLLED_BACK)
	if !r.GetRolledBack() || r.GetGeneration() != 1 || r.GetCurrentSystem() != v1.GetStorePath() || h.current(t) != v1.GetStorePath() {
		t.Fatalf("after rollback: %v, current %s, want generation 1 running %s", r, h.current(t), v1.GetStorePath())
	}
	profile, _ := os.Readlink(h.profile)
	if !strings.HasSuffix(profile, "system-1-link") {
		t.Errorf("profile points at %s, want generation 1", profile)
	}
	acts := h.env.Activations(t)
	want := []string{"switch " + v1.GetStorePath(), "switch " + r.GetStorePath(), "switch " + v1.GetStorePath()}
	if strings.Join(acts, "|") != strings.Join(want, "|") {
		t.Errorf("activations %q, want %q", acts, want)
	}
}

func TestRealNixConfirmKeepsTheNewSystem(t *testing.T) {
	h := startNixHost(t)
	h.switchV1(t)

	confirmed := make(chan error, 1)
	run := h.apply(t, "op-confirmed", "basic", map[string]string{nixtest.VarVersion: "v2"}, 30*time.Second, func(ev *agentv1.ApplyResponse) bool {
		if ev.GetPhase().GetPhase() == agentv1.Phase_PHASE_AWAITING_CONFIRM {
			go func() {
				resp, err := h.client.Confirm(context.Background(), &agentv1.ConfirmRequest{OperationId: "op-confirmed"})
				if err == nil && resp.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
					t.Errorf("Confirm answered %v", resp.GetOutcome())
				}
				confirmed <- err
			}()
		}
		return true
	})
	if err := <-confirmed; err != nil {
		t.Fatal(err)
	}
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_SUCCEEDED)
	if r.GetRolledBack() || r.GetGeneration() != 2 || h.current(t) != r.GetStorePath() {
		t.Fatalf("after Confirm: %v, current %s", r, h.current(t))
	}
}

func TestRealNixFailedActivationReturnsToThePreviousSystem(t *testing.T) {
	h := startNixHost(t)
	v1 := h.switchV1(t)

	run := h.apply(t, "op-bad-activation", "basic", map[string]string{nixtest.VarVersion: "v2-bad", nixtest.VarActivation: "fail"}, 0, nil)
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_FAILED)
	if !strings.Contains(run.logText(), "failed on purpose") {
		t.Errorf("activation error not streamed:\n%s", run.logText())
	}
	if r.GetGeneration() != 1 || h.current(t) != v1.GetStorePath() {
		t.Fatalf("after a failed activation: %v, current %s", r, h.current(t))
	}
}

func TestRealNixModuleTargetBuildsThroughNixpkgsNixos(t *testing.T) {
	h := startNixHost(t)
	t.Setenv("NIX_PATH", "nixpkgs="+nixtest.StubNixpkgs(t))
	arch := archiveDir(t, nixtest.CopyFlake(t, "module", map[string]string{nixtest.VarVersion: "m1"}))
	hdr := flakeHeader("op-module", agentv1.Action_ACTION_SWITCH, arch)
	hdr.Target = &agentv1.ApplyHeader_Module{Module: &agentv1.ModuleTarget{Path: nixtest.ModuleFile}}
	r := wantOutcome(t, apply(t, h.client, hdr, arch, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if !strings.HasSuffix(r.GetStorePath(), "-nixos-system-worker-m1") || h.current(t) != r.GetStorePath() {
		t.Fatalf("module switch: %v, current %s", r, h.current(t))
	}
}

func equalPhases(a, b []agentv1.Phase) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// nixHostOnDisk is real Nix with a scratch profile whose agent can be killed and
// started again over the same state dir.
func nixHostOnDisk(t *testing.T) (*nixtest.Env, nixos.Executor, string, string) {
	t.Helper()
	env := nixtest.New(t)
	env.Setenv(t)
	dir := t.TempDir()
	profile := filepath.Join(dir, "profiles", "system")
	if err := os.MkdirAll(filepath.Dir(profile), 0o755); err != nil {
		t.Fatal(err)
	}
	x := nixos.NewHost(nixos.Config{Profile: profile, CurrentSystemLink: env.CurrentSystemLink(), PollInterval: 50 * time.Millisecond})
	return env, x, profile, filepath.Join(dir, "state")
}

func fixtureArchive(t *testing.T, version string) []byte {
	return archiveDir(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: version}))
}

func TestRealNixAgentKilledInTheConfirmWindowRollsBackAfterItsRestart(t *testing.T) {
	env, x, profile, state := nixHostOnDisk(t)
	first := startAgentProcess(t, x, state, "")
	v1arch := fixtureArchive(t, "v1")
	v1 := wantOutcome(t, apply(t, first.client, flakeHeader("op-v1", agentv1.Action_ACTION_SWITCH, v1arch), v1arch, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	first.kill()

	v2arch := fixtureArchive(t, "v2")
	second, h, before := killedInConfirmWindowOf(t, x, state, withConfirm(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2arch), time.Second), v2arch)
	if cur, _ := os.Readlink(env.CurrentSystemLink()); cur == v1.GetStorePath() {
		t.Fatal("the new system was not running when the agent died")
	}
	r := reattach(t, second.client, h, before, nil)
	res := wantOutcome(t, r, agentv1.Outcome_OUTCOME_ROLLED_BACK)
	checkSequences(t, r.events, 1<<32)
	if cur, _ := os.Readlink(env.CurrentSystemLink()); res.GetGeneration() != 1 || cur != v1.GetStorePath() || res.GetCurrentSystem() != v1.GetStorePath() {
		t.Fatalf("after the recovered rollback: %v, current-system %s, want generation 1 running %s", res, cur, v1.GetStorePath())
	}
	if link, _ := os.Readlink(profile); !strings.HasSuffix(link, "system-1-link") {
		t.Errorf("profile points at %s, want generation 1", link)
	}
	want := []string{"switch " + v1.GetStorePath(), "switch " + res.GetStorePath(), "switch " + v1.GetStorePath()}
	if acts := env.Activations(t); strings.Join(acts, "|") != strings.Join(want, "|") {
		t.Errorf("activations %q, want %q", acts, want)
	}
	if j := readTestJournal(t, state); j.Step != stepFinished {
		t.Errorf("journal step %q", j.Step)
	}
}

func TestRealNixAgentKilledInTheConfirmWindowKeepsTheSystemConfirmedAfterItsRestart(t *testing.T) {
	env, x, _, state := nixHostOnDisk(t)
	v2arch := fixtureArchive(t, "v2")
	second, h, before := killedInConfirmWindowOf(t, x, state, withConfirm(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2arch), time.Minute), v2arch)
	confirmed := make(chan error, 1)
	r := reattach(t, second.client, h, before, confirmOnWindow(t, second.client, "op-v2", confirmed))
	if err := <-confirmed; err != nil {
		t.Fatal(err)
	}
	res := wantOutcome(t, r, agentv1.Outcome_OUTCOME_SUCCEEDED)
	if cur, _ := os.Readlink(env.CurrentSystemLink()); res.GetGeneration() != 1 || cur != res.GetStorePath() {
		t.Fatalf("after Confirm: %v, current-system %s", res, cur)
	}
	if acts := env.Activations(t); len(acts) != 1 {
		t.Errorf("activations %q, want the one switch", acts)
	}
}

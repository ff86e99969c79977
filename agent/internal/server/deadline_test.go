package server

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"github.com/homystack/nio/testkit/nixtest"
	"google.golang.org/protobuf/types/known/durationpb"
)

// processesWithArgv lists the live processes whose argv is exactly argv (zombies
// are dead already).
func processesWithArgv(t *testing.T, argv ...string) []int {
	t.Helper()
	want := []byte(strings.Join(argv, "\x00") + "\x00")
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Equal(cmdline, want) {
			continue
		}
		if stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			if f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:])); len(f) > 0 && f[0] == "Z" {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

// A hung build (here: the sleep fixture sleeping for days) must not pin the agent:
// operation_timeout ends it FAILED with timed_out, nothing activated, the whole
// build's process tree gone (nix runs the builder in a session of its own, so
// killing nix's process group alone left the builder's sleep running), and the
// next operation runs.
func TestRealNixBuildThatNeverEndsTimesOutKillsItsProcessesAndFreesTheAgent(t *testing.T) {
	h := startNixHost(t)
	v1 := h.switchV1(t)

	secs := strconv.Itoa(900000 + int(time.Now().UnixNano()%99999)) // names this test's sleep
	arch := archiveDir(t, nixtest.CopyFlake(t, "sleep", map[string]string{nixtest.VarSleep: secs, nixtest.VarVersion: "hung-" + secs}))
	hdr := flakeHeader("op-hung", agentv1.Action_ACTION_SWITCH, arch)
	const timeout = 5 * time.Second
	hdr.OperationTimeout = durationpb.New(timeout)
	var sleeping []int
	start := time.Now()
	run := apply(t, h.client, hdr, arch, func(ev *agentv1.ApplyResponse) bool {
		if strings.Contains(ev.GetLog().GetText(), "nio-fixture: sleeping") && sleeping == nil {
			for i := 0; i < 50 && sleeping == nil; i++ {
				sleeping = processesWithArgv(t, "/bin/sleep", secs)
				time.Sleep(20 * time.Millisecond)
			}
		}
		return true
	})
	took := time.Since(start)
	r := wantOutcome(t, run, agentv1.Outcome_OUTCOME_FAILED)
	if !r.GetTimedOut() || !strings.Contains(r.GetMessage(), "timed out after "+timeout.String()) {
		t.Errorf("result %v: want timed_out and a message that says so", r)
	}
	// The deadline, plus nix's time to stop its builder after SIGTERM (killGrace at most).
	if took > timeout+killGraceBound {
		t.Errorf("the timed-out operation ended after %v", took)
	}
	if len(sleeping) == 0 {
		t.Fatalf("the build's sleep was never seen running; log:\n%s", run.logText())
	}
	// The build's processes were stopped before the result was sent; init may take
	// a moment to reap the orphans, which the check ignores (zombies are dead).
	for i := 0; ; i++ {
		left := processesWithArgv(t, "/bin/sleep", secs)
		if len(left) == 0 {
			break
		}
		if i == 20 {
			t.Errorf("the build's /bin/sleep %s survived the timeout: pids %v (seen running: %v)", secs, left, sleeping)
			for _, pid := range left {
				_ = syscall.Kill(pid, syscall.SIGKILL) // this test's own leftover, by pid
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if h.current(t) != v1.GetStorePath() || r.GetGeneration() != 1 || len(h.env.Activations(t)) != 1 {
		t.Errorf("a timed-out build changed the system: %v, current %s, activations %q", r, h.current(t), h.env.Activations(t))
	}

	// The agent is free: the next operation runs.
	next := wantOutcome(t, h.apply(t, "op-next", "basic", map[string]string{nixtest.VarVersion: "v2"}, 0, nil), agentv1.Outcome_OUTCOME_SUCCEEDED)
	if next.GetGeneration() != 2 || h.current(t) != next.GetStorePath() {
		t.Errorf("the operation after the timeout: %v, current %s", next, h.current(t))
	}
}

// killGraceBound is how long past its deadline a timed-out build may take to end.
const killGraceBound = 15 * time.Second

// A build that ends after the deadline (it did not stop when asked) must not go on
// to change the host: the deadline is checked before the profile and the activation.
func TestBuildEndingAfterTheDeadlineSetsNoProfileAndActivatesNothing(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	v1 := switchedToV1(t, x, state)

	x.buildGate, x.building, x.buildIgnoresCancel = make(chan struct{}), make(chan struct{}), true
	p := startAgentProcess(t, x, state, "")
	v2 := makeArchive(t, sourceV2)
	h := flakeHeader("op-late", agentv1.Action_ACTION_SWITCH, v2)
	h.OperationTimeout = durationpb.New(200 * time.Millisecond)
	seen := make(chan *applyRun, 1)
	go func() { seen <- apply(t, p.client, h, v2, nil) }()
	<-x.building
	time.Sleep(400 * time.Millisecond)
	close(x.buildGate)
	r := <-seen
	wantResult(t, r, agentv1.Outcome_OUTCOME_FAILED, 1, v1)
	if !r.result.GetTimedOut() || !strings.Contains(r.result.GetMessage(), "before setting the system profile") {
		t.Errorf("result %v", r.result)
	}
	if n := countCalls(x, "set-profile") + countCalls(x, "activate"); n != 2 { // v1's
		t.Errorf("calls %q: the late build changed the host", x.Calls())
	}
	for _, p := range r.phases() {
		if p == agentv1.Phase_PHASE_ROLLING_BACK {
			t.Errorf("phases %v: nothing was to roll back", r.phases())
		}
	}
}

// The deadline is absolute: journaled when the operation starts, and an agent that
// restarts keeps it instead of starting the operation's clock again.
func TestDeadlineIsJournaledAbsoluteAndKeptAcrossAnAgentRestart(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	switchedToV1(t, x, state)

	x.buildGate, x.building = make(chan struct{}), make(chan struct{})
	first := startAgentProcess(t, x, state, "")
	v2 := makeArchive(t, sourceV2)
	h := flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2)
	h.OperationTimeout = durationpb.New(time.Hour)
	started := time.Now()
	seen := make(chan *applyRun, 1)
	go func() { seen <- apply(t, first.client, h, v2, nil) }()
	<-x.building
	j := readTestJournal(t, state)
	if j.Deadline == nil || j.Deadline.Before(started.Add(time.Hour-time.Second)) || j.Deadline.After(time.Now().Add(time.Hour)) {
		t.Fatalf("journal deadline %v, want about %v", j.Deadline, started.Add(time.Hour))
	}
	first.kill()
	before := <-seen
	time.Sleep(50 * time.Millisecond)

	second := startAgentProcess(t, x, state, "")
	second.srv.mu.Lock()
	op := second.srv.ops["op-v2"]
	second.srv.mu.Unlock()
	if op == nil || !op.deadline.Equal(*j.Deadline) {
		t.Fatalf("recovered operation %v has deadline %v, want the journal's %v", op, op.deadline, j.Deadline)
	}
	r := reattach(t, second.client, h, before, nil)
	if r.result.GetOutcome() != agentv1.Outcome_OUTCOME_FAILED {
		t.Errorf("result %v", r.result)
	}
	if fin := readTestJournal(t, state); fin.Deadline == nil || !fin.Deadline.Equal(*j.Deadline) {
		t.Errorf("the finished journal has deadline %v, want the original %v", fin.Deadline, j.Deadline)
	}
}

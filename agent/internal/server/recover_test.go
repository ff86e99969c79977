package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
)

// agentProcess is one life of the agent over a state dir: a Server served in memory.
// kill stands for SIGKILL: its connections drop, and the goroutine that ran the
// operation stays frozen where it was (in the crash point, or inside the executor),
// so it can never act again — as a dead process can't.
type agentProcess struct {
	srv     *Server
	client  agentv1.AgentServiceClient
	g       *grpc.Server
	crashed chan struct{} // closed when the crash point was reached
	log     *syncBuffer
}

// startAgentProcess starts an agent on state; crashAt names the step where it dies
// ("" for none).
func startAgentProcess(t *testing.T, x nixos.Executor, state, crashAt string) *agentProcess {
	t.Helper()
	p := &agentProcess{crashed: make(chan struct{}), log: &syncBuffer{}}
	var once sync.Once
	cfg := Config{Executor: x, StateDir: state, SecretsDir: state + "-secrets", MaxSourceBytes: 1 << 20, FacterPath: "nixos-facter", Version: "test",
		Logger: slog.New(slog.NewTextHandler(p.log, nil))}
	if crashAt != "" {
		cfg.crashAt = func(point string) {
			if point == crashAt {
				once.Do(func() { close(p.crashed) })
				<-make(chan struct{})
			}
		}
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.srv = srv
	lis := bufconn.Listen(1 << 20)
	p.g = grpc.NewServer()
	srv.Register(p.g)
	go p.g.Serve(lis)
	t.Cleanup(p.g.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.client = agentv1.NewAgentServiceClient(conn)
	return p
}

func (p *agentProcess) kill() { p.g.Stop() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(b)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var sourceV2 = entry{name: "flake.nix", body: "{ outputs = { self }: { }; } # v2"}

// switchedToV1 runs a first, successful switch, so generation 1 runs v1.
func switchedToV1(t *testing.T, x *fakeExecutor, state string) string {
	t.Helper()
	p := startAgentProcess(t, x, state, "")
	v1 := makeArchive(t, sourceV1)
	r := apply(t, p.client, flakeHeader("op-v1", agentv1.Action_ACTION_SWITCH, v1), v1, nil)
	if r.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED || r.result.GetGeneration() != 1 {
		t.Fatalf("first switch: %v", r.result)
	}
	p.kill()
	return r.result.GetStorePath()
}

// startV2 starts a switch to v2 on p and returns its header and what the stream saw
// until the agent died (the stream breaks then).
func startV2(t *testing.T, p *agentProcess, confirm time.Duration) (*agentv1.ApplyHeader, <-chan *applyRun) {
	t.Helper()
	v2 := makeArchive(t, sourceV2)
	h := flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2)
	if confirm > 0 {
		withConfirm(h, confirm)
	}
	seen := make(chan *applyRun, 1)
	go func() { seen <- apply(t, p.client, h, v2, nil) }()
	return h, seen
}

// reattach is the operator after a broken stream: the same header, resuming after
// the last sequence it saw.
func reattach(t *testing.T, c agentv1.AgentServiceClient, h *agentv1.ApplyHeader, before *applyRun, onEvent func(*agentv1.ApplyResponse) bool) *applyRun {
	t.Helper()
	if before.result != nil || len(before.events) == 0 {
		t.Fatalf("the first stream ended with %v after %d events, want it broken mid-operation", before.result, len(before.events))
	}
	h.ResumeAfterSequence = before.events[len(before.events)-1].GetSequence()
	return apply(t, c, h, nil, onEvent)
}

// confirmOnWindow confirms the operation (over the client c) when the stream shows
// the confirm window, and reports the Confirm's error on errs.
func confirmOnWindow(t *testing.T, c agentv1.AgentServiceClient, id string, errs chan<- error) func(*agentv1.ApplyResponse) bool {
	return func(ev *agentv1.ApplyResponse) bool {
		if ev.GetPhase().GetPhase() == agentv1.Phase_PHASE_AWAITING_CONFIRM {
			go func() {
				resp, err := c.Confirm(context.Background(), &agentv1.ConfirmRequest{OperationId: id})
				if err == nil && resp.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
					t.Errorf("Confirm answered %v", resp.GetOutcome())
				}
				errs <- err
			}()
		}
		return true
	}
}

func readTestJournal(t *testing.T, state string) *journal {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(state, "journal.json"))
	if err != nil {
		t.Fatal(err)
	}
	j := &journal{}
	if err := json.Unmarshal(data, j); err != nil {
		t.Fatal(err)
	}
	return j
}

func wantResult(t *testing.T, r *applyRun, outcome agentv1.Outcome, gen int64, current string) {
	t.Helper()
	res := r.result
	if res.GetOutcome() != outcome || res.GetGeneration() != gen || res.GetCurrentSystem() != current {
		t.Fatalf("result %v (stream err %v), want %v at generation %d running %s; log:\n%s", res, r.streamed, outcome, gen, current, r.logText())
	}
}

// wantRecoveredEvents checks the re-attached stream got the recovered incarnation
// from its first event on.
func wantRecoveredEvents(t *testing.T, r *applyRun, incarnation uint64) {
	t.Helper()
	checkSequences(t, r.events, incarnation<<32)
	if !strings.Contains(r.logText(), "the agent restarted during this operation") {
		t.Errorf("the recovered log does not say why it restarted:\n%s", r.logText())
	}
}

func wantLastOperation(t *testing.T, c agentv1.AgentServiceClient, id string, outcome agentv1.Outcome) {
	t.Helper()
	st, err := c.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || st.GetBusy() || st.GetLastOperation().GetOperationId() != id || st.GetLastOperation().GetOutcome() != outcome {
		t.Fatalf("status %v (%v), want %s %v, not busy", st, err, id, outcome)
	}
}

func countCalls(x *fakeExecutor, prefix string) int {
	n := 0
	for _, c := range x.Calls() {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func TestKilledDuringBuildRecordsFailedAndActivatesNothing(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	v1 := switchedToV1(t, x, state)

	x.buildGate, x.building = make(chan struct{}), make(chan struct{}) // the build never ends
	first := startAgentProcess(t, x, state, "")
	h, seen := startV2(t, first, 0)
	<-x.building
	first.kill()
	before := <-seen

	second := startAgentProcess(t, x, state, "")
	r := reattach(t, second.client, h, before, nil)
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_FAILED, 1, v1)
	if !strings.Contains(r.result.GetMessage(), "agent restarted during build; nothing was activated") {
		t.Errorf("message %q", r.result.GetMessage())
	}
	if n := countCalls(x, "set-profile") + countCalls(x, "activate") + countCalls(x, "switch-generation"); n != 2 {
		t.Errorf("calls %q: the interrupted build changed the host", x.Calls())
	}
	wantLastOperation(t, second.client, "op-v2", agentv1.Outcome_OUTCOME_FAILED)
	if j := readTestJournal(t, state); j.Step != stepFinished || j.Incarnation != 1 {
		t.Errorf("journal step %q incarnation %d, want finished after one restart", j.Step, j.Incarnation)
	}
}

func TestKilledWhileSettingTheProfileReturnsToThePreviousGeneration(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	v1 := switchedToV1(t, x, state)

	first := startAgentProcess(t, x, state, "profile-set")
	h, seen := startV2(t, first, 0)
	<-first.crashed
	first.kill()
	before := <-seen
	if gen, _ := x.Generation(); gen != 2 {
		t.Fatalf("generation %d before the restart, want the new profile generation 2", gen)
	}

	second := startAgentProcess(t, x, state, "")
	r := reattach(t, second.client, h, before, nil)
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_FAILED, 1, v1)
	if countCalls(x, "activate") != 1 {
		t.Errorf("calls %q: something was activated", x.Calls())
	}
}

// killedDuringActivation leaves the new system's activation running in its unit
// while the agent is dead, and restarts the agent. It returns the unit name.
func killedDuringActivation(t *testing.T, x *fakeExecutor, state string, confirm time.Duration) (string, *agentProcess, *agentv1.ApplyHeader, *applyRun) {
	t.Helper()
	x.activating = make(chan string, 4)
	x.setDetach(true)
	first := startAgentProcess(t, x, state, "")
	h, seen := startV2(t, first, confirm)
	unit := <-x.activating
	first.kill()
	before := <-seen
	x.setDetach(false)

	second := startAgentProcess(t, x, state, "")
	if j := readTestJournal(t, state); j.Step != stepActivating || j.Unit != unit || j.PreviousGeneration != 1 || j.Incarnation != 1 {
		t.Fatalf("journal %+v, want step activating of %s after one restart", j, unit)
	}
	st, err := second.client.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || !st.GetBusy() || st.GetLastOperation().GetOperationId() != "op-v2" {
		t.Fatalf("status while the activation runs: %v (%v), want busy with op-v2", st, err)
	}
	other := makeArchive(t, sourceV1)
	if r := apply(t, second.client, flakeHeader("op-other", agentv1.Action_ACTION_SWITCH, other), other, nil); status.Code(r.streamed) != codes.Aborted {
		t.Fatalf("another operation during the recovery: %v %v, want ABORTED", r.streamed, r.result)
	}
	return unit, second, h, before
}

func TestKilledDuringActivationWaitsForItsUnitAndThenOpensAFreshConfirmWindow(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	switchedToV1(t, x, state)
	const timeout = 30 * time.Second
	unit, second, h, before := killedDuringActivation(t, x, state, timeout)

	confirmed := make(chan error, 1)
	done := make(chan *applyRun, 1)
	go func() {
		done <- reattach(t, second.client, h, before, confirmOnWindow(t, second.client, "op-v2", confirmed))
	}()
	ended := time.Now()
	x.endUnit(unit, true) // the activation succeeds while the agent recovers
	r := <-done
	if err := <-confirmed; err != nil {
		t.Fatal(err)
	}
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_SUCCEEDED, 2, r.result.GetStorePath())
	var deadline time.Time
	for _, ev := range r.events {
		if ev.GetPhase().GetPhase() == agentv1.Phase_PHASE_AWAITING_CONFIRM {
			deadline = ev.GetPhase().GetDeadline().AsTime()
		}
	}
	if deadline.Before(ended.Add(timeout)) {
		t.Errorf("the recovered confirm window ends %v, want the full %v after the activation ended (%v)", deadline, timeout, ended)
	}
	if countCalls(x, "wait "+unit) != 1 || countCalls(x, "activate") != 2 || countCalls(x, "switch-generation") != 0 {
		t.Errorf("calls %q: want one wait for %s and no second activation", x.Calls(), unit)
	}
	wantLastOperation(t, second.client, "op-v2", agentv1.Outcome_OUTCOME_SUCCEEDED)
}

func TestKilledDuringActivationThatFailsRollsBack(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	v1 := switchedToV1(t, x, state)
	unit, second, h, before := killedDuringActivation(t, x, state, 0)

	done := make(chan *applyRun, 1)
	go func() { done <- reattach(t, second.client, h, before, nil) }()
	x.endUnit(unit, false)
	r := <-done
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_FAILED, 1, v1)
	if !r.result.GetRolledBack() || !strings.Contains(r.result.GetMessage(), "activation failed") {
		t.Errorf("result %v, want a rolled-back activation failure", r.result)
	}
	want := []string{"switch-generation 1", "activate switch " + v1}
	if calls := x.Calls(); !slices.Equal(calls[len(calls)-2:], want) {
		t.Errorf("calls %q, want them to end with %q", calls, want)
	}
	wantLastOperation(t, second.client, "op-v2", agentv1.Outcome_OUTCOME_FAILED)
}

func TestKilledDuringActivationWithoutConfirmSucceedsWhenTheUnitDoes(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	switchedToV1(t, x, state)
	unit, second, h, before := killedDuringActivation(t, x, state, 0)

	done := make(chan *applyRun, 1)
	go func() { done <- reattach(t, second.client, h, before, nil) }()
	x.endUnit(unit, true)
	r := <-done
	wantResult(t, r, agentv1.Outcome_OUTCOME_SUCCEEDED, 2, r.result.GetStorePath())
	if r.result.GetStorePath() == "" || slices.Contains(r.phases(), agentv1.Phase_PHASE_AWAITING_CONFIRM) {
		t.Errorf("result %v phases %v", r.result, r.phases())
	}
}

// killedInConfirmWindow kills the agent after it opened the confirm window (the
// operator saw AWAITING_CONFIRM, but its Confirm never arrived) and restarts it.
func killedInConfirmWindow(t *testing.T, x nixos.Executor, state string, timeout time.Duration) (*agentProcess, *agentv1.ApplyHeader, *applyRun) {
	t.Helper()
	v2 := makeArchive(t, sourceV2)
	return killedInConfirmWindowOf(t, x, state, withConfirm(flakeHeader("op-v2", agentv1.Action_ACTION_SWITCH, v2), timeout), v2)
}

func killedInConfirmWindowOf(t *testing.T, x nixos.Executor, state string, h *agentv1.ApplyHeader, arch []byte) (*agentProcess, *agentv1.ApplyHeader, *applyRun) {
	t.Helper()
	first := startAgentProcess(t, x, state, "confirm-window")
	window := make(chan struct{})
	seen := make(chan *applyRun, 1)
	go func() {
		seen <- apply(t, first.client, h, arch, func(ev *agentv1.ApplyResponse) bool {
			if ev.GetPhase().GetPhase() == agentv1.Phase_PHASE_AWAITING_CONFIRM {
				close(window)
			}
			return true
		})
	}()
	<-first.crashed
	<-window
	first.kill()
	before := <-seen
	if ps := before.phases(); ps[len(ps)-1] != agentv1.Phase_PHASE_AWAITING_CONFIRM {
		t.Fatalf("phases before the kill: %v, want the confirm window last", ps)
	}
	return startAgentProcess(t, x, state, ""), h, before
}

func TestKilledInConfirmWindowIsConfirmedByTheReattachingOperator(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	switchedToV1(t, x, state)
	second, h, before := killedInConfirmWindow(t, x, state, 30*time.Second)
	// SIGTERM now (systemctl restart nio-agent) would wait for the recovered
	// operation, confirm window included, and refuse new ones meanwhile.
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	if err := second.srv.Drain(expired); err == nil {
		t.Fatal("Drain did not wait for the recovered operation")
	}
	other := makeArchive(t, sourceV1)
	if r := apply(t, second.client, flakeHeader("op-other", agentv1.Action_ACTION_SWITCH, other), other, nil); status.Code(r.streamed) != codes.Unavailable {
		t.Fatalf("a new operation while draining: %v, want UNAVAILABLE", r.streamed)
	}

	confirmed := make(chan error, 1)
	r := reattach(t, second.client, h, before, confirmOnWindow(t, second.client, "op-v2", confirmed))
	if err := <-confirmed; err != nil {
		t.Fatal(err)
	}
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_SUCCEEDED, 2, r.result.GetStorePath())
	if countCalls(x, "activate") != 2 || countCalls(x, "switch-generation") != 0 {
		t.Errorf("calls %q: want no re-activation and no rollback", x.Calls())
	}
	if !strings.Contains(second.log.String(), `msg="recovering operation interrupted by an agent restart" operation=op-v2 step=awaiting-confirm`) {
		t.Errorf("agent log:\n%s", second.log.String())
	}
	wantLastOperation(t, second.client, "op-v2", agentv1.Outcome_OUTCOME_SUCCEEDED)
}

func TestKilledInConfirmWindowWithoutConfirmRollsBackAndSaysSoAfterAnotherRestart(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	v1 := switchedToV1(t, x, state)
	second, h, before := killedInConfirmWindow(t, x, state, 500*time.Millisecond)

	r := reattach(t, second.client, h, before, nil)
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_ROLLED_BACK, 1, v1)
	if !r.result.GetRolledBack() {
		t.Errorf("result %v", r.result)
	}
	wantLastOperation(t, second.client, "op-v2", agentv1.Outcome_OUTCOME_ROLLED_BACK)
	resp, err := second.client.Confirm(context.Background(), &agentv1.ConfirmRequest{OperationId: "op-v2"})
	if err != nil || resp.GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK {
		t.Errorf("late Confirm: %v %v", resp, err)
	}

	// One more restart: the finished operation still answers an attach, with
	// the same result, and Status keeps it.
	second.kill()
	third := startAgentProcess(t, x, state, "")
	h.ResumeAfterSequence = r.events[len(r.events)-1].GetSequence()
	again := apply(t, third.client, h, nil, nil)
	checkSequences(t, again.events, 2<<32)
	if again.result.GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK || again.result.GetCurrentSystem() != v1 {
		t.Errorf("after another restart: %v", again.result)
	}
	wantLastOperation(t, third.client, "op-v2", agentv1.Outcome_OUTCOME_ROLLED_BACK)
	if n := countCalls(x, "activate switch "+v1); n != 2 {
		t.Errorf("calls %q: want v1 activated twice (first switch, one rollback)", x.Calls())
	}
}

func TestKilledDuringRollbackRunsItAgain(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	v1 := switchedToV1(t, x, state)
	first := startAgentProcess(t, x, state, stepRollingBack)
	h, seen := startV2(t, first, 100*time.Millisecond) // nobody confirms
	<-first.crashed
	first.kill()
	before := <-seen

	second := startAgentProcess(t, x, state, "")
	r := reattach(t, second.client, h, before, nil)
	wantRecoveredEvents(t, r, 1)
	wantResult(t, r, agentv1.Outcome_OUTCOME_ROLLED_BACK, 1, v1)
	if !strings.Contains(r.result.GetMessage(), "ran it again") {
		t.Errorf("message %q", r.result.GetMessage())
	}
}

func TestUnreadableJournalIsLoggedSetAsideAndTouchesNothing(t *testing.T) {
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "journal.json"), []byte(`{"version":1,"step":"activ`), 0o600); err != nil {
		t.Fatal(err)
	}
	x := newFakeExecutor()
	p := startAgentProcess(t, x, state, "")
	if !strings.Contains(p.log.String(), `level=ERROR msg="ignoring unreadable operation journal`) {
		t.Errorf("agent log:\n%s", p.log.String())
	}
	if _, err := os.Stat(filepath.Join(state, "journal.json.unreadable")); err != nil {
		t.Errorf("the unreadable journal was not kept aside: %v", err)
	}
	if calls := x.Calls(); len(calls) != 0 {
		t.Errorf("calls %q after an unreadable journal", calls)
	}
	st, err := p.client.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || st.GetBusy() {
		t.Fatalf("status %v (%v)", st, err)
	}
	v1 := makeArchive(t, sourceV1)
	if r := apply(t, p.client, flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, v1), v1, nil); r.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("an operation after the unreadable journal: %v %v", r.streamed, r.result)
	}
}

func TestJournalIsWrittenBeforeEachStepThatChangesTheHost(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	var steps []string
	var mu sync.Mutex
	s, err := New(Config{Executor: x, StateDir: state, MaxSourceBytes: 1 << 20, crashAt: func(point string) {
		mu.Lock()
		defer mu.Unlock()
		data, err := os.ReadFile(filepath.Join(state, "journal.json"))
		if err != nil {
			t.Errorf("at %s: %v", point, err)
			return
		}
		var j journal
		_ = json.Unmarshal(data, &j)
		steps = append(steps, point+":"+j.Step+":"+j.Unit)
	}})
	if err != nil {
		t.Fatal(err)
	}
	c := startBufconn(t, s)
	v1 := makeArchive(t, sourceV1)
	confirmed := make(chan error, 1)
	r := apply(t, c, withConfirm(flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, v1), time.Minute), v1, confirmOnWindow(t, c, "op-1", confirmed))
	if err := <-confirmed; err != nil || r.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("%v %v", err, r.result)
	}
	j := readTestJournal(t, state)
	unit := j.Unit
	want := []string{"building:building:", "setting-profile:setting-profile:", "profile-set:setting-profile:",
		"activating:activating:" + unit, "activated:activating:" + unit, "awaiting-confirm:awaiting-confirm:" + unit,
		"confirm-window:awaiting-confirm:" + unit}
	mu.Lock()
	defer mu.Unlock()
	if !strings.HasPrefix(unit, "nio-activate-") || !slices.Equal(steps, want) {
		t.Errorf("journal at each step %q, want %q", steps, want)
	}
	if j.Step != stepFinished || j.StorePath != r.result.GetStorePath() || j.Action != "switch" || j.ConfirmTimeout != "1m0s" || len(j.Result) == 0 {
		t.Errorf("final journal %+v", j)
	}
}

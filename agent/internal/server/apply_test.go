package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var sourceV1 = entry{name: "flake.nix", body: "{ outputs = { self }: { }; } # v1"}

func TestKnownDigestSkipsNeedSourceAlsoAfterRestart(t *testing.T) {
	state := t.TempDir()
	x := newFakeExecutor()
	c := startBufconn(t, newTestServer(t, x, state))
	arch := makeArchive(t, sourceV1)

	first := apply(t, c, flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, arch), arch, nil)
	if !first.needed || first.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("first apply: needed=%v result=%v log:\n%s", first.needed, first.result, first.logText())
	}
	checkSequences(t, first.events, 0)
	if first.result.GetGeneration() != 1 || first.result.GetCurrentSystem() != first.result.GetStorePath() {
		t.Errorf("result = %v, want generation 1 with the built system current", first.result)
	}

	second := apply(t, c, flakeHeader("op-2", agentv1.Action_ACTION_SWITCH, arch), nil, nil)
	if second.needed || second.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("second apply of the same digest: needed=%v result=%v", second.needed, second.result)
	}

	restarted := startBufconn(t, newTestServer(t, x, state))
	third := apply(t, restarted, flakeHeader("op-3", agentv1.Action_ACTION_BUILD, arch), nil, nil)
	if third.needed || third.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("after a restart: needed=%v result=%v", third.needed, third.result)
	}
	st, err := restarted.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || st.GetLastOperation().GetOperationId() != "op-3" || st.GetGeneration() != 2 {
		t.Errorf("status = %v (%v), want last op-3 at generation 2", st, err)
	}
}

func TestDigestMismatchFailsAndCachesNothing(t *testing.T) {
	state := t.TempDir()
	c := startBufconn(t, newTestServer(t, newFakeExecutor(), state))
	arch := makeArchive(t, sourceV1)
	h := flakeHeader("op-bad", agentv1.Action_ACTION_SWITCH, arch)
	h.SourceDigest = digestOf([]byte("something else"))

	run := apply(t, c, h, arch, nil)
	if run.result.GetOutcome() != agentv1.Outcome_OUTCOME_FAILED || !strings.Contains(run.result.GetMessage(), "digest mismatch") {
		t.Fatalf("result = %v, want FAILED with a digest mismatch", run.result)
	}
	again := apply(t, c, flakeHeader("op-retry", agentv1.Action_ACTION_BUILD, arch), arch, nil)
	if !again.needed {
		t.Error("a source that failed verification was cached under some digest")
	}
	left, _ := filepath.Glob(filepath.Join(state, "sources", ".incoming-*"))
	if len(left) != 0 {
		t.Errorf("partial archives left behind: %v", left)
	}
}

func TestSameOperationIDAttachesAndReplaysFromSequence(t *testing.T) {
	x := newFakeExecutor()
	x.buildGate, x.building = make(chan struct{}), make(chan struct{})
	c := startBufconn(t, newTestServer(t, x, t.TempDir()))
	arch := makeArchive(t, sourceV1)
	h := flakeHeader("op-attach", agentv1.Action_ACTION_SWITCH, arch)

	firstDone := make(chan *applyRun)
	go func() { firstDone <- apply(t, c, h, arch, nil) }()
	<-x.building

	const resume = 3
	h2 := flakeHeader("op-attach", agentv1.Action_ACTION_SWITCH, arch)
	h2.ResumeAfterSequence = resume
	attached := make(chan *applyRun)
	go func() { attached <- apply(t, c, h2, nil, nil) }()
	// Whether the attach lands before or after the build ends, it must replay
	// from the given sequence to the result.
	close(x.buildGate)
	first, second := <-firstDone, <-attached

	checkSequences(t, first.events, 0)
	checkSequences(t, second.events, resume)
	if second.needed {
		t.Error("an attached stream was asked for the source")
	}
	if len(second.events) != len(first.events)-resume {
		t.Errorf("attached stream got %d events, want %d", len(second.events), len(first.events)-resume)
	}
	if second.result.GetStorePath() != first.result.GetStorePath() || second.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Errorf("results differ: %v vs %v", first.result, second.result)
	}
	builds := 0
	for _, call := range x.Calls() {
		if strings.HasPrefix(call, "build") {
			builds++
		}
	}
	if builds != 1 {
		t.Errorf("%d builds for one operation id", builds)
	}

	// A finished operation replays too.
	late := apply(t, c, flakeHeader("op-attach", agentv1.Action_ACTION_SWITCH, arch), nil, nil)
	checkSequences(t, late.events, 0)
	if len(late.events) != len(first.events) {
		t.Errorf("replay of a finished operation: %d events, want %d", len(late.events), len(first.events))
	}
}

func TestDifferentOperationWhileOneRunsIsAborted(t *testing.T) {
	x := newFakeExecutor()
	x.buildGate, x.building = make(chan struct{}), make(chan struct{})
	c := startBufconn(t, newTestServer(t, x, t.TempDir()))
	arch := makeArchive(t, sourceV1)

	done := make(chan *applyRun)
	go func() { done <- apply(t, c, flakeHeader("op-a", agentv1.Action_ACTION_SWITCH, arch), arch, nil) }()
	<-x.building

	other := apply(t, c, flakeHeader("op-b", agentv1.Action_ACTION_SWITCH, arch), arch, nil)
	if status.Code(other.streamed) != codes.Aborted {
		t.Fatalf("second operation: err=%v result=%v, want ABORTED", other.streamed, other.result)
	}
	st, err := c.Status(context.Background(), &agentv1.StatusRequest{})
	if err != nil || !st.GetBusy() || st.GetLastOperation().GetOperationId() != "op-a" {
		t.Errorf("status while running = %v (%v)", st, err)
	}
	close(x.buildGate)
	if r := <-done; r.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("first operation: %v", r.result)
	}
	after := apply(t, c, flakeHeader("op-b", agentv1.Action_ACTION_SWITCH, arch), arch, nil)
	if after.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Errorf("the next operation after the first ended: %v %v", after.streamed, after.result)
	}
}

func TestUnsafeArchiveFailsTheOperation(t *testing.T) {
	state := t.TempDir()
	c := startBufconn(t, newTestServer(t, newFakeExecutor(), state))
	arch := makeArchive(t, sourceV1, entry{name: "../escape", body: "x"})
	run := apply(t, c, flakeHeader("op-evil", agentv1.Action_ACTION_SWITCH, arch), arch, nil)
	if run.result.GetOutcome() != agentv1.Outcome_OUTCOME_FAILED || !strings.Contains(run.result.GetMessage(), "..") {
		t.Fatalf("result = %v, want FAILED naming the bad entry", run.result)
	}
	if _, err := os.Stat(filepath.Join(state, "ops", "escape")); !os.IsNotExist(err) {
		t.Errorf("escape written beside the work dir (%v)", err)
	}
}

func TestOversizeArchiveRefused(t *testing.T) {
	c := startBufconn(t, newTestServer(t, newFakeExecutor(), t.TempDir()))
	big := makeArchive(t, sourceV1, entry{name: "big", body: strings.Repeat("x", 2<<20)})
	run := apply(t, c, flakeHeader("op-big", agentv1.Action_ACTION_SWITCH, big), big, nil)
	if run.result.GetOutcome() != agentv1.Outcome_OUTCOME_FAILED || !strings.Contains(run.result.GetMessage(), "size cap") {
		t.Fatalf("result = %v, want FAILED over the size cap", run.result)
	}
}

func TestUnconfirmedSwitchRollsBackEvenAfterTheStreamCloses(t *testing.T) {
	x := newFakeExecutor()
	c := startBufconn(t, newTestServer(t, x, t.TempDir()))
	v1 := makeArchive(t, sourceV1)
	base := apply(t, c, flakeHeader("op-1", agentv1.Action_ACTION_SWITCH, v1), v1, nil)
	if base.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatal(base.result)
	}

	v2 := makeArchive(t, entry{name: "flake.nix", body: "# v2"})
	h := withConfirm(flakeHeader("op-2", agentv1.Action_ACTION_SWITCH, v2), time.Second)
	// Walk away as soon as the agent waits for Confirm.
	cut := apply(t, c, h, v2, func(ev *agentv1.ApplyResponse) bool {
		return ev.GetPhase().GetPhase() != agentv1.Phase_PHASE_AWAITING_CONFIRM
	})
	if cut.result != nil {
		t.Fatal("the stream ended with a result before the confirm window")
	}
	h.ResumeAfterSequence = cut.events[len(cut.events)-1].GetSequence()
	rest := apply(t, c, h, nil, nil)
	r := rest.result
	if r.GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK || !r.GetRolledBack() {
		t.Fatalf("result = %v, want ROLLED_BACK", r)
	}
	if r.GetGeneration() != 1 || r.GetCurrentSystem() != base.result.GetStorePath() {
		t.Errorf("after rollback: generation %d current %s, want 1 and %s", r.GetGeneration(), r.GetCurrentSystem(), base.result.GetStorePath())
	}
	if _, err := c.Confirm(context.Background(), &agentv1.ConfirmRequest{OperationId: "op-2"}); err != nil {
		t.Fatal(err)
	}
	resp, _ := c.Confirm(context.Background(), &agentv1.ConfirmRequest{OperationId: "op-2"})
	if resp.GetOutcome() != agentv1.Outcome_OUTCOME_ROLLED_BACK {
		t.Errorf("a late Confirm reports %v, want ROLLED_BACK", resp.GetOutcome())
	}
}

// brokenTransferStream is an Apply stream whose client goes away right after the
// agent asked for the source, while the agent's Send of NEED_SOURCE is slow (a full
// flow-control window). It records any Send still running after Apply returned.
type brokenTransferStream struct {
	grpc.ServerStream
	ctx      context.Context
	header   *agentv1.ApplyHeader
	recvs    int
	sending  chan struct{} // closed when the Send of NEED_SOURCE began
	release  chan struct{} // lets that Send finish
	sent     chan struct{} // closed when it finished
	returned atomic.Bool
	late     atomic.Int32 // Sends that ended after Apply returned
}

func (s *brokenTransferStream) Context() context.Context { return s.ctx }

func (s *brokenTransferStream) Send(ev *agentv1.ApplyResponse) error {
	if ev.GetNeedSource() != nil {
		close(s.sending)
		// A slow Send: until released, or for a bounded time when nobody will
		// release it (the handler itself is the one waiting).
		select {
		case <-s.release:
		case <-time.After(500 * time.Millisecond):
		}
		defer close(s.sent)
	}
	if s.returned.Load() {
		s.late.Add(1)
	}
	return nil
}

func (s *brokenTransferStream) Recv() (*agentv1.ApplyRequest, error) {
	s.recvs++
	if s.recvs == 1 {
		return &agentv1.ApplyRequest{Msg: &agentv1.ApplyRequest_Header{Header: s.header}}, nil
	}
	<-s.sending // the client vanishes while NEED_SOURCE is on its way
	return nil, status.Error(codes.Canceled, "client went away")
}

func TestApplyNeverSendsAfterReturningFromABrokenTransfer(t *testing.T) {
	s := newTestServer(t, newFakeExecutor(), t.TempDir())
	arch := makeArchive(t, sourceV1)
	st := &brokenTransferStream{
		ctx: context.Background(), header: flakeHeader("op-cut", agentv1.Action_ACTION_SWITCH, arch),
		sending: make(chan struct{}), release: make(chan struct{}), sent: make(chan struct{}),
	}
	err := s.Apply(st)
	st.returned.Store(true)
	close(st.release)
	<-st.sent
	if status.Code(err) != codes.Canceled {
		t.Errorf("Apply = %v, want the stream's error", err)
	}
	if n := st.late.Load(); n != 0 {
		t.Fatalf("%d Send(s) still running after Apply returned (gRPC forbids it)", n)
	}
	// The interrupted transfer is forgotten: the same id starts afresh.
	c := startBufconn(t, s)
	if r := apply(t, c, flakeHeader("op-cut", agentv1.Action_ACTION_BUILD, arch), arch, nil); !r.needed || r.result.GetOutcome() != agentv1.Outcome_OUTCOME_SUCCEEDED {
		t.Fatalf("retry: needed=%v %v %v", r.needed, r.streamed, r.result)
	}
}

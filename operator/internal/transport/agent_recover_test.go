package transport

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
)

// killedInConfirmWindow applies a switch whose first confirm window ends with the
// agent SIGKILLed (before any Confirm) and restarted; onWindow decides what the
// operator does in each later window. It returns the result and how many windows
// the operator was asked to confirm.
func killedInConfirmWindow(t *testing.T, h *agentHost, a *Agent, id string, timeout time.Duration, onWindow func(ctx context.Context, id string) error) (ApplyResult, []Event, int32, error) {
	t.Helper()
	src := dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)}))
	var windows atomic.Int32
	var events []Event
	res, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: id, Action: ActionSwitch, ConfirmTimeout: timeout,
		Target: Target{FlakeDir: ".", FlakeAttr: "worker"}, Source: src,
		OnEvent: collect(&events),
		OnAwaitingConfirm: func(ctx context.Context, id string) error {
			if windows.Add(1) > 1 {
				return onWindow(ctx, id)
			}
			h.kill()
			if err := h.restart(t); err != nil {
				t.Errorf("restart: %v", err)
			}
			return errors.New("the agent was killed before this Confirm (test)")
		},
	})
	return res, events, windows.Load(), err
}

func TestAgentKilledInTheConfirmWindowIsConfirmedAgainAfterItsRestart(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)
	res, events, windows, err := killedInConfirmWindow(t, h, a, "op-recover", time.Minute, a.Confirm)
	if err != nil || res.Outcome != OutcomeSucceeded || res.Transport != "agent" {
		t.Fatalf("Apply: %+v, %v", res, err)
	}
	if windows != 2 {
		t.Fatalf("OnAwaitingConfirm called %d times, want once per window (2)", windows)
	}
	if got := h.nix.Activations(t); !slices.Equal(got, []string{"switch " + res.StorePath}) {
		t.Fatalf("activations %q, want the one switch, no rollback", got)
	}
	if !strings.Contains(h.log.String(), `msg="recovering operation interrupted by an agent restart" operation=op-recover step=awaiting-confirm`) {
		t.Fatal("the restarted agent did not recover the operation")
	}
	assertOrderedEvents(t, events)
	var failedConfirm bool
	for _, ev := range events {
		failedConfirm = failedConfirm || strings.Contains(ev.Line, "confirm failed: the agent was killed")
	}
	if !failedConfirm {
		t.Error("the first window's failed Confirm was not logged")
	}
	st, err := a.Status(context.Background())
	if err != nil || st.Busy || st.LastOperationID != "op-recover" || st.CurrentSystem != res.StorePath {
		t.Fatalf("status after recovery: %+v, %v", st, err)
	}
}

func TestAgentKilledInTheConfirmWindowRollsBackWithoutASecondConfirm(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)
	first, err := a.Apply(context.Background(), ApplyRequest{
		OperationID: "op-first", Action: ActionSwitch, Target: Target{FlakeDir: ".", FlakeAttr: "worker"},
		Source: dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)})),
	})
	if err != nil || first.Outcome != OutcomeSucceeded {
		t.Fatalf("first switch: %+v, %v", first, err)
	}
	res, _, windows, err := killedInConfirmWindow(t, h, a, "op-lost-confirm", 2*time.Second,
		func(context.Context, string) error { return nil }) // the new system locks the operator out
	if err != nil || res.Outcome != OutcomeRolledBack {
		t.Fatalf("Apply: %+v, %v; want RolledBack (what the controller records as Ready=False RolledBack)", res, err)
	}
	if windows != 2 {
		t.Fatalf("OnAwaitingConfirm called %d times, want 2", windows)
	}
	want := []string{"switch " + first.StorePath, "switch " + res.StorePath, "switch " + first.StorePath}
	if got := h.nix.Activations(t); !slices.Equal(got, want) || res.Generation != first.Generation {
		t.Fatalf("activations %q generation %d, want %q back at generation %d", got, res.Generation, want, first.Generation)
	}
	st, err := a.Status(context.Background())
	if err != nil || st.CurrentSystem != first.StorePath || st.LastOperationID != "op-lost-confirm" {
		t.Fatalf("status: %+v, %v", st, err)
	}
}

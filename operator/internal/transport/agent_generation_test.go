package transport

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/homystack/nio/testkit/certtest"
	"github.com/homystack/nio/testkit/nixtest"
)

// The real nio-agent over mTLS: two switches, then the previous generation
// activated without a source, confirmed over a new connection; a generation the
// profile lacks fails with nothing changed.
func TestAgentActivatesThePreviousGenerationWithoutASource(t *testing.T) {
	t.Parallel()
	h := startAgent(t, certtest.NewCA(t), "web")
	a := h.agentTransport(t, "web", nil)
	target := Target{FlakeDir: ".", FlakeAttr: "worker"}
	var systems []string
	for _, id := range []string{"op-1", "op-2"} {
		res, err := a.Apply(context.Background(), ApplyRequest{
			OperationID: id, Action: ActionSwitch, Target: target,
			Source: dirSource(t, nixtest.CopyFlake(t, "basic", map[string]string{nixtest.VarVersion: uniqueVersion(t)})),
		})
		if err != nil || res.Outcome != OutcomeSucceeded {
			t.Fatalf("Apply %s = %+v, %v", id, res, err)
		}
		systems = append(systems, res.StorePath)
	}

	confirmed := false
	res, err := a.ActivateGeneration(context.Background(), GenerationRequest{
		OperationID: "op-back", ConfirmTimeout: time.Minute,
		OnAwaitingConfirm: func(ctx context.Context, id string) error {
			confirmed = true
			return a.Confirm(ctx, id)
		},
	})
	if err != nil || res.Outcome != OutcomeSucceeded || res.Generation != 1 || res.StorePath != systems[0] || res.SourceBytesSent != 0 || !confirmed {
		t.Fatalf("ActivateGeneration(previous) = %+v, %v (confirmed %t); want generation 1 (%s), confirmed, no source", res, err, confirmed, systems[0])
	}
	st, err := a.Status(context.Background())
	if err != nil || st.CurrentSystem != systems[0] || st.Generation != 1 {
		t.Fatalf("status after the rollback: %+v, %v", st, err)
	}

	res, err = a.ActivateGeneration(context.Background(), GenerationRequest{OperationID: "op-missing", Generation: 9})
	if err != nil || res.Outcome != OutcomeFailed || !strings.Contains(res.Message, "no generation 9") || res.Generation != 1 {
		t.Fatalf("ActivateGeneration(9) = %+v, %v; want Failed naming the generation", res, err)
	}
}

// An agent that does not list the feature gets nothing; neither does SSH.
func TestRollbackIsRefusedWithoutAnAgentThatActivatesGenerations(t *testing.T) {
	err := RefuseRollbackOnOldAgent("10.0.0.1:7443", "0.1.0")
	if !errors.Is(err, ErrRollbackNeedsAgent) || !strings.Contains(err.Error(), FeatureActivateGeneration) {
		t.Errorf("refusal %v", err)
	}
	f := &Fallback{SSH: &SSH{}}
	if _, err := f.ActivateGeneration(context.Background(), GenerationRequest{OperationID: "op"}); !errors.Is(err, ErrRollbackNeedsAgent) ||
		!strings.Contains(err.Error(), "never over SSH") {
		t.Errorf("without an agent: %v", err)
	}
	down := &Fallback{Agent: unreachableAgent{}, SSH: &SSH{}}
	if _, err := down.ActivateGeneration(context.Background(), GenerationRequest{OperationID: "op"}); !errors.Is(err, ErrRollbackNeedsAgent) || errors.Is(err, ErrUnreachable) {
		t.Errorf("with the agent down: %v, want ErrRollbackNeedsAgent and not ErrUnreachable", err)
	}
}

// unreachableAgent is an agent way whose every call fails to dial.
type unreachableAgent struct{ Transport }

func (unreachableAgent) ActivateGeneration(context.Context, GenerationRequest) (ApplyResult, error) {
	return ApplyResult{}, ErrUnreachable
}

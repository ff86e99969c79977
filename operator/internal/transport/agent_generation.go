package transport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	nio "github.com/homystack/nio/api/v1alpha1"
)

// FeatureActivateGeneration is what an agent that activates an existing generation
// (ApplyHeader.generation, a GenerationTarget) lists in StatusResponse.features.
const FeatureActivateGeneration = "activate-generation"

// ErrRollbackNeedsAgent: a rollback to an earlier generation was asked for and no
// agent that can activate one answered (disabled, unreachable, too old). Nothing
// was changed: a rollback never goes over SSH.
var ErrRollbackNeedsAgent = errors.New("rollback needs nio-agent")

// GenerationRequest activates a generation the host's system profile already holds
// — a rollback: nothing is built or sent. The host switches the profile to it and
// runs switch-to-configuration switch with the same journal, health checks,
// confirm window and magic rollback (to where it was before) as any switch.
type GenerationRequest struct {
	// OperationID identifies the operation, as in ApplyRequest.
	OperationID string
	// Generation is the profile generation to activate; 0 means the one before the
	// current generation.
	Generation int64
	// ConfirmTimeout, HealthChecks, Timeout, WaitMargin, OnAwaitingConfirm and
	// OnEvent are ApplyRequest's.
	ConfirmTimeout    time.Duration
	HealthChecks      *HealthChecks
	Timeout           time.Duration
	WaitMargin        time.Duration
	OnAwaitingConfirm func(ctx context.Context, operationID string) error
	OnEvent           func(Event)
}

// GenerationActivator is a way to a host that can activate an existing generation:
// only nio-agent is.
type GenerationActivator interface {
	// ActivateGeneration runs the request to its end. ApplyResult.Generation and
	// StorePath are the generation active afterwards and its system (on success the
	// requested one).
	ActivateGeneration(ctx context.Context, req GenerationRequest) (ApplyResult, error)
}

var (
	_ GenerationActivator = (*Agent)(nil)
	_ GenerationActivator = (*Fallback)(nil)
)

func (req GenerationRequest) applyRequest() ApplyRequest {
	return ApplyRequest{
		OperationID: req.OperationID, Action: ActionSwitch, ConfirmTimeout: req.ConfirmTimeout,
		HealthChecks: req.HealthChecks, Timeout: req.Timeout, WaitMargin: req.WaitMargin,
		OnAwaitingConfirm: req.OnAwaitingConfirm, OnEvent: req.OnEvent,
	}
}

// ActivateGeneration asks the agent's Status first: an agent that does not list
// FeatureActivateGeneration would refuse the header as targetless (or worse), so
// it gets nothing (ErrRollbackNeedsAgent). Reconnects, the wait bound and the
// confirmation are Apply's.
func (a *Agent) ActivateGeneration(ctx context.Context, req GenerationRequest) (ApplyResult, error) {
	areq := req.applyRequest()
	return boundApply(ctx, areq, func(ctx context.Context) (ApplyResult, error) {
		res := ApplyResult{Transport: nio.TransportAgent}
		if req.OperationID == "" {
			return res, errors.New("activate generation: an operation id is required")
		}
		if req.Generation < 0 {
			return res, fmt.Errorf("activate generation %d: want a generation number, or 0 for the previous one", req.Generation)
		}
		st, err := a.Status(ctx)
		if err != nil {
			return res, err
		}
		if !slices.Contains(st.Features, FeatureActivateGeneration) {
			return res, RefuseRollbackOnOldAgent(a.cfg.Address, st.AgentVersion)
		}
		if req.HealthChecks != nil && !slices.Contains(st.Features, FeatureHealthChecks) {
			return res, RefuseHealthChecksOnOldAgent(a.cfg.Address, st.AgentVersion)
		}
		h := &agentv1.ApplyHeader{
			OperationId:  req.OperationID,
			Action:       agentv1.Action_ACTION_SWITCH,
			Target:       &agentv1.ApplyHeader_Generation{Generation: &agentv1.GenerationTarget{Generation: req.Generation}},
			HealthChecks: healthChecksProto(req.HealthChecks),
		}
		if req.ConfirmTimeout > 0 {
			h.ConfirmTimeout = durationpb.New(req.ConfirmTimeout)
		}
		if req.Timeout > 0 {
			h.OperationTimeout = durationpb.New(req.Timeout)
		}
		return a.applyWith(ctx, areq, h)
	})
}

// ActivateGeneration goes to the agent only. Without one that answers, nothing is
// done: SSH could run nix-env and switch-to-configuration, but without the
// journal, the confirm window and the health checks a rollback is an unguarded
// switch, and an emergency action must not be the least guarded one.
func (f *Fallback) ActivateGeneration(ctx context.Context, req GenerationRequest) (ApplyResult, error) {
	res := ApplyResult{Transport: nio.TransportAgent}
	if f.Agent == nil {
		return res, fmt.Errorf("%w: the Machine's agent is disabled (spec.agent.disabled); a rollback runs only through nio-agent, never over SSH", ErrRollbackNeedsAgent)
	}
	g, ok := f.Agent.(GenerationActivator)
	if !ok {
		return res, fmt.Errorf("%w: this way to the agent cannot activate generations", ErrRollbackNeedsAgent)
	}
	res, err := g.ActivateGeneration(ctx, req)
	if errors.Is(err, ErrUnreachable) {
		// %v: the fallback's trigger must not survive; nothing goes over SSH.
		return res, fmt.Errorf("%w: the agent is unreachable (%v); nothing was changed (a rollback never goes over SSH)", ErrRollbackNeedsAgent, err)
	}
	return res, err
}

// RefuseRollbackOnOldAgent is the error of a rollback to an agent that does not
// list FeatureActivateGeneration.
func RefuseRollbackOnOldAgent(address, version string) error {
	if version == "" {
		version = "(version unknown)"
	}
	return fmt.Errorf("%w: nio-agent %s at %s cannot activate an earlier generation (it does not list %q among its features); nothing was changed: upgrade nio-agent on the host",
		ErrRollbackNeedsAgent, version, address, FeatureActivateGeneration)
}

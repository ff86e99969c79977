package hosttest

import (
	"context"
	"errors"
	"fmt"
	"time"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/transport"
)

// GenerationActivation is one ActivateGeneration a Host received.
type GenerationActivation struct {
	ID string
	// Requested is the request's generation (0: the previous one); Generation the
	// one activated, or tried.
	Requested, Generation int64
	ConfirmTimeout        time.Duration
	HealthChecks          *transport.HealthChecks
	Outcome               transport.Outcome
}

// Activations are the ActivateGeneration calls that reached the stand-in's agent,
// in order.
func (h *Host) Activations() []GenerationActivation {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]GenerationActivation(nil), h.activations...)
}

// SystemOf is the store path generation gen holds ("" when the profile has none).
func (h *Host) SystemOf(gen int64) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.profile()[gen]
}

// profile is the generations map; h.mu is held.
func (h *Host) profile() map[int64]string {
	if h.systems == nil {
		h.systems = map[int64]string{}
	}
	return h.systems
}

// newestGeneration is the highest generation number; h.mu is held.
func (h *Host) newestGeneration() int64 {
	n := h.Generation
	for g := range h.systems {
		n = max(n, g)
	}
	return n
}

// ActivateGeneration mimics the agent (never SSH: as transport.Fallback, it refuses
// with ErrRollbackNeedsAgent when the agent is disabled, down or too old): the
// profile's generation is switched and activated, confirmed like a switch
// (ConfirmFails rolls it back to where it was), and a generation the profile does
// not hold fails with nothing changed.
func (h *Host) ActivateGeneration(ctx context.Context, req transport.GenerationRequest) (transport.ApplyResult, error) {
	h.mu.Lock()
	h.calls++
	disabled, agent, old, version := h.agentDisabled, h.agentOn(), h.NoRollbackFeature, h.AgentVersion
	h.mu.Unlock()
	res := transport.ApplyResult{Transport: nio.TransportAgent}
	switch {
	case disabled:
		return res, fmt.Errorf("%w: the Machine's agent is disabled (spec.agent.disabled); a rollback runs only through nio-agent, never over SSH", transport.ErrRollbackNeedsAgent)
	case !agent:
		return res, fmt.Errorf("%w: the agent is unreachable (dial %s: host unreachable); nothing was changed (a rollback never goes over SSH)", transport.ErrRollbackNeedsAgent, h.name)
	case old:
		return res, transport.RefuseRollbackOnOldAgent(h.name, version)
	}
	act := GenerationActivation{ID: req.OperationID, Requested: req.Generation, ConfirmTimeout: req.ConfirmTimeout, HealthChecks: req.HealthChecks}
	h.mu.Lock()
	prev := h.Generation
	want := req.Generation
	if want == 0 {
		for g := range h.profile() {
			if g < prev && g > want {
				want = g
			}
		}
	}
	system, ok := h.profile()[want]
	h.mu.Unlock()
	act.Generation = want
	finish := func(o transport.Outcome, msg string) (transport.ApplyResult, error) {
		h.mu.Lock()
		res.Outcome, res.Message, res.Generation, res.StorePath = o, msg, h.Generation, h.profile()[h.Generation]
		act.Outcome = o
		h.activations = append(h.activations, act)
		h.mu.Unlock()
		return res, nil
	}
	if !ok || want <= 0 {
		return finish(transport.OutcomeFailed, fmt.Sprintf("the system profile has no generation %d; nothing was changed", req.Generation))
	}
	if req.OnEvent != nil {
		req.OnEvent(transport.Event{Kind: transport.EventPhase, Phase: transport.PhaseActivating, Detail: "switch", Time: time.Now()})
	}
	if req.ConfirmTimeout > 0 {
		confirmErr := errors.New("no confirmation")
		if req.OnAwaitingConfirm != nil {
			confirmErr = req.OnAwaitingConfirm(ctx, req.OperationID)
		}
		if confirmErr != nil {
			return finish(transport.OutcomeRolledBack, "no Confirm; the previous system was re-activated")
		}
	}
	h.mu.Lock()
	h.Generation, h.Current = want, system
	h.mu.Unlock()
	return finish(transport.OutcomeSucceeded, "")
}

package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/homystack/nio/agent/internal/nixos"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
)

// featureActivateGeneration is listed in StatusResponse.features: this agent takes
// ApplyHeader.generation (GenerationTarget).
const featureActivateGeneration = "activate-generation"

// validateGenerationHeader checks a header with a GenerationTarget: a switch to a
// generation the profile holds, with nothing to build, receive or install.
func validateGenerationHeader(h *agentv1.ApplyHeader, g *agentv1.GenerationTarget) error {
	if h.GetAction() != agentv1.Action_ACTION_SWITCH {
		return fmt.Errorf("a generation target takes action switch, not %v", h.GetAction())
	}
	if g.GetGeneration() < 0 {
		return fmt.Errorf("generation %d: want a generation number, or 0 for the previous one", g.GetGeneration())
	}
	if h.GetSecrets() != nil {
		// The secrets directory stays as it is: the generation's system was built
		// for some earlier set the agent no longer has.
		return errors.New("a generation target takes no secrets: the secrets directory is left as it is")
	}
	return nil
}

// executeGeneration runs an operation with a GenerationTarget: instead of unpacking
// and building, it finds the generation in the system profile and then commits to
// it like execute does to a built system — the profile switched with nix-env
// --switch-generation, the same journal, activation, health checks, confirm window
// and rollback (to the generation and system that ran before), and the same
// recovery after an agent restart (recover.go needs nothing else: the journal names
// the previous generation and the store path).
func (s *Server) executeGeneration(op *operation) {
	ctx := context.Background()
	bctx, cancel := ctx, context.CancelFunc(func() {})
	if !op.deadline.IsZero() {
		bctx, cancel = context.WithDeadline(ctx, op.deadline)
	}
	defer cancel()
	defer s.recoverPanic(op)
	s.writeRecord(op.snapshot())
	op.jr = newJournal(op.header, op.snapshot().GetStartedTime().AsTime(), op.deadline)
	if err := s.step(op, stepBuilding); err != nil {
		s.fail(op, err.Error())
		return
	}
	s.pruneWorkDirs(op)
	s.pruneSecrets()
	// The work dir keeps the activations' output and exit status (nixos.Activation).
	dir := s.opDir(op.id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.fail(op, fmt.Sprintf("make work dir: %v", err))
		return
	}

	x := s.cfg.Executor
	prevGen, prevSystem, ok := s.previousSystem(op)
	if !ok {
		return
	}
	gens, err := x.Generations()
	if err != nil {
		s.fail(op, err.Error())
		return
	}
	target, err := pickGeneration(gens, prevGen, op.header.GetGeneration().GetGeneration())
	if err != nil {
		s.fail(op, err.Error()+"; nothing was changed")
		return
	}
	op.agentLine(fmt.Sprintf("activating generation %d (%s); the system profile is at generation %d, running %s",
		target.Number, target.System, prevGen, prevSystem))
	op.jr.PreviousGeneration, op.jr.PreviousSystem, op.jr.StorePath = prevGen, prevSystem, target.System
	if err := s.takeHealthBaseline(bctx, op); err != nil {
		if bctx.Err() != nil {
			s.timedOut(ctx, op, "while listing the failed units for the health checks")
			return
		}
		s.fail(op, fmt.Sprintf("health checks: list the units failed before the activation: %v; nothing was activated", err))
		return
	}
	s.commit(ctx, bctx, op, target.System, func(ctx context.Context) error {
		return x.SwitchGeneration(ctx, target.Number, op.logLine)
	})
}

// pickGeneration finds generation want among gens (0: the newest below current).
func pickGeneration(gens []nixos.Generation, current, want int64) (nixos.Generation, error) {
	if want == 0 {
		var prev *nixos.Generation
		for i := range gens {
			if gens[i].Number < current {
				prev = &gens[i]
			}
		}
		if prev == nil {
			return nixos.Generation{}, fmt.Errorf("the system profile holds no generation before the current one (%d); it holds %s", current, listGenerations(gens))
		}
		want = prev.Number
	}
	for _, g := range gens {
		if g.Number == want {
			if g.System == "" {
				return nixos.Generation{}, fmt.Errorf("generation %d of the system profile points at nothing (was it garbage-collected?)", want)
			}
			return g, nil
		}
	}
	return nixos.Generation{}, fmt.Errorf("the system profile has no generation %d; it holds %s", want, listGenerations(gens))
}

func listGenerations(gens []nixos.Generation) string {
	if len(gens) == 0 {
		return "none"
	}
	nums := make([]string, len(gens))
	for i, g := range gens {
		nums[i] = strconv.FormatInt(g.Number, 10)
	}
	return strings.Join(nums, ", ")
}

// previousSystem is the profile's generation and the running system before op
// changes them (what a rollback goes back to); on an error op has failed.
func (s *Server) previousSystem(op *operation) (int64, string, bool) {
	gen, err := s.cfg.Executor.Generation()
	if err != nil {
		s.fail(op, err.Error())
		return 0, "", false
	}
	system, err := s.cfg.Executor.CurrentSystem()
	if err != nil {
		s.fail(op, err.Error())
		return 0, "", false
	}
	return gen, system, true
}

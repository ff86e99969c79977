package controller

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
)

// Condition reasons of a NixosFleet whose strategy can't work for its size (CEL can't
// know the size).
const (
	ReasonInvalidStrategy    = "InvalidStrategy"
	ReasonCanaryExceedsFleet = "CanaryExceedsFleet"
	ReasonNoMachines         = "NoMachines"
)

// rolloutStrategy is a RolloutStrategy resolved against the fleet's size: every
// percentage turned into a number of Machines.
type rolloutStrategy struct {
	canary int
	// batches are the sizes of the steps after the canary; the last repeats. Empty:
	// one batch of every pending Machine.
	batches []int
	// maxParallel bounds a batch's Machines moved but not done (0: the batch).
	maxParallel int
	// maxUnavailable bounds the fleet's unavailable Machines (0: unbounded).
	maxUnavailable int
	pause          time.Duration
	manual         bool
	revert         bool
}

// resolveStrategy checks s against a fleet of size Machines (size > 0) and resolves
// its sizes. Its errors stall the fleet: the spec, or the fleet's size, must change.
func resolveStrategy(s nio.RolloutStrategy, size int) (rolloutStrategy, error) {
	out := rolloutStrategy{
		canary:      int(s.Canary),
		maxParallel: int(s.MaxParallel),
		manual:      s.Promotion == nio.PromotionManual,
		revert:      s.OnFailure == nio.FailureRevert,
	}
	if s.PauseBetweenBatches != nil {
		out.pause = s.PauseBetweenBatches.Duration
	}
	if out.canary < 0 || out.maxParallel < 0 {
		return out, outcome.Stalled(ReasonInvalidStrategy, "canary and maxParallel must not be negative")
	}
	if out.canary > size {
		return out, outcome.Stalled(ReasonCanaryExceedsFleet, "strategy.canary is %d but the fleet has %d Machine(s)", out.canary, size)
	}
	fixed, percent := out.canary, 0
	for i, b := range s.Batches {
		n, pct, err := parseSize(b)
		if err != nil {
			return out, outcome.Stalled(ReasonInvalidStrategy, "strategy.batches[%d]: %v", i, err)
		}
		if pct {
			percent += n
			out.batches = append(out.batches, percentOf(n, size, true))
		} else {
			fixed += n
			out.batches = append(out.batches, n)
		}
	}
	if percent > 100 {
		return out, outcome.Stalled(ReasonInvalidStrategy, "strategy.batches add up to %d%% of the fleet, more than 100%%", percent)
	}
	if fixed > size {
		return out, outcome.Stalled(ReasonInvalidStrategy, "strategy.canary and the batches' Machine counts add up to %d, more than the fleet's %d Machine(s)", fixed, size)
	}
	if mu := s.MaxUnavailable; mu != nil {
		n, pct, err := parseSize(*mu)
		if err != nil {
			return out, outcome.Stalled(ReasonInvalidStrategy, "strategy.maxUnavailable: %v", err)
		}
		out.maxUnavailable = n
		if pct {
			out.maxUnavailable = percentOf(n, size, false)
		}
	}
	return out, nil
}

// parseSize reads a number of Machines (at least 1) or a percentage ("10%": more
// than 0, at most 100). A string of digits is a number.
func parseSize(v intstr.IntOrString) (n int, percent bool, err error) {
	if v.Type == intstr.Int {
		n = int(v.IntVal)
	} else {
		s := strings.TrimSpace(v.StrVal)
		digits, pct := strings.CutSuffix(s, "%")
		n, err = strconv.Atoi(digits)
		if err != nil {
			return 0, false, fmt.Errorf("%q is neither a number of Machines nor a percentage like \"25%%\"", v.StrVal)
		}
		percent = pct
	}
	switch {
	case percent && (n <= 0 || n > 100):
		return 0, false, fmt.Errorf("%d%% is not a percentage between 1%% and 100%%", n)
	case !percent && n < 1:
		return 0, false, fmt.Errorf("%d: must be at least 1 Machine", n)
	}
	return n, percent, nil
}

// percentOf is pct% of size Machines, at least 1: rounded up for a batch, down for
// maxUnavailable (as a Deployment rounds it).
func percentOf(pct, size int, up bool) int {
	n := pct * size / 100
	if up && pct*size%100 != 0 {
		n++
	}
	return max(n, 1)
}

// batchSize is the size of numbered batch k (from 1) when pending Machines wait.
func (s rolloutStrategy) batchSize(k, pending int) int {
	if len(s.batches) == 0 {
		return pending
	}
	return min(s.batches[min(k-1, len(s.batches)-1)], pending)
}

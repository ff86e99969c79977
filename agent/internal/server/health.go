package server

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/homystack/nio/agent/internal/health"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// Health checks (ApplyHeader.health_checks) run after a successful activation of
// a switch or test and before the confirm window. A report that did not pass rolls
// back the way a missing Confirm does, whether or not a confirm window was asked
// for. The steps:
//
//	header arrives   validated against this host (health.Validate); invalid:
//	                 FAILED "invalid health checks: …" before anything is built
//	after the build  the failed-units baseline, when a check compares against it,
//	                 journaled with the next step (health_baseline)
//	activated        step health-checking, journaled with health_deadline: the
//	                 end of the activation + timeout, absolute, so a restarted
//	                 agent runs the checks again within what is left of it
//	checks ran       the report is journaled with the next step; failed: roll
//	                 back, ROLLED_BACK with the report's failure; passed: the
//	                 confirm window, or SUCCEEDED. The result carries the report.

// featureHealthChecks is what StatusResponse.features lists for health checks.
const featureHealthChecks = "health-checks"

// minRecoveredHealthTime is the least time a restarted agent gives the checks when
// their deadline passed (or nearly) while it was down: it never confirms a system
// it did not check, and a check needs a moment to pass. Never more than the
// checks' own timeout.
const minRecoveredHealthTime = 10 * time.Second

// healthSpec maps the proto's health checks onto the health package's Spec, field
// by field; an unset duration is zero (which Validate refuses where it matters).
func healthSpec(hc *agentv1.HealthChecks) health.Spec {
	spec := health.Spec{Timeout: hc.GetTimeout().AsDuration(), Interval: hc.GetInterval().AsDuration()}
	for _, c := range hc.GetChecks() {
		ch := health.Check{Name: c.GetName()}
		switch k := c.GetKind().(type) {
		case *agentv1.HealthCheck_Units:
			ch.Units = &health.UnitsCheck{Units: slices.Clone(k.Units.GetUnits()), NoNewFailures: k.Units.GetNoNewFailures()}
		case *agentv1.HealthCheck_Http:
			ch.HTTP = &health.HTTPCheck{URL: k.Http.GetUrl(), ExpectStatus: int(k.Http.GetExpectStatus()), AllowRemote: k.Http.GetAllowRemote()}
		case *agentv1.HealthCheck_Command:
			ch.Command = &health.CommandCheck{Argv: slices.Clone(k.Command.GetArgv()), Timeout: k.Command.GetTimeout().AsDuration()}
		}
		spec.Checks = append(spec.Checks, ch)
	}
	return spec
}

// healthReport maps a health.Report onto the proto's.
func healthReport(r health.Report) *agentv1.HealthReport {
	p := &agentv1.HealthReport{Passed: r.Passed, FirstFailure: r.FirstFailure}
	for _, res := range r.Results {
		p.Results = append(p.Results, &agentv1.HealthCheckResult{
			Name: res.Name, Passed: res.Passed, Attempts: int32(res.Attempts), Message: res.Message,
		})
	}
	return p
}

// invalidHealthChecks says why h's health checks cannot run on this host: a
// one-line message starting "invalid health checks:" that names each check at
// fault, or "" when they can run (or h has none). hostAddrs lists the host's own
// addresses, which an HTTP check may name without allow_remote.
func invalidHealthChecks(h *agentv1.ApplyHeader, hostAddrs func() ([]netip.Addr, error)) string {
	hc := h.GetHealthChecks()
	if hc == nil {
		return ""
	}
	var errs []error
	if a := h.GetAction(); a != agentv1.Action_ACTION_SWITCH && a != agentv1.Action_ACTION_TEST {
		errs = append(errs, fmt.Errorf("health checks need action switch or test, not %s: only those activate a system to check", actionName(a)))
	}
	spec := healthSpec(hc)
	if len(spec.Checks) == 0 {
		// The operator sends health_checks only for checks it has; an empty set is
		// a mistake to report, not a pass.
		errs = append(errs, errors.New("health_checks is set but holds no check"))
		if spec.Timeout <= 0 {
			errs = append(errs, errors.New("health checks: the overall timeout must be set"))
		}
	}
	addrs, addrsErr := hostAddrs()
	if err := health.Validate(spec, addrs); err != nil {
		errs = append(errs, err)
		if addrsErr != nil {
			errs = append(errs, fmt.Errorf("(this host's own addresses could not be read: %v)", addrsErr))
		}
	}
	if len(errs) == 0 {
		return ""
	}
	return "invalid health checks: " + strings.ReplaceAll(errors.Join(errs...).Error(), "\n", "; ")
}

func actionName(a agentv1.Action) string {
	if w := actionWord(a); w != "" {
		return w
	}
	return strings.ToLower(strings.TrimPrefix(a.String(), "ACTION_"))
}

// needsBaseline says whether a check of spec compares failed units against the
// ones failed before the activation.
func needsBaseline(spec health.Spec) bool {
	return slices.ContainsFunc(spec.Checks, func(c health.Check) bool { return c.Units != nil && c.Units.NoNewFailures })
}

// checker is the health.Checker of this agent: with --systemd-run, command checks
// run in transient units, with the host's view rather than the agent's sandbox.
func (s *Server) checker() *health.Checker {
	c := &health.Checker{Systemctl: s.cfg.systemctl}
	if s.cfg.HealthSystemdRun {
		c.Runner = health.SystemdRunner{Systemctl: s.cfg.systemctl}
	}
	return c
}

// takeHealthBaseline lists the units failed before the activation, for checks
// that look for new failures, into the journal (written with the next step).
func (s *Server) takeHealthBaseline(ctx context.Context, op *operation) error {
	hc := op.header.GetHealthChecks()
	if hc == nil || !needsBaseline(healthSpec(hc)) {
		return nil
	}
	failed, err := s.checker().Baseline(ctx)
	if err != nil {
		return err
	}
	op.jr.HealthBaseline = failed
	if len(failed) > 0 {
		op.agentLine("health: units failed before the activation (not counted as new failures): " + strings.Join(failed, ", "))
	}
	return nil
}

// checkHealth runs the header's health checks after a successful activation and
// reports whether the operation goes on (true: they passed, or there are none).
// When they fail it rolls back and finishes the operation ROLLED_BACK.
//
// The deadline is the journal's when a restarted agent runs them again, else the
// checks' timeout from now (the end of the activation).
func (s *Server) checkHealth(ctx context.Context, op *operation) bool {
	hc := op.header.GetHealthChecks()
	if hc == nil {
		return true
	}
	spec := healthSpec(hc)
	again := op.jr.HealthDeadline != nil // journaled before the agent restarted
	if !again {
		d := time.Now().Add(spec.Timeout).UTC()
		op.jr.HealthDeadline = &d
	}
	deadline := *op.jr.HealthDeadline
	if err := s.step(op, stepHealthChecking); err != nil {
		// A restart then recovers from "activating", whose success runs the checks
		// (with a fresh deadline): never a confirm without them.
		s.log.Warn("cannot journal the health checks", "operation", op.id, "err", err)
	}
	left := time.Until(deadline)
	detail := fmt.Sprintf("%d checks, at most %s", len(spec.Checks), spec.Timeout)
	if again {
		if floor := min(spec.Timeout, minRecoveredHealthTime); left < floor {
			op.agentLine(fmt.Sprintf("health: %s was left until the checks' deadline (%s) after the agent restarted; running them for %s",
				max(left, 0).Round(time.Millisecond), deadline.Format(time.RFC3339), floor))
			left = floor
		}
		detail = fmt.Sprintf("%d checks, again after the agent restarted: %s left of %s", len(spec.Checks), left.Round(time.Millisecond), spec.Timeout)
	}
	op.phase(agentv1.Phase_PHASE_HEALTH_CHECKING, detail)
	s.log.Info("health checks", "operation", op.id, "checks", len(spec.Checks), "deadline", time.Now().Add(left).UTC().Format(time.RFC3339))
	hctx, cancel := context.WithTimeout(ctx, left)
	report := s.checker().Run(hctx, spec, op.jr.HealthBaseline, op.agentLine)
	cancel()
	s.crashPoint("health-checked")
	op.jr.HealthReport, _ = protojson.Marshal(healthReport(report)) // a valid message always marshals
	if !report.Passed {
		s.log.Warn("health checks failed", "operation", op.id, "first_failure", report.FirstFailure)
		s.rollBackAndFinish(ctx, op, agentv1.Outcome_OUTCOME_ROLLED_BACK, report.Failure(), true)
		return false
	}
	s.log.Info("health checks passed", "operation", op.id)
	return true
}

// journaledHealth is the report the journal holds, nil when the checks did not
// run (or there are none).
func journaledHealth(j *journal) *agentv1.HealthReport {
	if j == nil || len(j.HealthReport) == 0 {
		return nil
	}
	r := &agentv1.HealthReport{}
	if err := protojson.Unmarshal(j.HealthReport, r); err != nil {
		return nil // checked by readJournal
	}
	return r
}

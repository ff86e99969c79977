package server

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/homystack/nio/agent/internal/health"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
)

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

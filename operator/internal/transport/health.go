package transport

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
	nio "github.com/homystack/nio/api/v1alpha1"
)

// HealthChecks are the checks the agent runs after an activation and before the
// confirm window (ApplyHeader.health_checks): each is retried every Interval until
// it has passed once, all within Timeout; when one does not, the agent re-activates
// the previous generation. Only nio-agent runs them: an Apply that carries them is
// never run over SSH, nor sent to an agent that does not list FeatureHealthChecks.
type HealthChecks struct {
	// Timeout is the overall deadline from the end of the activation (0:
	// DefaultHealthTimeout).
	Timeout time.Duration
	// Interval is the pause between a failed attempt of a check and its next one
	// (0: DefaultHealthInterval).
	Interval time.Duration
	Checks   []HealthCheck
}

// HealthCheck is one named check; exactly one of Units, HTTP and Command is set.
type HealthCheck struct {
	Name    string
	Units   *UnitsCheck
	HTTP    *HTTPCheck
	Command *CommandCheck
}

// UnitsCheck passes when Units are all active and, with NoNewFailures, no unit is
// failed that was not failed before the activation.
type UnitsCheck struct {
	Units         []string
	NoNewFailures bool
}

// HTTPCheck is a GET of URL answered with ExpectStatus (0: DefaultExpectStatus).
// The agent refuses a URL off the host unless AllowRemote.
type HTTPCheck struct {
	URL          string
	ExpectStatus int32
	AllowRemote  bool
}

// CommandCheck runs Argv (Argv[0] an absolute path, no shell) on the host; it must
// exit 0 within Timeout (0: DefaultCommandTimeout).
type CommandCheck struct {
	Argv    []string
	Timeout time.Duration
}

// Defaults of HealthChecks, the same as the API's (spec.healthChecks), for objects
// the API server did not default.
const (
	DefaultHealthTimeout  = 2 * time.Minute
	DefaultHealthInterval = time.Second
	DefaultCommandTimeout = 30 * time.Second
	DefaultExpectStatus   = 200
)

// FeatureHealthChecks is what an agent that runs ApplyHeader.health_checks lists in
// StatusResponse.features.
const FeatureHealthChecks = "health-checks"

// invalidHealthChecksPrefix starts the agent's message when it refuses the checks
// before anything is built (an invalid set, an HTTP URL off the host).
const invalidHealthChecksPrefix = "invalid health checks:"

var (
	// ErrHealthChecksNeedAgent: the request has health checks and no agent that runs
	// them can take it (the agent is disabled, unreachable or too old). Nothing was
	// built or activated: a configuration with checks is never applied unchecked.
	ErrHealthChecksNeedAgent = errors.New("health checks need nio-agent")
	// ErrInvalidHealthChecks: the agent refused the checks before building anything.
	// Retrying the same checks does not help.
	ErrInvalidHealthChecks = errors.New("invalid health checks")
)

// HealthReport is the outcome of an operation's health checks.
type HealthReport struct {
	Passed bool
	// Results are one per check, in the request's order.
	Results []HealthCheckResult
	// FirstFailure names the first check (in the request's order) that did not pass.
	FirstFailure string
}

// HealthCheckResult is the outcome of one check.
type HealthCheckResult struct {
	Name   string
	Passed bool
	// Attempts is how many times it ran.
	Attempts int32
	// Message is what the last attempt saw.
	Message string
}

// Failure is the first check that did not pass: FirstFailure's result, else the
// first failed one. ok is false for a report that passed, none, or one that names
// no failed check.
func (r *HealthReport) Failure() (res HealthCheckResult, ok bool) {
	if r == nil || r.Passed {
		return HealthCheckResult{}, false
	}
	for _, c := range r.Results {
		if c.Name == r.FirstFailure {
			return c, true
		}
	}
	for _, c := range r.Results {
		if !c.Passed {
			return c, true
		}
	}
	return HealthCheckResult{Name: r.FirstFailure}, r.FirstFailure != ""
}

// HealthChecksFor turns spec.healthChecks into the transport's checks, with the
// defaults the API server fills in (an object stored before the field had them keeps
// zero values). nil or no checks: nil.
func HealthChecksFor(spec *nio.HealthChecks) *HealthChecks {
	if spec == nil || len(spec.Checks) == 0 {
		return nil
	}
	hc := &HealthChecks{Timeout: durationOf(spec.Timeout), Interval: durationOf(spec.Interval)}
	for _, c := range spec.Checks {
		out := HealthCheck{Name: c.Name}
		switch {
		case c.Units != nil:
			out.Units = &UnitsCheck{Units: slices.Clone(c.Units.Names), NoNewFailures: c.Units.NoNewFailures}
		case c.HTTP != nil:
			out.HTTP = &HTTPCheck{URL: c.HTTP.URL, ExpectStatus: c.HTTP.ExpectStatus, AllowRemote: c.HTTP.AllowRemote}
		case c.Command != nil:
			out.Command = &CommandCheck{Argv: slices.Clone(c.Command.Command), Timeout: durationOf(c.Command.Timeout)}
		}
		hc.Checks = append(hc.Checks, out)
	}
	return hc.withDefaults()
}

// durationOf is d's duration (nil: 0, defaulted later).
func durationOf(d *metav1.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.Duration
}

// withDefaults is a copy of hc with its zero values defaulted.
func (hc *HealthChecks) withDefaults() *HealthChecks {
	if hc == nil {
		return nil
	}
	out := &HealthChecks{Timeout: hc.Timeout, Interval: hc.Interval, Checks: make([]HealthCheck, 0, len(hc.Checks))}
	if out.Timeout <= 0 {
		out.Timeout = DefaultHealthTimeout
	}
	if out.Interval <= 0 {
		out.Interval = DefaultHealthInterval
	}
	for _, c := range hc.Checks {
		if c.HTTP != nil && c.HTTP.ExpectStatus == 0 {
			h := *c.HTTP
			h.ExpectStatus = DefaultExpectStatus
			c.HTTP = &h
		}
		if c.Command != nil && c.Command.Timeout <= 0 {
			cmd := *c.Command
			cmd.Timeout = DefaultCommandTimeout
			c.Command = &cmd
		}
		out.Checks = append(out.Checks, c)
	}
	return out
}

// healthChecksProto is ApplyHeader.health_checks for hc (defaults filled in).
func healthChecksProto(hc *HealthChecks) *agentv1.HealthChecks {
	hc = hc.withDefaults()
	if hc == nil {
		return nil
	}
	out := &agentv1.HealthChecks{Timeout: durationpb.New(hc.Timeout), Interval: durationpb.New(hc.Interval)}
	for _, c := range hc.Checks {
		pc := &agentv1.HealthCheck{Name: c.Name}
		switch {
		case c.Units != nil:
			pc.Kind = &agentv1.HealthCheck_Units{Units: &agentv1.UnitsCheck{Units: slices.Clone(c.Units.Units), NoNewFailures: c.Units.NoNewFailures}}
		case c.HTTP != nil:
			pc.Kind = &agentv1.HealthCheck_Http{Http: &agentv1.HttpCheck{Url: c.HTTP.URL, ExpectStatus: c.HTTP.ExpectStatus, AllowRemote: c.HTTP.AllowRemote}}
		case c.Command != nil:
			pc.Kind = &agentv1.HealthCheck_Command{Command: &agentv1.CommandCheck{Argv: slices.Clone(c.Command.Argv), Timeout: durationpb.New(c.Command.Timeout)}}
		}
		out.Checks = append(out.Checks, pc)
	}
	return out
}

// healthReportOf maps ApplyResult.health (nil: none).
func healthReportOf(r *agentv1.HealthReport) *HealthReport {
	if r == nil {
		return nil
	}
	out := &HealthReport{Passed: r.GetPassed(), FirstFailure: r.GetFirstFailure()}
	for _, c := range r.GetResults() {
		out.Results = append(out.Results, HealthCheckResult{Name: c.GetName(), Passed: c.GetPassed(), Attempts: c.GetAttempts(), Message: c.GetMessage()})
	}
	return out
}

// healthTimeout is how long the checks of req may take on the host (0: none).
func (req ApplyRequest) healthTimeout() time.Duration {
	if req.HealthChecks == nil {
		return 0
	}
	return req.HealthChecks.withDefaults().Timeout
}

// RefuseHealthChecksOverSSH is the error of an Apply with health checks that only
// SSH could run: agentErr says why the agent could not (nil: it is disabled).
func RefuseHealthChecksOverSSH(agentErr error) error {
	why := "the Machine's agent is disabled (spec.agent.disabled); enable nio-agent on the host, or remove spec.healthChecks"
	if agentErr != nil {
		why = fmt.Sprintf("the agent is unreachable (%v); it is retried until the agent answers", agentErr)
	}
	return fmt.Errorf("%w: nothing was applied over SSH, which cannot run them: %s", ErrHealthChecksNeedAgent, why)
}

// RefuseHealthChecksOnOldAgent is the error of an Apply with health checks to an
// agent that does not list FeatureHealthChecks.
func RefuseHealthChecksOnOldAgent(address, version string) error {
	if version == "" {
		version = "(version unknown)"
	}
	return fmt.Errorf("%w: nio-agent %s at %s is too old to run them (it does not list %q among its features); nothing was applied: upgrade nio-agent on the host",
		ErrHealthChecksNeedAgent, version, address, FeatureHealthChecks)
}

// invalidHealthChecks is the agent's refusal of the checks as an error wrapping
// ErrInvalidHealthChecks (the message already says "invalid health checks").
type invalidHealthChecks string

func (e invalidHealthChecks) Error() string { return string(e) }
func (e invalidHealthChecks) Unwrap() error { return ErrInvalidHealthChecks }

// asInvalidHealthChecks returns the refusal in an agent's message, or nil.
func asInvalidHealthChecks(message string) error {
	i := strings.Index(message, invalidHealthChecksPrefix)
	if i < 0 {
		return nil
	}
	return invalidHealthChecks(message[i:])
}

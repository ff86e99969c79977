// Package health runs the checks that decide whether a newly activated NixOS system
// is healthy: systemd units active and none newly failed, an HTTP GET answered with
// an expected status, a command that exits 0 in time. The agent runs them after
// activation and before the operator confirms; a report that did not pass means the
// agent rolls back, the same way as when no Confirm comes.
//
// Checks are retried every Spec.Interval until each has passed once or the overall
// deadline (Spec.Timeout) ends: a service that needs a few seconds to come up passes,
// one that never does fails at the deadline with the message of its last attempt.
//
// The types here are plain Go, independent of the agent's proto; the proto messages
// map onto them field by field.
package health

import (
	"context"
	"fmt"
	"time"
)

// Limits and defaults of a Spec. Validate enforces the limits; the defaults apply to
// zero values.
const (
	MaxChecks           = 32
	MaxTimeout          = time.Hour
	MinInterval         = 100 * time.Millisecond
	DefaultInterval     = time.Second
	DefaultExpectStatus = 200
	MaxUnitsPerCheck    = 64
	MaxArgs             = 64
	MaxURLLength        = 2048
	MaxNameLength       = 63
)

// Spec is the set of checks run after one activation.
type Spec struct {
	Checks []Check
	// Timeout is the overall deadline, from the start of Run, for every check to
	// have passed once.
	Timeout time.Duration
	// Interval is the pause between a failed attempt of a check and its next one;
	// zero means DefaultInterval.
	Interval time.Duration
}

// Check is one named check; exactly one of Units, HTTP and Command is set.
type Check struct {
	// Name identifies the check in messages and the report: unique in its Spec,
	// letters, digits, '.', '_' and '-', starting with a letter or digit.
	Name    string
	Units   *UnitsCheck
	HTTP    *HTTPCheck
	Command *CommandCheck
}

// UnitsCheck asks systemd about units.
type UnitsCheck struct {
	// Units must all be active (ActiveState active, reloading or refreshing).
	// A name without a type suffix means a .service, as for systemctl. A oneshot
	// service without RemainAfterExit is inactive once it succeeded: check it with a
	// command instead.
	Units []string
	// NoNewFailures passes only while no unit is failed that was not already failed
	// in the baseline taken before activation.
	NoNewFailures bool
}

// HTTPCheck is a GET that must be answered with ExpectStatus.
type HTTPCheck struct {
	// URL is http:// or https://. Its host must be a loopback address, "localhost" or
	// one of the host's own addresses, unless AllowRemote. https verifies the server's
	// certificate against the system roots: a loopback server with a self-signed
	// certificate fails the check.
	URL string
	// ExpectStatus is the status code that passes; zero means DefaultExpectStatus.
	// Redirects to the same host and port are followed; one to another host is not,
	// and its 3xx is the status compared.
	ExpectStatus int
	// AllowRemote lifts the restriction on the URL's host.
	AllowRemote bool
}

// CommandCheck runs a command that must exit 0 within Timeout. The last lines of its
// output go into the check's message, and so into the operation's log and the
// operator's events: a command must not print secrets.
type CommandCheck struct {
	// Argv is the command; Argv[0] an absolute path (no shell, no PATH lookup).
	Argv []string
	// Timeout bounds one attempt; the command's whole process group is killed when
	// it ends. At most the Spec's Timeout.
	Timeout time.Duration
}

// Report is the outcome of Run.
type Report struct {
	// Passed is true when every check passed before the deadline.
	Passed bool
	// Results has one entry per check, in the Spec's order.
	Results []Result
	// FirstFailure is the name of the first check (in the Spec's order) that did not
	// pass; "" when Passed.
	FirstFailure string
}

// Result is the outcome of one check.
type Result struct {
	Name   string
	Passed bool
	// Attempts is how many times the check ran; 0 for a check that was invalid.
	Attempts int
	// Message says what the last attempt saw: the status, the failed units, the
	// command's exit and last lines of output.
	Message string
}

// Failure is a one-line description of the first failed check, for an operation's
// result; "" when the report passed.
func (r Report) Failure() string {
	if r.Passed {
		return ""
	}
	for _, res := range r.Results {
		if res.Name == r.FirstFailure && !res.Passed {
			return fmt.Sprintf("health check %s failed: %s", res.Name, res.Message)
		}
	}
	return "health checks failed"
}

// Checker runs checks on this host. The zero value runs commands as the agent's own
// children and systemctl from PATH.
type Checker struct {
	// Runner runs command checks; nil means DirectRunner{}. Where the agent is
	// sandboxed (the NixOS unit), SystemdRunner gives commands the host's view.
	Runner Runner
	// Systemctl is the systemctl binary for unit checks and the baseline; "" means
	// "systemctl" on PATH. systemctl talks to systemd over its socket, which works
	// from inside the agent's sandbox.
	Systemctl string
}

func (c *Checker) runner() Runner {
	if c.Runner == nil {
		return DirectRunner{}
	}
	return c.Runner
}

func (c *Checker) systemctl() string {
	if c.Systemctl == "" {
		return "systemctl"
	}
	return c.Systemctl
}

// Baseline takes the baseline with a zero Checker.
func Baseline(ctx context.Context) (FailedUnits, error) {
	return (&Checker{}).Baseline(ctx)
}

// Run runs the checks with a zero Checker.
func Run(ctx context.Context, spec Spec, baseline FailedUnits, log func(line string)) Report {
	return (&Checker{}).Run(ctx, spec, baseline, log)
}

func (s Spec) interval() time.Duration {
	if s.Interval == 0 {
		return DefaultInterval
	}
	return s.Interval
}

func (h *HTTPCheck) expectStatus() int {
	if h.ExpectStatus == 0 {
		return DefaultExpectStatus
	}
	return h.ExpectStatus
}

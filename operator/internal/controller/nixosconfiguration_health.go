package controller

import (
	"errors"
	"fmt"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/transport"
)

// healthChecksOf are the checks an apply of action carries: spec.healthChecks for
// switch and test (with boot nothing is activated to check; the API refuses it).
func healthChecksOf(obj *nio.NixosConfiguration, action string) *transport.HealthChecks {
	if action != string(nio.ActionSwitch) && action != string(nio.ActionTest) {
		return nil
	}
	return transport.HealthChecksFor(obj.Spec.HealthChecks)
}

// needAgentRetry is how long a configuration whose checks found no agent to run them
// waits before it tries again (a minute by default): an agent is installed, upgraded
// or brought back by a person, not in seconds.
func (r *NixosConfigurationReconciler) needAgentRetry() time.Duration {
	return 2 * r.retryBase()
}

// healthGate keeps a pass off the host while the verdict of the last attempt on
// these health checks stands: checks the agent refused stay stalled for this
// generation and commit (no new attempt per Machine update), and a Machine without
// an agent to run them is asked again only after needAgentRetry. nil: go on.
func (r *NixosConfigurationReconciler) healthGate(obj *nio.NixosConfiguration, src *resolvedSource, force bool) error {
	if obj.Spec.HealthChecks == nil || force {
		return nil
	}
	ready := readyCondition(obj.Status.Conditions)
	if ready == nil || ready.Status != metav1.ConditionFalse || ready.ObservedGeneration != obj.Generation {
		return nil
	}
	switch ready.Reason {
	case ReasonInvalidHealthChecks:
		if obj.Status.LastAttemptedCommit == src.commit {
			return &outcome.Stalling{Reason: ReasonInvalidHealthChecks, Err: errors.New(ready.Message)}
		}
	case ReasonHealthChecksNeedAgent:
		if wait := ready.LastTransitionTime.Add(r.needAgentRetry()).Sub(r.now()); wait > 0 {
			return outcome.Retry(wait, ready.Reason, ready.Message)
		}
	}
	return nil
}

// healthChecksRefused turns a refusal of the health checks (nothing was applied)
// into the pass's outcome; nil for any other error. prev is the Ready condition
// before the pass: the Warning event of a refusal is recorded once per change, not
// at every retry.
func (r *NixosConfigurationReconciler) healthChecksRefused(obj *nio.NixosConfiguration, m *nio.Machine, commit string, err error, prev metav1.Condition) error {
	rev := revision(obj.Spec.Ref, commit)
	switch {
	case errors.Is(err, transport.ErrInvalidHealthChecks):
		return outcome.Stalled(ReasonInvalidHealthChecks,
			"The agent of Machine %s refused spec.healthChecks, so revision %s was not applied: %v; fix spec.healthChecks (an HTTP check of another host needs allowRemote)", m.Name, rev, err)
	case errors.Is(err, transport.ErrHealthChecksNeedAgent):
		msg := fmt.Sprintf("Revision %s was not applied to Machine %s: %v", rev, m.Name, err)
		g := &outcome.Generic{Reason: ReasonHealthChecksNeedAgent, Err: errors.New(msg), RequeueAfter: r.needAgentRetry()}
		if prev.Reason != ReasonHealthChecksNeedAgent || prev.Message != outcome.Truncate(msg, 1024) {
			g.Action = "Apply"
		}
		return g
	}
	return nil
}

// healthFailure names the check that made res fail and says what it saw, when res
// failed its health checks.
func healthFailure(res transport.ApplyResult) (check, detail string, ok bool) {
	f, ok := res.Health.Failure()
	if !ok || res.Outcome == transport.OutcomeSucceeded {
		return "", "", false
	}
	detail = res.Message
	if !strings.Contains(detail, "health check "+f.Name) {
		detail = fmt.Sprintf("health check %s failed: %s", f.Name, f.Message)
		if res.Message != "" {
			detail += " (" + res.Message + ")"
		}
	}
	return f.Name, detail, true
}

// healthPassed says how many checks passed, for the Applied message ("" without).
func healthPassed(res transport.ApplyResult) string {
	if res.Health == nil || !res.Health.Passed {
		return ""
	}
	return fmt.Sprintf(", %d health checks passed", len(res.Health.Results))
}

// Package outcome is the error taxonomy of a reconcile pass and the one step that
// turns a pass's outcome into status, as Flux's source-controller does (its
// internal/error and internal/reconcile/summarize packages are the model).
//
// A phase returns nil, or one of three errors, each with a condition reason:
//
//   - *Stalling: the user must change something (a missing Secret, an invalid
//     reference). Ready=False, Stalled=True; no requeue: a change to the object or to
//     what it references (the watches) brings the next pass.
//   - *Waiting: the pass waits for something that will happen by itself (a lock, a
//     dependency, a busy host). Reconciling=True, Ready=Unknown; another look after
//     RequeueAfter.
//   - *Generic: something failed and is retried. Ready=False; retried after the
//     phase's own RequeueAfter, or with the workqueue's backoff.
//
// Any other error counts as Generic with reason ReconciliationFailed, and one marked
// ErrConfig as Stalling with reason InvalidConfiguration. Summarize is the one place
// that sets Ready, Reconciling and Stalled (kstatus: Ready always present,
// Reconciling and Stalled only while true), records the Warning event and returns the
// requeue decision.
package outcome

import (
	"errors"
	"fmt"
	"time"
)

// Reasons Summarize falls back to.
const (
	// ReasonInvalidConfiguration is the reason of an error marked ErrConfig.
	ReasonInvalidConfiguration = "InvalidConfiguration"
	// ReasonFailed is the reason of an error of no kind.
	ReasonFailed = "ReconciliationFailed"
)

// ErrConfig marks an error the user must fix (a missing Secret key, an unparsable
// key): retrying without a change does not help, so it stalls the object. Packages
// that don't know the controllers' reasons (sources, host connections) mark their
// errors with it.
var ErrConfig = errors.New("configuration error")

type configError struct{ err error }

func (e configError) Error() string   { return e.err.Error() }
func (e configError) Unwrap() []error { return []error{e.err, ErrConfig} }

// AsConfigError marks err as a configuration error (nil stays nil).
func AsConfigError(err error) error {
	if err == nil {
		return nil
	}
	return configError{err}
}

// Stalling is a configuration error: terminal until something changes.
type Stalling struct {
	Reason string
	Err    error
}

func (e *Stalling) Error() string { return e.Err.Error() }
func (e *Stalling) Unwrap() error { return e.Err }

// Stalled returns a *Stalling with a formatted message.
func Stalled(reason, format string, args ...any) error {
	return &Stalling{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Waiting is a pass that cannot go on yet, for a reason that passes by itself.
type Waiting struct {
	Reason string
	Err    error
	// RequeueAfter is when to look again.
	RequeueAfter time.Duration
}

func (e *Waiting) Error() string { return e.Err.Error() }
func (e *Waiting) Unwrap() error { return e.Err }

// Wait returns a *Waiting with a formatted message.
func Wait(after time.Duration, reason, format string, args ...any) error {
	return &Waiting{Reason: reason, Err: fmt.Errorf(format, args...), RequeueAfter: after}
}

// Generic is a failure that is retried.
type Generic struct {
	Reason string
	Err    error
	// RequeueAfter is the phase's own backoff (one read from status history survives a
	// restart); zero returns the error, so the workqueue backs off.
	RequeueAfter time.Duration
	// Action, when set, records a Warning event for the failure, with this action
	// ("Apply", "Install", "Remove").
	Action string
	// Note is the event's note (default: the error's message), e.g. with a log tail.
	Note string
}

func (e *Generic) Error() string { return e.Err.Error() }
func (e *Generic) Unwrap() error { return e.Err }

// Failed returns a *Generic for err, retried with the workqueue's backoff.
func Failed(reason string, err error) error {
	return &Generic{Reason: reason, Err: err}
}

// Retry returns a *Generic with a message, retried after after.
func Retry(after time.Duration, reason, message string) *Generic {
	return &Generic{Reason: reason, Err: errors.New(message), RequeueAfter: after}
}

// Kind names what Summarize makes of an error.
type Kind int

const (
	KindNone Kind = iota
	KindStalling
	KindWaiting
	KindGeneric
)

// Classify returns err's kind and reason: those of the outermost *Stalling, *Waiting
// or *Generic in its chain (a phase that wraps another's error decides what it is), else
// Stalling for one marked ErrConfig, else Generic with ReasonFailed.
func Classify(err error) (Kind, string) {
	k, reason, _ := classify(err)
	return k, reason
}

func classify(err error) (Kind, string, error) {
	if err == nil {
		return KindNone, "", nil
	}
	if k, reason, typed := outermost(err); typed != nil {
		return k, reason, typed
	}
	if errors.Is(err, ErrConfig) {
		return KindStalling, ReasonInvalidConfiguration, nil
	}
	return KindGeneric, ReasonFailed, nil
}

// outermost walks err's chain depth first and returns the first typed error.
func outermost(err error) (Kind, string, error) {
	switch e := err.(type) {
	case *Stalling:
		return KindStalling, e.Reason, e
	case *Waiting:
		return KindWaiting, e.Reason, e
	case *Generic:
		return KindGeneric, e.Reason, e
	case interface{ Unwrap() error }:
		if inner := e.Unwrap(); inner != nil {
			return outermost(inner)
		}
	case interface{ Unwrap() []error }:
		for _, inner := range e.Unwrap() {
			if k, reason, typed := outermost(inner); typed != nil {
				return k, reason, typed
			}
		}
	}
	return KindNone, "", nil
}

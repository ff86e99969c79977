package health

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"
)

// maxLoggedFailures bounds the failure lines logged per check: a failure whose
// message changes at every attempt (a command printing the time) must not flood the
// operation's log for the whole deadline.
const maxLoggedFailures = 10

// maxMessage bounds an attempt's message (a line of output can be long): it ends up
// in the operation's result and the operator's events.
const maxMessage = 1024

// Run runs every check of spec until each has passed once or spec.Timeout (from
// now) ends, retrying a failed check every spec.Interval; checks run concurrently.
// baseline is what Baseline returned before activation.
//
// log, when not nil, gets one line when a check first fails, when its failure
// changes, when it passes, and a summary at the end; it is never called by two
// goroutines at once, and not after Run returns.
//
// Run expects a spec that Validate accepted. One that is not well formed (the host
// policy aside, which needs the host's addresses) fails without running anything.
func (c *Checker) Run(ctx context.Context, spec Spec, baseline FailedUnits, log func(line string)) Report {
	var mu sync.Mutex
	logf := func(format string, a ...any) {
		if log != nil {
			mu.Lock()
			defer mu.Unlock()
			log(fmt.Sprintf(format, a...))
		}
	}
	results := make([]Result, len(spec.Checks))
	for i, ch := range spec.Checks {
		results[i].Name = ch.Name
	}
	if errs := specErrors(spec); len(errs) > 0 {
		msg := "invalid health checks: " + errors.Join(errs...).Error()
		for i := range results {
			results[i].Message = msg
		}
		logf("health: %s", msg)
		return summarize(results)
	}
	if len(spec.Checks) == 0 {
		return Report{Passed: true, Results: results}
	}

	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, spec.Timeout)
	defer cancel()
	logf("health: running %d checks for at most %s, retrying every %s", len(spec.Checks), spec.Timeout, spec.interval())
	var wg sync.WaitGroup
	for i := range spec.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.retry(ctx, spec, spec.Checks[i], baseline, logf)
		}()
	}
	wg.Wait()
	r := summarize(results)
	if r.Passed {
		logf("health: all %d checks passed in %s", len(results), time.Since(start).Round(time.Millisecond))
	} else {
		for _, res := range results {
			if !res.Passed {
				logf("health check %s failed: %s", res.Name, res.Message)
			}
		}
	}
	return r
}

func summarize(results []Result) Report {
	r := Report{Passed: true, Results: results}
	for _, res := range results {
		if !res.Passed {
			r.Passed = false
			r.FirstFailure = res.Name
			break
		}
	}
	return r
}

// retry runs ch until it passes or ctx ends.
func (c *Checker) retry(ctx context.Context, spec Spec, ch Check, baseline FailedUnits, logf func(string, ...any)) Result {
	r := Result{Name: ch.Name}
	var lastLogged, lastWhole string
	logged := 0
	for {
		r.Attempts++
		r.Passed, r.Message = c.attempt(ctx, ch, baseline)
		r.Message = truncate(r.Message, maxMessage)
		if !r.Passed && ctx.Err() != nil && lastWhole != "" {
			// The deadline cut this attempt short ("no response before the
			// deadline"); the attempt before it saw what is actually wrong.
			r.Message = fmt.Sprintf("%s (attempt %d was cut short by the deadline)", lastWhole, r.Attempts)
		}
		lastWhole = r.Message
		if r.Passed {
			logf("health check %s passed (attempt %d): %s", ch.Name, r.Attempts, r.Message)
			return r
		}
		// At the deadline Run's summary line says it; no line of its own.
		if r.Message != lastLogged && logged < maxLoggedFailures && ctx.Err() == nil {
			logged++
			lastLogged = r.Message
			logf("health check %s failing (attempt %d): %s", ch.Name, r.Attempts, r.Message)
			if logged == maxLoggedFailures {
				logf("health check %s: further changes of its failure are not logged", ch.Name)
			}
		}
		t := time.NewTimer(spec.interval())
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		if err := ctx.Err(); errors.Is(err, context.Canceled) {
			r.Message = fmt.Sprintf("stopped before passing (%d attempts); last: %s", r.Attempts, r.Message)
			return r
		} else if err != nil {
			r.Message = fmt.Sprintf("did not pass within %s (%d attempts); last: %s", spec.Timeout, r.Attempts, r.Message)
			return r
		}
	}
}

func (c *Checker) attempt(ctx context.Context, ch Check, baseline FailedUnits) (bool, string) {
	switch {
	case ch.Units != nil:
		return c.checkUnits(ctx, ch.Units, baseline)
	case ch.HTTP != nil:
		return c.checkHTTP(ctx, ch.HTTP)
	case ch.Command != nil:
		return c.checkCommand(ctx, ch.Command)
	}
	return false, "no check kind set" // refused by specErrors
}

// truncate cuts s to at most n bytes, on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

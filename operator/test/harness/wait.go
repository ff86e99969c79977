package harness

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// WaitFor checks cond every interval until it holds, returns an error, or timeout
// passes. Cluster state has no push signal the harness could wait on short of a
// watch, and a poll of the API server is what a user does with kubectl get too.
// On timeout the error names what and the last reason cond gave.
func WaitFor(ctx context.Context, what string, timeout time.Duration, cond func() (bool, string, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		ok, why, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		last = why
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %s (last: %s)", what, timeout, last)
		case <-tick.C:
		}
	}
}

// waitHTTP waits until url answers 200, or p exits.
func waitHTTP(ctx context.Context, url string, p *Process, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	return WaitFor(ctx, "GET "+url, timeout, func() (bool, string, error) {
		if p.Exited() {
			return false, "", fmt.Errorf("%s exited: %v", p.name, p.err())
		}
		resp, err := c.Get(url)
		if err != nil {
			return false, err.Error(), nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status, nil
	})
}

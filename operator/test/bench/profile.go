package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// profiler takes CPU profiles of the operator, kube-apiserver and the fleet simulator while a round
// runs (-profile-dir): where the cores went, function by function. Off by default;
// a profile costs its process a few percent of CPU while it runs.
type profiler struct {
	dir     string
	seconds int
	st      *stack
	// simURL is the fleet simulator's stats address ("" when none).
	simURL string
	wg     sync.WaitGroup
}

// start profiles the processes for p.seconds from now, into
// <dir>/<round>-<process>.pprof, and takes the operator's heap at the end of that
// window (<round>-operator.heap); wait waits for the files.
func (p *profiler) start(ctx context.Context, round string) {
	if p == nil || p.dir == "" {
		return
	}
	opURL := strings.TrimSuffix(p.st.metricsURL, "/metrics")
	profile := fmt.Sprintf("/debug/pprof/profile?seconds=%d", p.seconds)
	p.run(ctx, http.DefaultClient, opURL+"/debug/pprof/heap", round+"-operator.heap", time.Duration(p.seconds)*time.Second)
	p.run(ctx, http.DefaultClient, opURL+profile, round+"-operator.pprof", 0)
	if p.simURL != "" {
		p.run(ctx, http.DefaultClient, p.simURL+profile, round+"-nio-fleet-sim.pprof", 0)
	}
	if c, err := rest.HTTPClientFor(p.st.env.Config); err != nil {
		fmt.Fprintf(os.Stderr, "profile %s kube-apiserver: %v\n", round, err)
	} else {
		p.run(ctx, c, strings.TrimSuffix(p.st.env.Config.Host, "/")+profile, round+"-kube-apiserver.pprof", 0)
	}
}

// run fetches url into file in the background, after delay.
func (p *profiler) run(ctx context.Context, c *http.Client, url, file string, delay time.Duration) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return
		}
		if err := p.get(ctx, c, url, filepath.Join(p.dir, file)); err != nil {
			fmt.Fprintf(os.Stderr, "profile %s: %v\n", file, err)
		}
	}()
}

func (p *profiler) get(ctx context.Context, c *http.Client, url, file string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(p.seconds+30)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s", resp.Status)
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (p *profiler) wait() {
	if p != nil {
		p.wg.Wait()
	}
}

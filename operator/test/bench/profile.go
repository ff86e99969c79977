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

// start profiles both processes for p.seconds from now, into
// <dir>/<round>-<process>.pprof; wait waits for the files.
func (p *profiler) start(ctx context.Context, round string) {
	if p == nil || p.dir == "" {
		return
	}
	opURL := strings.TrimSuffix(p.st.metricsURL, "/metrics")
	targets := map[string]func() (*http.Client, string, error){
		"operator": func() (*http.Client, string, error) { return http.DefaultClient, opURL, nil },
		"kube-apiserver": func() (*http.Client, string, error) {
			c, err := rest.HTTPClientFor(p.st.env.Config)
			return c, strings.TrimSuffix(p.st.env.Config.Host, "/"), err
		},
	}
	// The operator's heap at the end of the CPU profile: what its memory holds
	// while the round runs.
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		select {
		case <-time.After(time.Duration(p.seconds) * time.Second):
		case <-ctx.Done():
			return
		}
		if err := p.get(ctx, http.DefaultClient, opURL+"/debug/pprof/heap", filepath.Join(p.dir, round+"-operator.heap")); err != nil {
			fmt.Fprintf(os.Stderr, "heap profile %s: %v\n", round, err)
		}
	}()
	if p.simURL != "" {
		targets["nio-fleet-sim"] = func() (*http.Client, string, error) { return http.DefaultClient, p.simURL, nil }
	}
	for name, target := range targets {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.fetch(ctx, target, filepath.Join(p.dir, round+"-"+name+".pprof")); err != nil {
				fmt.Fprintf(os.Stderr, "profile %s %s: %v\n", round, name, err)
			}
		}()
	}
}

func (p *profiler) fetch(ctx context.Context, target func() (*http.Client, string, error), file string) error {
	c, base, err := target()
	if err != nil {
		return err
	}
	return p.get(ctx, c, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, p.seconds), file)
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

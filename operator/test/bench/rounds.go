package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
)

// measure runs action at T0 and waits until done holds for every object of list.
func measure(ctx context.Context, st *stack, git *gitServer, sim *fleetSim, o fleetOptions, name, desc string,
	list client.ObjectList, done func(client.Object) bool, action func() error) (Round, error) {
	r := Round{Name: name, Description: desc, PushToFirstApplySeconds: -1}
	m0, err := st.metrics(ctx)
	if err != nil {
		return r, err
	}
	g0, u0, c0 := git.counts(), st.usage(), childCPU()
	s0, err := sim.stats(ctx)
	if err != nil {
		return r, err
	}
	wctx, cancel := context.WithTimeout(ctx, o.roundTimeout)
	defer cancel()
	started := make(chan struct{})
	type outcome struct {
		at  map[string]time.Time
		err error
	}
	out := make(chan outcome, 1)
	go func() {
		at, err := waitAll(wctx, st.c, list, fleetNamespace, o.machines, done, started)
		out <- outcome{at, err}
	}()
	select {
	case <-started:
	case res := <-out:
		return r, res.err
	}
	prof := o.profiler(st, sim)
	prof.start(ctx, fmt.Sprintf("%d-%s", o.machines, name))
	defer prof.wait()
	rss := sampleRSS(st.op.pid())
	t0 := time.Now()
	if err := action(); err != nil {
		rss.peak()
		cancel()
		<-out
		return r, fmt.Errorf("%s: %w", name, err)
	}
	r.ActionSeconds = time.Since(t0).Seconds()
	o.log.Info("round started", "round", name, "machines", o.machines, "action_s", r.ActionSeconds)
	res := <-out
	r.WallSeconds, r.CPUSeconds = time.Since(t0).Seconds(), cpuDelta(c0, childCPU())
	r.OperatorPeakRSSMiB = rss.peak()
	durations := make([]float64, 0, len(res.at))
	r.doneAt = make(map[string]float64, len(res.at))
	for name, at := range res.at {
		durations = append(durations, at.Sub(t0).Seconds())
		r.doneAt[name] = at.Sub(t0).Seconds()
	}
	r.Converge = spread(durations)
	r.TotalSeconds = r.Converge.Max
	m1, merr := st.metrics(ctx)
	s1, serr := sim.stats(ctx)
	u1 := st.usage()
	r.Git = git.counts().minus(g0)
	r.OperatorCPUSeconds = u1.CPUSeconds - u0.CPUSeconds
	if merr == nil {
		r.APIRequests = m1["rest_client_requests_total"] - m0["rest_client_requests_total"]
		r.APIRequestsPerApply = r.APIRequests / float64(o.machines)
		r.TLSHandshakes = m1["nio_agent_tls_handshakes_total"] - m0["nio_agent_tls_handshakes_total"]
	}
	if serr == nil {
		first := int64(0)
		for k, s := range s1 {
			r.SourceBytes += s.SourceBytes - s0[k].SourceBytes
			for _, h := range s.ApplyHeaders[len(s0[k].ApplyHeaders):] {
				r.ApplyHeaders++
				if h >= t0.UnixNano() && (first == 0 || h < first) {
					first = h
				}
			}
		}
		if first != 0 {
			r.PushToFirstApplySeconds = time.Duration(first - t0.UnixNano()).Seconds()
		}
	}
	o.log.Info("round done", "round", name, "operator_peak_rss_mib", r.OperatorPeakRSSMiB, "tls_handshakes", r.TLSHandshakes, "total_s", r.TotalSeconds, "p50_s", r.Converge.P50, "first_apply_s", r.PushToFirstApplySeconds,
		"git", r.Git, "source_bytes", r.SourceBytes, "api_per_apply", r.APIRequestsPerApply)
	if res.err != nil {
		return r, fmt.Errorf("%s: %w", name, res.err)
	}
	return r, nil
}

// measureQuiet fires the webhook for an unchanged repository and waits until the
// operator has reconciled every configuration once more.
func measureQuiet(ctx context.Context, st *stack, git *gitServer, sim *fleetSim, o fleetOptions, repoURL, commit string) (Round, error) {
	r := Round{Name: "webhook-unchanged", PushToFirstApplySeconds: -1,
		Description: "webhook POSTed at T0 with no new commit; until the operator has reconciled all N configurations (nothing to apply)"}
	// Every pass counts, whatever its result label (a pass that requeues after the
	// interval is "requeue_after").
	passes := func(m map[string]float64) float64 {
		n := 0.0
		for k, v := range m {
			if strings.HasPrefix(k, "controller_runtime_reconcile_total{") && strings.Contains(k, `controller="nixosconfiguration"`) {
				n += v
			}
		}
		return n
	}
	m0, err := st.metrics(ctx)
	if err != nil {
		return r, err
	}
	g0, u0, c0 := git.counts(), st.usage(), childCPU()
	s0, err := sim.stats(ctx)
	if err != nil {
		return r, err
	}
	t0 := time.Now()
	if err := st.push(ctx, repoURL, commit); err != nil {
		return r, err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(o.roundTimeout)
	var m1 map[string]float64
	for {
		m1, err = st.metrics(ctx)
		if err != nil {
			return r, err
		}
		if passes(m1)-passes(m0) >= float64(o.machines) {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			return r, fmt.Errorf("webhook-unchanged: %v of %d reconciles", passes(m1)-passes(m0), o.machines)
		case <-ctx.Done():
			return r, ctx.Err()
		}
	}
	r.TotalSeconds = time.Since(t0).Seconds()
	r.WallSeconds, r.CPUSeconds = r.TotalSeconds, cpuDelta(c0, childCPU())
	r.Converge = Spread{Max: r.TotalSeconds}
	r.Git = git.counts().minus(g0)
	r.OperatorCPUSeconds = st.usage().CPUSeconds - u0.CPUSeconds
	r.APIRequests = m1["rest_client_requests_total"] - m0["rest_client_requests_total"]
	r.APIRequestsPerApply = r.APIRequests / float64(o.machines)
	if s1, err := sim.stats(ctx); err == nil {
		for k, s := range s1 {
			r.SourceBytes += s.SourceBytes - s0[k].SourceBytes
			r.ApplyHeaders += len(s.ApplyHeaders) - len(s0[k].ApplyHeaders)
		}
	}
	o.log.Info("round done", "round", r.Name, "total_s", r.TotalSeconds, "git", r.Git, "applies", r.ApplyHeaders)
	return r, nil
}

func cpuDelta(a, b map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range b {
		out[k] = v - a[k]
	}
	return out
}

// FleetResult is the fleet benchmark at one size.
type FleetResult struct {
	Machines         int        `json:"machines"`
	BuildTimeSeconds float64    `json:"buildTimeSeconds"`
	Concurrency      int        `json:"concurrency"`
	ProbeInterval    string     `json:"probeInterval"`
	SetupSeconds     float64    `json:"setupSeconds"`
	Rounds           []Round    `json:"rounds"`
	Idle             *IdleRound `json:"idle,omitempty"`
	Operator         procUsage  `json:"operator"`
	FleetSimPeakRSS  float64    `json:"fleetSimPeakRSSMiB"`
	// FacterReportBytes is the size of the nixos-facter report each agent returns.
	FacterReportBytes int    `json:"facterReportBytes"`
	Error             string `json:"error,omitempty"`
}

func spread(d []float64) Spread {
	if len(d) == 0 {
		return Spread{}
	}
	sort.Float64s(d)
	q := func(p float64) float64 {
		i := int(p*float64(len(d))+0.5) - 1
		return d[min(max(i, 0), len(d)-1)]
	}
	return Spread{P50: q(0.50), P95: q(0.95), Max: d[len(d)-1]}
}

package main

import (
	"fmt"
	"io"
	"strings"
)

// Target is one of DESIGN.md's targets with what this run measured.
type Target struct {
	Name     string `json:"name"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

func round(r FleetResult, name string) (Round, bool) {
	for _, rd := range r.Rounds {
		if rd.Name == name {
			return rd, true
		}
	}
	return Round{}, false
}

// targets compares the largest completed fleet run (and the Nix run) with the goals.
func targets(res Results) []Target {
	var ts []Target
	var big *FleetResult
	for i := range res.Fleet {
		if _, ok := round(res.Fleet[i], "push"); ok && (big == nil || res.Fleet[i].Machines > big.Machines) {
			big = &res.Fleet[i]
		}
	}
	for _, r := range res.Fleet {
		push, ok := round(r, "push")
		switch {
		case !ok:
		case r.Machines == 1000:
			ts = append(ts, Target{"converge 1000 machines", "≤ 30 s on 2 cores (floor 20 s)",
				fmt.Sprintf("%.1f s on %d CPUs", push.TotalSeconds, res.Machine.CPUs), push.TotalSeconds <= 30 && push.ApplyHeaders >= r.Machines})
		case r.Machines == 5000:
			ts = append(ts, Target{"converge 5000 machines", "≤ 150 s on 2 cores",
				fmt.Sprintf("%.1f s on %d CPUs", push.TotalSeconds, res.Machine.CPUs), push.TotalSeconds <= 150 && push.ApplyHeaders >= r.Machines},
				Target{"operator peak RSS at 5000", "≤ 400 MiB", fmt.Sprintf("%.0f MiB", r.Operator.PeakRSSMiB), r.Operator.PeakRSSMiB <= 400})
		}
		if i := r.Idle; i != nil {
			ts = append(ts,
				Target{fmt.Sprintf("idle %d: API requests", r.Machines), "≤ 100 per minute", fmt.Sprintf("%.1f per minute", i.APIRequestsPerMinute), i.APIRequestsPerMinute <= 100},
				Target{fmt.Sprintf("idle %d: operator CPU", r.Machines), "≤ 2 s per minute", fmt.Sprintf("%.2f s per minute", i.OperatorCPUSecondsPerMinute), i.OperatorCPUSecondsPerMinute <= 2},
				Target{fmt.Sprintf("idle %d: SSH logins", r.Machines), "0 (agent answers, host key pinned)", fmt.Sprintf("%.1f per minute", i.SSHConnectionsPerMinute), i.SSHConnectionsPerMinute == 0},
				Target{fmt.Sprintf("idle %d: ref listings", r.Machines), "1 per repository per interval (5m)", fmt.Sprintf("%.2f per minute", i.LsRemotesPerMinute), i.LsRemotesPerMinute <= 1.0/5*1.5},
				Target{fmt.Sprintf("idle %d: applies", r.Machines), "0", fmt.Sprint(i.Applies), i.Applies == 0},
			)
		}
	}
	if big != nil {
		push, _ := round(*big, "push")
		if big.Machines <= 1000 {
			// 5000 has its own goal (above).
			ts = append(ts, Target{"operator peak RSS", "≤ 300 MiB", fmt.Sprintf("%.0f MiB at %d machines", big.Operator.PeakRSSMiB, big.Machines), big.Operator.PeakRSSMiB <= 300})
		}
		ts = append(ts,
			Target{"git fetches per push", "1 per push per repo", fmt.Sprintf("%d fetch, %d ls-remote", push.Git.Fetches, push.Git.LsRemotes), push.Git.Fetches == 1},
			Target{"push → first apply start", "≤ 1 s with the webhook", fmt.Sprintf("%.3f s", push.PushToFirstApplySeconds), push.PushToFirstApplySeconds >= 0 && push.PushToFirstApplySeconds <= 1},
		)
		if re, ok := round(*big, "reapply-unchanged"); ok {
			ts = append(ts, Target{"source bytes re-sent, digest unchanged", "0", fmt.Sprintf("%d bytes over %d applies", re.SourceBytes, re.ApplyHeaders), re.SourceBytes == 0 && re.ApplyHeaders > 0})
		}
	}
	if n := res.Nix; n != nil && n.Ratio > 0 {
		ts = append(ts, Target{"NIO / direct apply time", "≤ 1.2", fmt.Sprintf("%.2f (median %.2f s vs %.2f s)", n.Ratio, n.NIOMedianSeconds, n.DirectMedianSeconds), n.Ratio <= 1.2})
	}
	return ts
}

func printReport(w io.Writer, res Results, out, png string) {
	fmt.Fprintf(w, "\nNIO benchmark — %d CPUs (%s), %d GiB, %s\n", res.Machine.CPUs, res.Machine.CPUModel, res.Machine.MemoryGiB, res.Machine.GoVersion)
	for _, r := range res.Fleet {
		fmt.Fprintf(w, "\nfleet of %d machines (simulated build %.1fs, --concurrency %d, --probe-interval %s)", r.Machines, r.BuildTimeSeconds, r.Concurrency, r.ProbeInterval)
		if r.Error != "" {
			fmt.Fprintf(w, "  ERROR: %s", r.Error)
		}
		fmt.Fprintf(w, "\n  operator: peak RSS %.0f MiB, CPU %.1f s total; fleet-sim peak RSS %.0f MiB\n", r.Operator.PeakRSSMiB, r.Operator.CPUSeconds, r.FleetSimPeakRSS)
		fmt.Fprintf(w, "  %-18s %8s %8s %8s %10s %8s %6s %6s %12s %9s %8s\n", "round", "p50 s", "p95 s", "total s", "1st apply", "applies", "lsrem", "fetch", "src bytes", "API/apply", "CPU s")
		for _, rd := range r.Rounds {
			first := "-"
			if rd.PushToFirstApplySeconds >= 0 {
				first = fmt.Sprintf("%.3f s", rd.PushToFirstApplySeconds)
			}
			fmt.Fprintf(w, "  %-18s %8.2f %8.2f %8.2f %10s %8d %6d %6d %12d %9.1f %8.1f\n", rd.Name, rd.Converge.P50, rd.Converge.P95, rd.TotalSeconds,
				first, rd.ApplyHeaders, rd.Git.LsRemotes, rd.Git.Fetches, rd.SourceBytes, rd.APIRequestsPerApply, rd.OperatorCPUSeconds)
		}
		if i := r.Idle; i != nil {
			fmt.Fprintf(w, "  idle %.0f s: operator CPU %.2f s/min, API %.1f req/min %v, ls-remote %.2f/min, fetch %.2f/min, SSH %.1f/min, applies %d, passes %v\n",
				i.Seconds, i.OperatorCPUSecondsPerMinute, i.APIRequestsPerMinute, i.APIRequestsByMethod, i.LsRemotesPerMinute, i.FetchesPerMinute,
				i.SSHConnectionsPerMinute, i.Applies, i.Passes)
		}
		for _, rd := range r.Rounds {
			if rd.Fleet != nil {
				printFleetRound(w, r, rd)
			}
		}
	}
	if n := res.Nix; n != nil {
		fmt.Fprintf(w, "\nNIO vs direct (real Nix, fixture build hashing %d MiB): ", n.WorkMiB)
		if n.Error != "" {
			fmt.Fprintf(w, "ERROR: %s\n", n.Error)
		}
		fmt.Fprintf(w, "NIO %s s, direct %s s; medians %.2f s vs %.2f s, ratio %.2f\n", secs(n.NIOSeconds), secs(n.DirectSeconds), n.NIOMedianSeconds, n.DirectMedianSeconds, n.Ratio)
		fmt.Fprintf(w, "  system already built (fixed cost of each path): NIO %s s, direct %s s; medians %.3f s vs %.3f s\n",
			secs(n.NoBuildNIOSeconds), secs(n.NoBuildDirectSeconds), n.NoBuildNIOMedianSeconds, n.NoBuildDirectMedianSeconds)
	}
	fmt.Fprintf(w, "\ntargets:\n")
	for _, t := range res.Targets {
		mark := "MISSED"
		if t.Met {
			mark = "met"
		}
		fmt.Fprintf(w, "  %-6s %-40s goal %-32s measured %s\n", mark, t.Name, t.Goal, t.Measured)
	}
	fmt.Fprintf(w, "\nresults: %s\nplot:    %s\n", out, png)
}

// printFleetRound prints a fleet round's batches against their floor:
// ceil(size / concurrency) × build time + health check time each.
func printFleetRound(w io.Writer, r FleetResult, rd Round) {
	f := rd.Fleet
	fmt.Fprintf(w, "  %s: %d batches, rollout %s with %d updated; floor per batch ceil(size/%d) × %.1f s + health check %.4f s\n",
		rd.Name, len(f.Batches), f.Phase, f.Updated, r.Concurrency, r.BuildTimeSeconds, f.HealthCheckSeconds)
	fmt.Fprintf(w, "    %-8s %6s %9s %9s %8s %8s %8s\n", "batch", "size", "start s", "end s", "took s", "floor s", "gap s")
	for _, b := range f.Batches {
		fmt.Fprintf(w, "    %-8s %6d %9.2f %9.2f %8.2f %8.2f %8.2f\n", b.Name, b.Size, b.Start, b.End, b.Seconds, b.FloorSeconds, b.GapSeconds)
	}
	ratio := 0.0
	if f.FloorSeconds > 0 {
		ratio = rd.TotalSeconds / f.FloorSeconds
	}
	fmt.Fprintf(w, "    total %.2f s, floor %.2f s (%.2f× the floor); the fleet said Completed at %.2f s\n", rd.TotalSeconds, f.FloorSeconds, ratio, f.CompletedSeconds)
}

func secs(v []float64) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return "[" + strings.Join(s, " ") + "]"
}

// Command bench is `make bench`: NIO's fleet benchmark and its NIO-vs-direct Nix
// benchmark, against the real control plane (kube-apiserver and etcd from bin/k8s),
// the real nio-operator binary, real mTLS and a real git http-backend.
//
// Fleet benchmark, per size N: N Machines served by nio-fleet-sim (real agent gRPC
// servers with the simulated executor, one loopback port and one certificate from the
// operator's CA each) and N NixosConfigurations on one repository. After every
// Machine runs commit 1, commit 2 is pushed and the signed generic webhook POSTed;
// the benchmark measures until every Machine's status.appliedCommit is commit 2.
// Then the webhook fires again without a new commit, and every configuration is
// forced (requestedAt) with an unchanged source digest. Last, the configurations are
// deleted and the same Machines put into one NixosFleet (batches of 10%, a command
// health check): its first rollout, then a pushed commit rolled out batch by batch,
// each batch timed against its floor (rollout.go).
//
// NIO-vs-direct benchmark: one real nio-agent with real Nix builds and switches a
// fixture flake whose build does a fixed amount of CPU work, through the operator
// (push → webhook → appliedCommit), alternating with the same nix build, nix-env
// --set and switch-to-configuration run directly by the benchmark.
//
// Results go to -out (JSON) and a PNG of convergence against fleet size beside it.
// Targets are reported, never asserted.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/homystack/nio/operator/internal/testenv"
)

// Results is the JSON the benchmark writes.
type Results struct {
	StartedAt time.Time     `json:"startedAt"`
	Machine   machineInfo   `json:"machine"`
	Fleet     []FleetResult `json:"fleet"`
	Nix       *NixResult    `json:"nix,omitempty"`
	Targets   []Target      `json:"targets"`
}

type machineInfo struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpuModel"`
	MemoryGiB int    `json:"memoryGiB"`
	GoVersion string `json:"goVersion"`
	Kernel    string `json:"kernel"`
}

func main() {
	sizes := flag.String("n", "10,100,1000", "fleet sizes to run, comma-separated (e.g. 1000)")
	buildTime := flag.Duration("build-time", 2*time.Second, "simulated build time of every apply")
	concurrency := flag.Int("concurrency", 100, "the operator's --concurrency")
	probeInterval := flag.Duration("probe-interval", 0, "the operator's --probe-interval (0: the operator's default, 1m)")
	idle := flag.Duration("idle", 5*time.Minute, "length of the idle round (nothing to do; 0 skips it)")
	idleSizes := flag.String("idle-sizes", "1000", "fleet sizes that run the idle round, comma-separated")
	fleetRounds := flag.Bool("fleet-rounds", true, "run the NixosFleet rounds after the others")
	roundTimeout := flag.Duration("round-timeout", 15*time.Minute, "longest one round may take")
	out := flag.String("out", "hack/bench/results/bench.json", "results file; the plot is written beside it as .png")
	nixRuns := flag.Int("nix-runs", 5, "NIO-vs-direct repetitions of each side (0 skips the Nix benchmark)")
	nixWork := flag.Int("nix-work-mib", 600, "MiB the fixture's build hashes (its CPU work)")
	workDir := flag.String("work-dir", "", "scratch directory (default: a new temporary directory, removed afterwards)")
	profileDir := flag.String("profile-dir", "", "write CPU profiles of the operator and kube-apiserver, one per timed round, into this directory")
	profileSeconds := flag.Int("profile-seconds", 20, "length of each -profile-dir profile, from the round's start")
	replot := flag.String("replot", "", "only redraw the plot (and reprint the report) of this results file")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	// The control plane's libraries log through controller-runtime; only their
	// warnings are worth showing beside the benchmark's own lines.
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if *replot != "" {
		if err := redraw(*replot); err != nil {
			log.Error("replot failed", "err", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	o := runOptions{sizes: *sizes, idleSizes: *idleSizes, buildTime: *buildTime, concurrency: *concurrency, probeInterval: *probeInterval,
		idle: *idle, fleetRounds: *fleetRounds, roundTimeout: *roundTimeout, out: *out, nixRuns: *nixRuns, nixWork: *nixWork, workDir: *workDir,
		profileDir: *profileDir, profileSeconds: *profileSeconds}
	if err := run(ctx, log, o); err != nil {
		log.Error("bench failed", "err", err)
		os.Exit(1)
	}
}

// runOptions are the command line's.
type runOptions struct {
	sizes, idleSizes    string
	buildTime           time.Duration
	concurrency         int
	probeInterval, idle time.Duration
	fleetRounds         bool
	roundTimeout        time.Duration
	out                 string
	nixRuns, nixWork    int
	workDir             string
	profileDir          string
	profileSeconds      int
}

// fleetSizes parses a comma-separated list of fleet sizes.
func fleetSizes(flagName, list string) ([]int, error) {
	var ns []int
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a fleet size", flagName, s)
		}
		ns = append(ns, n)
	}
	return ns, nil
}

func run(ctx context.Context, log *slog.Logger, o runOptions) error {
	buildTime, concurrency, probeInterval, roundTimeout := o.buildTime, o.concurrency, o.probeInterval, o.roundTimeout
	out, nixRuns, nixWork, workDir := o.out, o.nixRuns, o.nixWork, o.workDir
	ns, err := fleetSizes("-n", o.sizes)
	if err != nil {
		return err
	}
	idleNs, err := fleetSizes("-idle-sizes", o.idleSizes)
	if err != nil {
		return err
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		return err
	}
	if _, err := testenv.Assets(root); err != nil {
		return err
	}
	if workDir == "" {
		workDir, err = os.MkdirTemp("", "nio-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(workDir)
	}
	bin := filepath.Join(workDir, "bin")
	log.Info("building binaries", "dir", bin)
	if err := buildBinaries(root, bin); err != nil {
		return err
	}
	if !filepath.IsAbs(out) {
		out = filepath.Join(root, out)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	res := Results{StartedAt: time.Now().UTC(), Machine: describeMachine()}
	save := func() error {
		res.Targets = targets(res)
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(out, append(data, '\n'), 0o644)
	}

	var firstErr error
	for _, n := range ns {
		log.Info("fleet benchmark", "machines", n, "build_time", buildTime, "concurrency", concurrency)
		r, err := runFleet(ctx, fleetOptions{
			machines: n, buildTime: buildTime, concurrency: concurrency, probeInterval: probeInterval,
			idle: idleFor(n, idleNs, o.idle), fleetRounds: o.fleetRounds,
			roundTimeout: roundTimeout, dir: filepath.Join(workDir, fmt.Sprintf("fleet-%d", n)), bin: bin, log: log.With("machines", n),
			profileDir: o.profileDir, profileSeconds: o.profileSeconds,
		})
		if err != nil {
			r.Error = err.Error()
			log.Error("fleet benchmark failed", "machines", n, "err", err)
			if firstErr == nil {
				firstErr = err
			}
		}
		res.Fleet = append(res.Fleet, r)
		if err := save(); err != nil {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	png := pngPath(out)
	if err := plotConverge(res.Fleet, png, subtitle(res)); err != nil {
		log.Warn("no plot", "err", err)
	}

	if nixRuns > 0 {
		log.Info("NIO vs direct benchmark", "runs", nixRuns, "work_mib", nixWork)
		nr, err := runNix(ctx, nixOptions{runs: nixRuns, workMiB: nixWork, dir: filepath.Join(workDir, "nix"), bin: bin, log: log.With("bench", "nix")})
		if err != nil {
			nr.Error = err.Error()
			log.Error("NIO vs direct benchmark failed", "err", err)
			if firstErr == nil {
				firstErr = err
			}
		}
		res.Nix = &nr
	}
	if err := save(); err != nil {
		return err
	}
	printReport(os.Stdout, res, out, png)
	return firstErr
}

// idleFor is the idle round's length at size n: -idle if n is one of -idle-sizes.
func idleFor(n int, sizes []int, idle time.Duration) time.Duration {
	if slices.Contains(sizes, n) {
		return idle
	}
	return 0
}

func pngPath(out string) string { return strings.TrimSuffix(out, filepath.Ext(out)) + ".png" }

func subtitle(res Results) string {
	if len(res.Fleet) == 0 {
		return ""
	}
	f := res.Fleet[0]
	return fmt.Sprintf("%d CPUs, simulated build %gs, --concurrency %d", res.Machine.CPUs, f.BuildTimeSeconds, f.Concurrency)
}

// redraw re-renders the plot and the report of an earlier results file.
func redraw(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(data, &res); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := plotConverge(res.Fleet, pngPath(path), subtitle(res)); err != nil {
		return err
	}
	printReport(os.Stdout, res, path, pngPath(path))
	return nil
}

func describeMachine() machineInfo {
	m := machineInfo{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(data), "\n", 2)[0], "MemTotal:"), "%d", &kb)
		m.MemoryGiB = (kb + 512*1024) / (1024 * 1024)
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	return m
}

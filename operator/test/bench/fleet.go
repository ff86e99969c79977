package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/facterfixture"
)

const fleetNamespace = "fleet"

// facterReport is a real nixos-facter report (a KVM VPS), served by every simulated
// agent.
var facterReport = facterfixture.Report

type fleetOptions struct {
	machines      int
	buildTime     time.Duration
	concurrency   int
	probeInterval time.Duration
	// idle is the idle round's length (0: none); fleetRounds runs the NixosFleet
	// rounds.
	idle         time.Duration
	fleetRounds  bool
	roundTimeout time.Duration
	dir, bin     string
	log          *slog.Logger
	// profileDir, when set, receives CPU profiles of the operator and
	// kube-apiserver over the first profileSeconds of every timed round.
	profileDir     string
	profileSeconds int
}

func (o fleetOptions) profiler(st *stack, sim *fleetSim) *profiler {
	return &profiler{dir: o.profileDir, seconds: o.profileSeconds, st: st, simURL: "http://" + sim.ready.Stats}
}

// Spread is a distribution of per-machine durations, in seconds.
type Spread struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	Max float64 `json:"max"`
}

// Round is one measured step of the fleet benchmark.
type Round struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	// Converge is, per machine, the time from the trigger (T0) until the watch saw
	// the round's end state; Total is the last machine's.
	Converge     Spread  `json:"convergeSeconds"`
	TotalSeconds float64 `json:"totalSeconds"`
	// ActionSeconds is how long the trigger itself took (creating or annotating N
	// objects, or POSTing the webhook); the convergence times include it.
	ActionSeconds float64 `json:"actionSeconds"`
	// PushToFirstApplySeconds is T0 → the first Apply header at any agent (-1: none).
	PushToFirstApplySeconds float64 `json:"pushToFirstApplySeconds"`
	// ApplyHeaders is how many Apply streams the agents received in the round.
	ApplyHeaders int `json:"applyHeaders"`
	// Git requests the operator made to the server in the round.
	Git gitCounts `json:"git"`
	// SourceBytes is what the agents received in source chunks.
	SourceBytes int64 `json:"sourceBytes"`
	// APIRequests is the operator's rest_client_requests_total delta;
	// APIRequestsPerApply divides it by the machines.
	APIRequests         float64 `json:"apiRequests"`
	APIRequestsPerApply float64 `json:"apiRequestsPerApply"`
	// TLSHandshakes are the operator's handshakes with agents in the round
	// (nio_agent_tls_handshakes_total).
	TLSHandshakes float64 `json:"tlsHandshakes"`
	// OperatorPeakRSSMiB is the operator's highest RSS seen in the round (sampled
	// every 250 ms).
	OperatorPeakRSSMiB float64 `json:"operatorPeakRSSMiB,omitempty"`
	// OperatorCPUSeconds is the operator's utime+stime in the round.
	OperatorCPUSeconds float64 `json:"operatorCPUSeconds"`
	// CPUSeconds is the CPU time of every child process in the round, by command
	// (kube-apiserver, etcd, nio-operator, nio-fleet-sim): where the cores went.
	CPUSeconds map[string]float64 `json:"cpuSeconds"`
	// WallSeconds is T0 → the end of the round, for comparing with CPUSeconds.
	WallSeconds float64 `json:"wallSeconds"`
	// Fleet is a fleet round's batches and floor (rollout.go).
	Fleet *FleetRollout `json:"fleet,omitempty"`

	// doneAt is, per object, its convergence time (seconds since T0).
	doneAt map[string]float64
}

// fleetTree is the repository's content at version v: a small flake-like tree (the
// simulated executor hashes it and never evaluates it). Only version.nix changes.
func fleetTree(v int) map[string]string {
	files := map[string]string{
		"flake.nix":     "{\n  description = \"nio fleet benchmark\";\n  outputs = { self }: { nixosConfigurations.sim = import ./hosts/sim.nix; };\n}\n",
		"hosts/sim.nix": "{ imports = [ ../version.nix ] ++ map (i: ../modules + \"/m${toString i}.nix\") (builtins.genList (i: i) 20); }\n",
		"version.nix":   fmt.Sprintf("{ system.nixos.label = \"bench-%d\"; }\n", v),
	}
	for i := range 20 {
		var b strings.Builder
		fmt.Fprintf(&b, "# module %d of the fleet benchmark's stand-in configuration\n{ config, ... }: {\n", i)
		for j := range 16 {
			fmt.Fprintf(&b, "  environment.etc.\"bench/m%d-%d\".text = \"module %d setting %d of a typical host\";\n", i, j, i, j)
		}
		b.WriteString("}\n")
		files[fmt.Sprintf("modules/m%d.nix", i)] = b.String()
	}
	return files
}

type fleetSim struct {
	p     *process
	ready struct {
		Stats    string            `json:"stats"`
		Machines map[string]string `json:"machines"`
	}
}

type machineStats struct {
	ApplyHeaders []int64 `json:"applyHeaders"`
	SourceBytes  int64   `json:"sourceBytes"`
	Results      int     `json:"results"`
	Confirms     int     `json:"confirms"`
}

func (f *fleetSim) stats(ctx context.Context) (map[string]machineStats, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+f.ready.Stats+"/stats", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fleet stats: %w", err)
	}
	defer resp.Body.Close()
	var s struct {
		Machines map[string]machineStats `json:"machines"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("fleet stats: %w", err)
	}
	return s.Machines, nil
}

// simStateDir makes the directory of the simulated hosts' state (each agent's
// journal, certificates' renewals, unpacked sources) on /dev/shm when that is a
// tmpfs, else under dir. Each real host writes and fsyncs its journal on its own disk;
// N simulated hosts fsyncing on the benchmark machine's one disk would charge the
// shared cores for a cost no operator sees.
func simStateDir(dir string) (string, error) {
	var fs syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &fs); err == nil && fs.Type == tmpfsMagic {
		return os.MkdirTemp("/dev/shm", "nio-bench-agents-")
	}
	d := filepath.Join(dir, "agents")
	return d, os.MkdirAll(d, 0o700)
}

// tmpfsMagic is TMPFS_MAGIC, statfs(2)'s f_type of a tmpfs.
const tmpfsMagic = 0x01021994

func machineName(i int) string { return fmt.Sprintf("sim-%04d", i) }

// runFleet runs the fleet benchmark at one size: setup and first apply, a push of a
// changed commit through the webhook, a webhook without a new commit, a forced
// re-apply of the unchanged source, and then the same Machines in one NixosFleet: its
// first rollout and the rollout of a pushed commit, in batches (rollout.go).
func runFleet(ctx context.Context, o fleetOptions) (res FleetResult, err error) {
	res = FleetResult{Machines: o.machines, BuildTimeSeconds: o.buildTime.Seconds(), Concurrency: o.concurrency, ProbeInterval: o.probeInterval.String()}
	if o.probeInterval == 0 {
		res.ProbeInterval = "1m0s (the default)"
	}
	setupStart := time.Now()
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return res, err
	}
	git, err := startGitServer(filepath.Join(o.dir, "git"))
	if err != nil {
		return res, err
	}
	defer git.close()
	repo, err := git.newRepo("fleet")
	if err != nil {
		return res, err
	}
	commit1, err := repo.commit(fleetTree(1), "version 1")
	if err != nil {
		return res, err
	}

	st, err := startStack(ctx, stackOptions{dir: o.dir, bin: o.bin, concurrency: o.concurrency, probeInterval: o.probeInterval})
	if err != nil {
		return res, err
	}
	defer st.stop()
	if err := ensureNamespace(ctx, st.c, fleetNamespace); err != nil {
		return res, err
	}
	sshd, err := startSSHEndpoint()
	if err != nil {
		return res, err
	}
	defer sshd.close()
	if err := st.c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: fleetNamespace, Name: sshKeySecret},
		Data: map[string][]byte{"ssh-privatekey": sshd.privateKeyPEM}}); err != nil {
		return res, fmt.Errorf("create SSH key Secret: %w", err)
	}

	// Each simulated Machine gets its own server certificate from the operator's CA.
	type entry struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
		TLSDir    string `json:"tlsDir"`
	}
	var manifest struct {
		Machines []entry `json:"machines"`
	}
	for i := range o.machines {
		dir := filepath.Join(o.dir, "tls", machineName(i))
		if err := st.writeIdentity(dir, fleetNamespace, machineName(i)); err != nil {
			return res, err
		}
		manifest.Machines = append(manifest.Machines, entry{fleetNamespace, machineName(i), dir})
	}
	data, _ := json.Marshal(manifest)
	manifestPath := filepath.Join(o.dir, "manifest.json")
	if err := os.WriteFile(manifestPath, data, 0o600); err != nil {
		return res, err
	}
	// Every agent's Facts returns a real nixos-facter report (60 KB), so the facts
	// ConfigMaps weigh what they would with real hosts.
	facterPath := filepath.Join(o.dir, "facter-report.json")
	if err := os.WriteFile(facterPath, facterReport, 0o644); err != nil {
		return res, err
	}
	res.FacterReportBytes = len(facterReport)
	readyPath := filepath.Join(o.dir, "ready.json")
	agentsDir, err := simStateDir(o.dir)
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(agentsDir)
	sim := &fleetSim{}
	sim.p, err = startProcess("nio-fleet-sim", filepath.Join(o.dir, "fleet-sim.log"), os.Environ(),
		filepath.Join(o.bin, "nio-fleet-sim"), "-manifest", manifestPath, "-ready", readyPath,
		"-state-dir", agentsDir, "-build-time", o.buildTime.String(), "-facter-report", facterPath)
	if err != nil {
		return res, err
	}
	defer sim.p.stop(10 * time.Second)
	if err := waitFile(ctx, readyPath, sim.p); err != nil {
		return res, err
	}
	data, err = os.ReadFile(readyPath)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(data, &sim.ready); err != nil {
		return res, fmt.Errorf("ready file: %w", err)
	}

	// Round "initial": create the Machines and configurations; every Machine must
	// run commit 1.
	appliedIs := func(commit string) func(client.Object) bool {
		return func(obj client.Object) bool { return obj.(*nio.Machine).Status.AppliedCommit == commit }
	}
	o.log.Info("creating objects", "machines", o.machines)
	r, err := measure(ctx, st, git, sim, o, "initial",
		"create N Machines and N NixosConfigurations; until every Machine's appliedCommit is commit 1 (includes first contact, facts, source upload)",
		&nio.MachineList{}, appliedIs(commit1), func() error { return createFleet(ctx, st.c, o.machines, sim, sshd, repo.url) })
	res.Rounds = append(res.Rounds, r)
	if err != nil {
		return res, err
	}
	res.SetupSeconds = time.Since(setupStart).Seconds()

	// Round "push": a changed commit, announced by the webhook.
	commit2, err := repo.commit(fleetTree(2), "version 2")
	if err != nil {
		return res, err
	}
	o.log.Info("pushed", "commit", commit2)
	r, err = measure(ctx, st, git, sim, o, "push",
		"commit 2 pushed (changes version.nix), signed generic webhook POSTed at T0; until every Machine's appliedCommit is commit 2",
		&nio.MachineList{}, appliedIs(commit2), func() error { return st.push(ctx, repo.url, commit2) })
	res.Rounds = append(res.Rounds, r)
	if err != nil {
		return res, err
	}

	// Round "webhook-unchanged": the webhook fires without a new commit: one
	// ls-remote, nothing fetched, nothing applied.
	r, err = measureQuiet(ctx, st, git, sim, o, repo.url, commit2)
	res.Rounds = append(res.Rounds, r)
	if err != nil {
		return res, err
	}

	// Round "reapply-unchanged": every configuration is forced with requestedAt;
	// the source digest is unchanged, so the agents are sent 0 source bytes.
	stamp := time.Now().UTC().Format(time.RFC3339Nano)
	before := map[string]string{}
	var cl nio.NixosConfigurationList
	if err := st.c.List(ctx, &cl, client.InNamespace(fleetNamespace)); err != nil {
		return res, err
	}
	for _, c := range cl.Items {
		if len(c.Status.History) > 0 {
			before[c.Name] = c.Status.History[0].StartTime.UTC().String() + c.Status.History[0].Commit
		}
	}
	reapplied := func(obj client.Object) bool {
		c := obj.(*nio.NixosConfiguration)
		h := c.Status.History
		return c.Status.LastHandledRequestedAt == stamp && len(h) > 0 && h[0].Result == nio.ResultSucceeded &&
			h[0].StartTime.UTC().String()+h[0].Commit != before[c.Name] && c.Status.CurrentOperation == nil
	}
	r, err = measure(ctx, st, git, sim, o, "reapply-unchanged",
		"every NixosConfiguration annotated with a new requestedAt at T0 (source digest unchanged); until each records a new succeeded apply",
		&nio.NixosConfigurationList{}, reapplied, func() error { return annotateAll(ctx, st.c, o.machines, stamp) })
	res.Rounds = append(res.Rounds, r)
	if err != nil {
		return res, err
	}
	// Round "idle": nothing to do for a while, at the operator's defaults (probes
	// every minute, every configuration polled every 5 minutes).
	if o.idle > 0 {
		if res.Idle, err = measureIdle(ctx, st, git, sim, sshd, o); err != nil {
			return res, err
		}
	}
	// Rounds "fleet-adopt" and "fleet-rollout": the same Machines in one NixosFleet.
	if o.fleetRounds {
		if err := runFleetRounds(ctx, st, git, sim, o, repo, commit2, &res); err != nil {
			return res, err
		}
	}
	res.Operator = st.usage()
	if u, err := readProc(sim.p.pid()); err == nil {
		res.FleetSimPeakRSS = u.PeakRSSMiB
	}
	return res, nil
}

// sshKeySecret is the Secret every simulated Machine names as its SSH key.
const sshKeySecret = "sim-ssh-key"

// createFleet creates the Machines (agent, and an SSH way to the counting endpoint
// with its host key pinned) and one NixosConfiguration each, like the usage guide's
// (the nixos-facter report as an additional file, the default interval), with a few
// writers at once.
func createFleet(ctx context.Context, c client.Client, n int, sim *fleetSim, sshd *sshEndpoint, repoURL string) error {
	enabled, facter := true, true
	return parallel(n, 16, func(i int) error {
		name := machineName(i)
		host, port, err := net.SplitHostPort(sim.ready.Machines[fleetNamespace+"/"+name])
		if err != nil {
			return fmt.Errorf("address of %s: %w", name, err)
		}
		p, _ := strconv.Atoi(port)
		m := &nio.Machine{
			// The label is what the fleet rounds' NixosFleet selects.
			ObjectMeta: metav1.ObjectMeta{Namespace: fleetNamespace, Name: name, Labels: map[string]string{fleetSelectorLabel: "true"}},
			Spec: nio.MachineSpec{Hostname: name, IPAddress: host, Agent: nio.AgentSpec{Port: int32(p)},
				SSHPort: int32(sshd.port()), SSHKeySecretRef: &nio.SSHKeySecretReference{Name: sshKeySecret}, SSHHostKey: sshd.hostKey},
		}
		if err := c.Create(ctx, m); err != nil {
			return fmt.Errorf("create Machine %s: %w", name, err)
		}
		nc := &nio.NixosConfiguration{
			ObjectMeta: metav1.ObjectMeta{Namespace: fleetNamespace, Name: name},
			Spec: nio.NixosConfigurationSpec{
				Flake:      ".#sim",
				MachineRef: nio.LocalObjectReference{Name: name},
				ConfigurationTemplate: nio.ConfigurationTemplate{
					GitRepo: repoURL, Ref: "main",
					Rollback: nio.RollbackSpec{Enabled: &enabled, ConfirmTimeout: metav1.Duration{Duration: time.Minute}},
					AdditionalFiles: []nio.AdditionalFile{
						{Path: "facts/facter.json", Value: nio.AdditionalFileValue{NixosFacter: &facter}},
					},
				},
			},
		}
		if err := c.Create(ctx, nc); err != nil {
			return fmt.Errorf("create NixosConfiguration %s: %w", name, err)
		}
		return nil
	})
}

func annotateAll(ctx context.Context, c client.Client, n int, stamp string) error {
	body := []byte(`{"metadata":{"annotations":{"` + nio.RequestedAtAnnotation + `":"` + stamp + `"}}}`)
	return parallel(n, 16, func(i int) error {
		obj := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Namespace: fleetNamespace, Name: machineName(i)}}
		return c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, body))
	})
}

// parallel runs f(0..n-1) with at most workers at once and returns the first error.
func parallel(n, workers int, f func(i int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

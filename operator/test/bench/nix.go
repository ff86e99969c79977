package main

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/testkit/gittest"
)

//go:embed testdata/cpuflake
var cpuFlake embed.FS

const nixNamespace = "nixbench"

type nixOptions struct {
	runs, workMiB int
	dir, bin      string
	log           *slog.Logger
}

// NixResult is the NIO-vs-direct benchmark.
type NixResult struct {
	Runs    int `json:"runs"`
	WorkMiB int `json:"workMiB"`
	// NIOSeconds: commit pushed, webhook POSTed at T0 → the Machine's appliedCommit
	// is the commit (resolve, fetch, render, upload, nix build, nix-env --set,
	// switch-to-configuration, Confirm over a new connection, status writes).
	NIOSeconds []float64 `json:"nioSeconds"`
	// DirectSeconds: the same nix build, nix-env --set and switch-to-configuration
	// run by the benchmark on the tree in a local directory.
	DirectSeconds       []float64 `json:"directSeconds"`
	NIOMedianSeconds    float64   `json:"nioMedianSeconds"`
	DirectMedianSeconds float64   `json:"directMedianSeconds"`
	Ratio               float64   `json:"ratio"`
	// NoBuild*: the same two paths for a commit whose system is already in the store
	// (only a file the system does not read changed), so nix build is a cache hit:
	// what is left is each path's fixed cost, and their difference NIO's overhead.
	NoBuildNIOSeconds          []float64 `json:"noBuildNIOSeconds"`
	NoBuildDirectSeconds       []float64 `json:"noBuildDirectSeconds"`
	NoBuildNIOMedianSeconds    float64   `json:"noBuildNIOMedianSeconds"`
	NoBuildDirectMedianSeconds float64   `json:"noBuildDirectMedianSeconds"`
	Error                      string    `json:"error,omitempty"`
}

// nixEnv is the offline Nix configuration of the benchmark's child processes.
type nixEnv struct {
	config string
}

func newNixEnv(dir string) (*nixEnv, error) {
	for _, bin := range []string{"nix", "nix-env"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found (install Nix with make deps): %w", bin, err)
		}
	}
	registry := filepath.Join(dir, "registry.json")
	if err := os.WriteFile(registry, []byte(`{"flakes":[],"version":2}`+"\n"), 0o644); err != nil {
		return nil, err
	}
	return &nixEnv{config: strings.Join([]string{
		"experimental-features = nix-command flakes", "sandbox = false", "substituters =",
		"build-users-group =", "flake-registry = " + registry, "warn-dirty = false",
	}, "\n")}, nil
}

// environ is os.Environ with the offline settings and the fixture's state directory.
func (e *nixEnv) environ(state string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NIX_CONFIG=") && !strings.HasPrefix(kv, "NIO_FIXTURE_STATE=") {
			env = append(env, kv)
		}
	}
	return append(env, "NIX_CONFIG="+e.config, "NIO_FIXTURE_STATE="+state)
}

func nixSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}

// benchTree is the fixture flake's files at a version.
func benchTree(version string, workMiB int) (map[string]string, error) {
	files := map[string]string{}
	err := fs.WalkDir(cpuFlake, "testdata/cpuflake", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := cpuFlake.ReadFile(p)
		files[strings.TrimPrefix(p, "testdata/cpuflake/")] = string(data)
		return err
	})
	files["version.txt"] = version + "\n"
	files["work.txt"] = strconv.Itoa(workMiB) + "\n"
	files["system.txt"] = nixSystem() + "\n"
	return files, err
}

// runNix runs the NIO-vs-direct benchmark.
func runNix(ctx context.Context, o nixOptions) (res NixResult, err error) {
	res = NixResult{Runs: o.runs, WorkMiB: o.workMiB}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return res, err
	}
	nixe, err := newNixEnv(o.dir)
	if err != nil {
		return res, err
	}
	git, err := startGitServer(filepath.Join(o.dir, "git"))
	if err != nil {
		return res, err
	}
	defer git.close()
	repo, err := git.newRepo("host")
	if err != nil {
		return res, err
	}
	// Every version is new to the Nix store, also across runs of the benchmark: a
	// system built by an earlier run would be a cache hit, not a build.
	nonce := strconv.FormatInt(time.Now().UnixNano(), 36)
	tree, err := benchTree("warmup-"+nonce, o.workMiB)
	if err != nil {
		return res, err
	}
	warm, err := repo.commit(tree, "warm-up")
	if err != nil {
		return res, err
	}
	st, err := startStack(ctx, stackOptions{dir: o.dir, bin: o.bin, concurrency: 10})
	if err != nil {
		return res, err
	}
	defer st.stop()
	if err := ensureNamespace(ctx, st.c, nixNamespace); err != nil {
		return res, err
	}

	// The real nio-agent, with real Nix against a scratch profile.
	agentDir := filepath.Join(o.dir, "agent")
	tlsDir := filepath.Join(agentDir, "tls")
	if err := st.writeIdentity(tlsDir, nixNamespace, "host"); err != nil {
		return res, err
	}
	agentState := filepath.Join(agentDir, "fixture-state")
	if err := os.MkdirAll(agentState, 0o755); err != nil {
		return res, err
	}
	// The agent's Facts runs this stand-in, which prints the report beside it.
	facter := filepath.Join(agentDir, "nixos-facter")
	if err := os.WriteFile(filepath.Join(agentDir, "facter-report.json"), facterReport, 0o644); err != nil {
		return res, err
	}
	if err := os.WriteFile(facter, []byte("#!/bin/sh\nexec cat \"$(dirname \"$0\")/facter-report.json\"\n"), 0o755); err != nil {
		return res, err
	}
	addr, err := freeAddr()
	if err != nil {
		return res, err
	}
	agent, err := startProcess("nio-agent", filepath.Join(o.dir, "agent.log"), nixe.environ(agentState),
		filepath.Join(o.bin, "nio-agent"), "--listen", addr, "--tls-dir", tlsDir, "--state-dir", filepath.Join(agentDir, "state"),
		"--profile", filepath.Join(agentDir, "profiles", "system"), "--current-system-link", filepath.Join(agentState, "current-system"),
		"--booted-system-link", filepath.Join(agentState, "booted-system"), "--systemd-run=false", "--facter-path", facter)
	if err != nil {
		return res, err
	}
	defer agent.stop(30 * time.Second)

	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	enabled := true
	if err := st.c.Create(ctx, &nio.Machine{
		ObjectMeta: metav1.ObjectMeta{Namespace: nixNamespace, Name: "host"},
		Spec:       nio.MachineSpec{Hostname: "host", IPAddress: host, Agent: nio.AgentSpec{Port: int32(p)}},
	}); err != nil {
		return res, err
	}
	applied := func(commit string) func(client.Object) bool {
		return func(obj client.Object) bool { return obj.(*nio.Machine).Status.AppliedCommit == commit }
	}
	wait := func(commit string, action func() error) (time.Duration, error) {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		defer cancel()
		started := make(chan struct{})
		type outcome struct {
			at  map[string]time.Time
			err error
		}
		out := make(chan outcome, 1)
		go func() {
			at, err := waitAll(wctx, st.c, &nio.MachineList{}, nixNamespace, 1, applied(commit), started)
			out <- outcome{at, err}
		}()
		select {
		case <-started:
		case r := <-out:
			return 0, r.err
		}
		t0 := time.Now()
		if err := action(); err != nil {
			cancel()
			<-out
			return 0, err
		}
		r := <-out
		if r.err != nil {
			return 0, fmt.Errorf("waiting for appliedCommit %s: %w (see %s)", commit[:12], r.err, filepath.Join(o.dir, "operator.log"))
		}
		return r.at["host"].Sub(t0), nil
	}
	o.log.Info("warm-up apply through NIO")
	if _, err := wait(warm, func() error {
		return st.c.Create(ctx, &nio.NixosConfiguration{
			ObjectMeta: metav1.ObjectMeta{Namespace: nixNamespace, Name: "host"},
			Spec: nio.NixosConfigurationSpec{
				Flake: ".#bench", MachineRef: nio.LocalObjectReference{Name: "host"},
				ConfigurationTemplate: nio.ConfigurationTemplate{
					GitRepo: repo.url, Ref: "main",
					Interval: metav1.Duration{Duration: time.Hour},
					Rollback: nio.RollbackSpec{Enabled: &enabled, ConfirmTimeout: metav1.Duration{Duration: time.Minute}},
				},
			},
		})
	}); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}

	directState := filepath.Join(o.dir, "direct-state")
	if err := os.MkdirAll(directState, 0o755); err != nil {
		return res, err
	}
	// version names the system; note, when set, is a file the system does not read.
	var nioVersion, directVersion, note string
	nioRun := func(i int) error {
		if note == "" {
			nioVersion = fmt.Sprintf("nio-%d-%s", i, nonce)
		}
		tree, err := benchTree(nioVersion, o.workMiB)
		if err != nil {
			return err
		}
		if note != "" {
			tree["notes.txt"] = note
		}
		commit, err := repo.commit(tree, fmt.Sprintf("nio %d", i))
		if err != nil {
			return err
		}
		d, err := wait(commit, func() error { return st.push(ctx, repo.url, commit) })
		if err != nil {
			return err
		}
		if note == "" {
			res.NIOSeconds = append(res.NIOSeconds, d.Seconds())
		} else {
			res.NoBuildNIOSeconds = append(res.NoBuildNIOSeconds, d.Seconds())
		}
		o.log.Info("through NIO", "run", i, "seconds", d.Seconds(), "no_build", note != "")
		return nil
	}
	directRun := func(i int) error {
		dir := filepath.Join(o.dir, fmt.Sprintf("direct-%d", i))
		if note == "" {
			directVersion = fmt.Sprintf("direct-%d-%s", i, nonce)
		} else {
			dir += "-no-build"
		}
		tree, err := benchTree(directVersion, o.workMiB)
		if err != nil {
			return err
		}
		if note != "" {
			tree["notes.txt"] = note
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := gittest.WriteFiles(dir, tree); err != nil {
			return err
		}
		env := nixe.environ(directState)
		t0 := time.Now()
		link := filepath.Join(dir, "result")
		if err := runCmd(ctx, env, "nix", "build", "--out-link", link, "path:"+dir+"#nixosConfigurations.bench.config.system.build.toplevel"); err != nil {
			return err
		}
		out, err := os.Readlink(link)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(o.dir, "direct-profiles"), 0o755); err != nil {
			return err
		}
		if err := runCmd(ctx, env, "nix-env", "-p", filepath.Join(o.dir, "direct-profiles", "system"), "--set", out); err != nil {
			return err
		}
		if err := runCmd(ctx, env, filepath.Join(out, "bin", "switch-to-configuration"), "switch"); err != nil {
			return err
		}
		d := time.Since(t0)
		if note == "" {
			res.DirectSeconds = append(res.DirectSeconds, d.Seconds())
		} else {
			res.NoBuildDirectSeconds = append(res.NoBuildDirectSeconds, d.Seconds())
		}
		o.log.Info("direct", "run", i, "seconds", d.Seconds(), "no_build", note != "")
		return nil
	}
	for i := 1; i <= o.runs; i++ {
		// Alternate which side goes first, so neither always runs on a warmer machine.
		first, second := nioRun, directRun
		if i%2 == 0 {
			first, second = directRun, nioRun
		}
		if err := first(i); err != nil {
			return res, err
		}
		if err := second(i); err != nil {
			return res, err
		}
	}
	for i := 1; i <= o.runs; i++ {
		note = fmt.Sprintf("no-build run %d\n", i)
		first, second := nioRun, directRun
		if i%2 == 0 {
			first, second = directRun, nioRun
		}
		if err := first(i); err != nil {
			return res, err
		}
		if err := second(i); err != nil {
			return res, err
		}
	}
	res.NoBuildNIOMedianSeconds, res.NoBuildDirectMedianSeconds = median(res.NoBuildNIOSeconds), median(res.NoBuildDirectSeconds)
	res.NIOMedianSeconds, res.DirectMedianSeconds = median(res.NIOSeconds), median(res.DirectSeconds)
	if res.DirectMedianSeconds > 0 {
		res.Ratio = res.NIOMedianSeconds / res.DirectMedianSeconds
	}
	return res, nil
}

func runCmd(ctx context.Context, env []string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Command nio-fleet-sim is a benchmark tool, not a daemon for hosts: it serves many
// simulated NIO agents in one process, each a real agent gRPC server with real mTLS
// (its own Machine server certificate, the operator CA's client check) on its own
// loopback port, whose executor is the simulated one of agent/internal/simexec (a
// build is a configurable wait; no Nix runs, nothing on the host changes).
//
// It exists so `make bench` can drive the real operator against a fleet of 1000
// hosts on one machine. nio-agent never links the simulated executor.
//
//	nio-fleet-sim -manifest machines.json -ready ready.json -state-dir DIR -build-time 2s
//
// The manifest lists {namespace, name, tlsDir} per Machine; once every agent listens,
// the ready file gets each Machine's address and the stats endpoint (GET /stats:
// per-machine Apply header arrival times, source bytes received, results, confirms).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/homystack/nio/agent/internal/simexec"
)

type options struct {
	manifest, ready, stateDir, listenHost, statsAddr, logLevel string
	facterReport                                               string
	buildTime, activateTime                                    time.Duration
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("nio-fleet-sim", flag.ContinueOnError)
	fs.StringVar(&o.manifest, "manifest", "", "JSON file listing the Machines to simulate (required)")
	fs.StringVar(&o.ready, "ready", "", "file to write the agents' addresses and the stats address to once all listen (required)")
	fs.StringVar(&o.stateDir, "state-dir", "", "directory for the agents' state (source caches, work dirs); required")
	fs.StringVar(&o.listenHost, "listen-host", "127.0.0.1", "loopback address every agent listens on (each on its own port)")
	fs.StringVar(&o.statsAddr, "stats-address", "127.0.0.1:0", "address of the HTTP stats endpoint")
	fs.DurationVar(&o.buildTime, "build-time", 2*time.Second, "how long a simulated build takes")
	fs.DurationVar(&o.activateTime, "activate-time", 0, "how long a simulated activation takes")
	fs.StringVar(&o.facterReport, "facter-report", "", "nixos-facter JSON report every agent's Facts returns (default: a minimal one)")
	fs.StringVar(&o.logLevel, "log-level", "warn", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if o.manifest == "" || o.ready == "" || o.stateDir == "" {
		return nil, errors.New("-manifest, -ready and -state-dir are required")
	}
	if ip := net.ParseIP(o.listenHost); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("-listen-host %q must be a loopback address: simulated agents are never served beyond this host", o.listenHost)
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "nio-fleet-sim:", err)
		os.Exit(2)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "nio-fleet-sim: -log-level:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, o, log, nil); err != nil {
		log.Error("nio-fleet-sim stopped", "err", err)
		os.Exit(1)
	}
}

// run serves the fleet until ctx ends; ready, when set, is called once the ready
// file is written.
func run(ctx context.Context, o *options, log *slog.Logger, ready func()) error {
	m, err := readManifest(o.manifest)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	facter, err := writeFacter(o.stateDir, o.facterReport)
	if err != nil {
		return err
	}
	f, addrs, err := start(m, agentOptions{
		stateDir: o.stateDir, facterPath: facter, listenHost: o.listenHost,
		sim: simexec.Options{BuildTime: o.buildTime, ActivateTime: o.activateTime},
	}, log)
	if err != nil {
		return err
	}
	defer f.stop()

	lis, err := net.Listen("tcp", o.statsAddr)
	if err != nil {
		return fmt.Errorf("stats listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(f.snapshot())
	})
	// Go's profiles, for the benchmark's -profile-dir: where the simulated hosts'
	// CPU goes.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	defer hs.Close()

	if err := writeReady(o.ready, Ready{Stats: lis.Addr().String(), Machines: addrs}); err != nil {
		return err
	}
	if ready != nil {
		ready()
	}
	log.Warn("nio-fleet-sim serving", "machines", len(addrs), "stats", lis.Addr().String(), "build_time", o.buildTime)
	<-ctx.Done()
	return nil
}

// writeReady writes the ready file atomically, so a reader never sees half of it.
func writeReady(path string, r Ready) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ready-*")
	if err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write ready file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/homystack/nio/agent/internal/certs"
	"github.com/homystack/nio/agent/internal/server"
	"github.com/homystack/nio/agent/internal/simexec"
	agentv1 "github.com/homystack/nio/api/gen/nio/agent/v1"
)

// Manifest lists the Machines the simulator serves; the benchmark writes it.
type Manifest struct {
	Machines []ManifestMachine `json:"machines"`
}

// ManifestMachine is one simulated host: the Machine it answers for and the TLS
// directory (ca.crt, tls.crt, tls.key) issued for it by the operator's CA.
type ManifestMachine struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	TLSDir    string `json:"tlsDir"`
}

// Ready is what the simulator writes once every agent listens.
type Ready struct {
	// Stats is host:port of the HTTP endpoint serving GET /stats.
	Stats string `json:"stats"`
	// Machines maps "<namespace>/<name>" to the agent's host:port.
	Machines map[string]string `json:"machines"`
}

// MachineStats counts what one agent saw.
type MachineStats struct {
	// ApplyHeaders are the arrival times (Unix nanoseconds) of Apply headers that
	// started or attached to an operation.
	ApplyHeaders []int64 `json:"applyHeaders"`
	// SourceBytes is the total of source chunk bytes received.
	SourceBytes int64 `json:"sourceBytes"`
	// Results counts Apply results sent; Confirms, Statuses and Facts the unary calls.
	Results  int `json:"results"`
	Confirms int `json:"confirms"`
	Statuses int `json:"statuses"`
	Facts    int `json:"facts"`
	// Builds and Activations are the simulated executor's completed steps.
	Builds      int `json:"builds"`
	Activations int `json:"activations"`
}

// Stats is GET /stats: every machine's counters.
type Stats struct {
	Machines map[string]*MachineStats `json:"machines"`
}

// fleet is every simulated agent of one process.
type fleet struct {
	log *slog.Logger

	mu    sync.Mutex
	stats map[string]*MachineStats
	exec  map[string]*simexec.Executor

	servers []*grpc.Server
	srvs    []*server.Server
}

// agentOptions are the simulation settings shared by every agent.
type agentOptions struct {
	stateDir   string
	facterPath string
	sim        simexec.Options
	listenHost string
}

// start makes one real agent server per manifest entry, each with its own
// certificate store, state directory, simulated executor and loopback listener.
func start(m Manifest, o agentOptions, log *slog.Logger) (*fleet, map[string]string, error) {
	f := &fleet{log: log, stats: map[string]*MachineStats{}, exec: map[string]*simexec.Executor{}}
	addrs := map[string]string{}
	for _, mm := range m.Machines {
		key := mm.Namespace + "/" + mm.Name
		if _, dup := f.stats[key]; dup {
			f.stop()
			return nil, nil, fmt.Errorf("machine %s listed twice", key)
		}
		addr, err := f.add(key, mm, o)
		if err != nil {
			f.stop()
			return nil, nil, fmt.Errorf("machine %s: %w", key, err)
		}
		addrs[key] = addr
	}
	return f, addrs, nil
}

func (f *fleet) add(key string, mm ManifestMachine, o agentOptions) (string, error) {
	store, err := certs.Load(mm.TLSDir)
	if err != nil {
		return "", err
	}
	x := simexec.New(o.sim)
	srv, err := server.New(server.Config{
		Executor:       x,
		Certs:          store,
		StateDir:       filepath.Join(o.stateDir, mm.Namespace, mm.Name),
		MaxSourceBytes: 64 << 20,
		FacterPath:     o.facterPath,
		Version:        "fleet-sim",
		Logger:         f.log.With("machine", key),
	})
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	f.stats[key] = &MachineStats{}
	f.exec[key] = x
	f.mu.Unlock()
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(store.ServerConfig())),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainStreamInterceptor(f.countStream(key)),
		grpc.ChainUnaryInterceptor(f.countUnary(key)),
	)
	srv.Register(g)
	lis, err := net.Listen("tcp", net.JoinHostPort(o.listenHost, "0"))
	if err != nil {
		return "", fmt.Errorf("listen: %w", err)
	}
	f.servers = append(f.servers, g)
	f.srvs = append(f.srvs, srv)
	go func() {
		if err := g.Serve(lis); err != nil {
			f.log.Error("serve", "machine", key, "err", err)
		}
	}()
	return lis.Addr().String(), nil
}

// stop ends every server at once: simulated hosts have nothing to drain.
func (f *fleet) stop() {
	for _, g := range f.servers {
		g.Stop()
	}
}

func (f *fleet) update(key string, fn func(*MachineStats)) {
	f.mu.Lock()
	fn(f.stats[key])
	f.mu.Unlock()
}

func (f *fleet) countUnary(key string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		f.update(key, func(s *MachineStats) {
			switch info.FullMethod {
			case agentv1.AgentService_Confirm_FullMethodName:
				s.Confirms++
			case agentv1.AgentService_Status_FullMethodName:
				s.Statuses++
			case agentv1.AgentService_Facts_FullMethodName:
				s.Facts++
			}
		})
		return handler(ctx, req)
	}
}

func (f *fleet) countStream(key string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != agentv1.AgentService_Apply_FullMethodName {
			return handler(srv, ss)
		}
		return handler(srv, &countingStream{ServerStream: ss, f: f, key: key})
	}
}

// countingStream records Apply headers, source bytes and results as they pass.
type countingStream struct {
	grpc.ServerStream
	f   *fleet
	key string
}

func (c *countingStream) RecvMsg(m any) error {
	err := c.ServerStream.RecvMsg(m)
	if err != nil {
		return err
	}
	if req, ok := m.(*agentv1.ApplyRequest); ok {
		now := time.Now().UnixNano()
		c.f.update(c.key, func(s *MachineStats) {
			switch {
			case req.GetHeader() != nil:
				s.ApplyHeaders = append(s.ApplyHeaders, now)
			case req.GetChunk() != nil:
				s.SourceBytes += int64(len(req.GetChunk().GetData()))
			}
		})
	}
	return nil
}

func (c *countingStream) SendMsg(m any) error {
	if resp, ok := m.(*agentv1.ApplyResponse); ok && resp.GetResult() != nil {
		c.f.update(c.key, func(s *MachineStats) { s.Results++ })
	}
	return c.ServerStream.SendMsg(m)
}

// snapshot copies the counters.
func (f *fleet) snapshot() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := Stats{Machines: make(map[string]*MachineStats, len(f.stats))}
	for k, s := range f.stats {
		c := *s
		c.ApplyHeaders = append([]int64(nil), s.ApplyHeaders...)
		c.Builds, c.Activations = f.exec[k].Counts()
		out.Machines[k] = &c
	}
	return out
}

// facterScript is the nixos-facter stand-in: it prints the report file beside it.
const facterScript = "#!/bin/sh\nexec cat \"$(dirname \"$0\")/facter-report.json\"\n"

// minimalReport is the report served when no -facter-report is given.
const minimalReport = `{"version":1,"system":"x86_64-linux","virtualisation":"kvm","hardware":{}}`

// writeFacter writes a nixos-facter stand-in into dir that prints report (a real
// nixos-facter JSON report, or a minimal one when report is empty), so the
// operator's first-contact fact collection works as with real hosts.
func writeFacter(dir, report string) (string, error) {
	data := []byte(minimalReport)
	if report != "" {
		var err error
		if data, err = os.ReadFile(report); err != nil {
			return "", fmt.Errorf("facter report: %w", err)
		}
		if !json.Valid(data) {
			return "", fmt.Errorf("facter report %s is not JSON", report)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "facter-report.json"), data, 0o644); err != nil {
		return "", fmt.Errorf("write facter report: %w", err)
	}
	p := filepath.Join(dir, "nixos-facter-sim")
	if err := os.WriteFile(p, []byte(facterScript), 0o755); err != nil {
		return "", fmt.Errorf("write facter stand-in: %w", err)
	}
	return p, nil
}

func readManifest(path string) (Manifest, error) {
	var m Manifest
	data, err := os.ReadFile(path)
	if err != nil {
		return m, fmt.Errorf("read manifest: %w", err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("parse manifest %s: %w", path, err)
	}
	if len(m.Machines) == 0 {
		return m, fmt.Errorf("manifest %s lists no machines", path)
	}
	return m, nil
}

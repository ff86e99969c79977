// Command nio-agent is the daemon on every NIO-managed NixOS host: an mTLS gRPC
// server (proto/nio/agent/v1) that only the operator can reach, which builds and
// activates NixOS systems, streams their logs, reports nixos-facter facts and rolls
// back an activation the operator does not confirm.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/homystack/nio/agent/internal/certs"
	"github.com/homystack/nio/agent/internal/handshake"
	"github.com/homystack/nio/agent/internal/nixos"
	"github.com/homystack/nio/agent/internal/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

type options struct {
	listen, tlsDir, stateDir, profile, currentLink, bootedLink string
	nixBinDir, facterPath, logFormat, logLevel                 string
	systemdRun                                                 bool
	maxSourceBytes                                             int64
	secretsDir                                                 string
	handshakeLogLimit                                          int
	handshakeLogWindow                                         time.Duration
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("nio-agent", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", ":9443", "address to listen on")
	fs.StringVar(&o.tlsDir, "tls-dir", "/var/lib/nio-agent/tls", "directory with ca.crt (the operator CA), tls.crt and tls.key; renewed files are written back here")
	fs.StringVar(&o.stateDir, "state-dir", "/var/lib/nio-agent", "source archive cache, per-operation work dirs, operation journal, last operation record")
	fs.StringVar(&o.profile, "profile", "/nix/var/nix/profiles/system", "system profile")
	fs.StringVar(&o.currentLink, "current-system-link", "/run/current-system", "link to the running system")
	fs.StringVar(&o.bootedLink, "booted-system-link", "/run/booted-system", "link to the booted system")
	fs.StringVar(&o.nixBinDir, "nix-bin-dir", "", "directory holding nix, nix-env and nix-build (default: found on PATH)")
	fs.BoolVar(&o.systemdRun, "systemd-run", true, "run activation, nixos-facter and command health checks through systemd-run, outside the agent's sandbox and cgroup (activation survives the agent)")
	fs.StringVar(&o.facterPath, "facter-path", "nixos-facter", "nixos-facter binary")
	fs.Int64Var(&o.maxSourceBytes, "max-source-bytes", 1<<30, "cap on a source archive and its unpacked size")
	fs.StringVar(&o.secretsDir, "secrets-dir", "/run/nio-secrets", "tmpfs directory for the secretRef files of a configuration (current/<path>); the operator's nio-secrets.nix names /run/nio-secrets, so change it for tests only")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.IntVar(&o.handshakeLogLimit, "handshake-log-limit", handshake.DefaultLimit, "refused TLS handshakes logged one by one (peer, reason) per --handshake-log-window; the rest of the window is summed up in one line. All are counted in Status.refused_handshakes")
	fs.DurationVar(&o.handshakeLogWindow, "handshake-log-window", handshake.DefaultWindow, "window of --handshake-log-limit")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.maxSourceBytes <= 0 {
		return nil, errors.New("--max-source-bytes must be positive")
	}
	if o.handshakeLogLimit < 0 || o.handshakeLogWindow <= 0 {
		return nil, errors.New("--handshake-log-limit must not be negative, --handshake-log-window must be positive")
	}
	return o, nil
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "nio-agent:", err)
		os.Exit(2)
	}
	log, err := newLogger(o.logFormat, o.logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nio-agent:", err)
		os.Exit(2)
	}
	if err := run(o, log); err != nil {
		log.Error("nio-agent stopped", "err", err)
		os.Exit(1)
	}
}

// serverConfig is the server's configuration from the flags.
func serverConfig(o *options, exe nixos.Executor, store *certs.Store, refused *handshake.Recorder, log *slog.Logger) server.Config {
	cfg := server.Config{
		Executor:       exe,
		Certs:          store,
		StateDir:       o.stateDir,
		MaxSourceBytes: o.maxSourceBytes,
		SecretsDir:     o.secretsDir,
		FacterPath:     o.facterPath,
		// The hardware is what the sandbox hides: facts leave it as activation does.
		FacterSystemdRun: o.systemdRun,
		// A command check must see what the host's services see, not the
		// sandbox's read-only file system without devices or capabilities.
		HealthSystemdRun: o.systemdRun,
		Version:          version,
		Logger:           log,
	}
	if refused != nil {
		cfg.RefusedHandshakes = refused.Counts
	}
	return cfg
}

func run(o *options, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	store, err := certs.WaitLoad(ctx, o.tlsDir, 2*time.Second, func(err error) {
		log.Info("waiting for the TLS identity the operator delivers", "tls_dir", o.tlsDir, "missing", err.Error())
	})
	if errors.Is(err, context.Canceled) {
		log.Info("nio-agent stopped before it had a TLS identity")
		return nil
	}
	if err != nil {
		return err
	}
	// nix-env creates the profile link but not its directory; a scratch profile in
	// tests (or a fresh host) must not fail the first switch.
	if err := os.MkdirAll(filepath.Dir(o.profile), 0o755); err != nil {
		return fmt.Errorf("profile dir: %w", err)
	}
	if o.systemdRun {
		if _, err := exec.LookPath("systemd-run"); err != nil {
			return fmt.Errorf("--systemd-run is set but systemd-run is not on PATH: %w", err)
		}
	}
	exe := nixos.NewHost(nixos.Config{
		NixBinDir:         o.nixBinDir,
		Profile:           o.profile,
		CurrentSystemLink: o.currentLink,
		BootedSystemLink:  o.bootedLink,
		SystemdRun:        o.systemdRun,
	})
	// New recovers an operation the journal shows unfinished (the agent was killed
	// during it) before anything is served, so the operator's re-attach finds it.
	refused := handshake.NewRecorder(log, o.handshakeLogLimit, o.handshakeLogWindow)
	srv, err := server.New(serverConfig(o, exe, store, refused, log))
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.listen, err)
	}
	g := grpc.NewServer(
		// Refused handshakes are counted and logged: grpc-go drops them silently.
		grpc.Creds(refused.Credentials(credentials.NewTLS(store.ServerConfig()))),
		// Builds stream nothing for minutes at times; keep idle connections alive.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	srv.Register(g)

	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	log.Info("nio-agent listening", "addr", lis.Addr().String(), "version", version, "systemd_run", o.systemdRun)

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: no new operations; waiting for the running one")
	// The listener stays open while draining: the operator must still be able to
	// Confirm (or watch) the running operation. Only then do connections close.
	if err := srv.Drain(context.Background()); err != nil {
		log.Warn("drain", "err", err)
	}
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		g.Stop()
	}
	log.Info("nio-agent stopped")
	return nil
}

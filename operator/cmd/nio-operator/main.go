// Command nio-operator is the NIO Kubernetes operator: it converges Machines on
// NixosConfigurations, and rolls NixosFleets out to many Machines (see README.md and
// docs/usage-guide.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/controller"
	"github.com/homystack/nio/operator/internal/hostconn"
	"github.com/homystack/nio/operator/internal/install"
	"github.com/homystack/nio/operator/internal/oplog"
	"github.com/homystack/nio/operator/internal/pki"
	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/operator/internal/transport"
	"github.com/homystack/nio/operator/internal/webhook"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

type options struct {
	metricsAddr, probeAddr   string
	pprof                    bool
	leaderElect              bool
	namespace                string
	watchNamespaces          string
	concurrency              int
	nixosAnywhere            string
	installTimeout           time.Duration
	defaultInterval          time.Duration
	probeInterval            time.Duration
	factsInterval            time.Duration
	retryBase                time.Duration
	operationWaitMargin      time.Duration
	sourceCacheDir           string
	sourceMinInterval        time.Duration
	caSecret                 string
	sshStateDir, agentTLSDir string
	webhookAddr              string
	webhookSecret            string
	webhookRefusedBurst      int
	webhookRefusedInterval   time.Duration
	webhookTrustedProxies    string
	webhookReplayWindow      time.Duration
	logs                     logOptions
}

func main() {
	var o options
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", ":8080", "Address of the Prometheus metrics endpoint (0 disables it).")
	flag.BoolVar(&o.pprof, "pprof", false, "Serve Go's profiles (/debug/pprof/) beside the metrics, for diagnosing CPU and memory.")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	flag.BoolVar(&o.leaderElect, "leader-elect", false, "Elect a leader so only one replica reconciles (set in the Deployment).")
	flag.StringVar(&o.namespace, "namespace", envOr("POD_NAMESPACE", "nixos-operator-system"), "The operator's own namespace: its CA Secret, leader lease and webhook Secret.")
	flag.StringVar(&o.watchNamespaces, "watch-namespaces", "", "Comma-separated namespaces whose Machines and NixosConfigurations are managed (empty: all).")
	flag.IntVar(&o.concurrency, "concurrency", 10, "Configurations reconciled (and hosts driven) at once; Machines probed at once; fleets reconciled at once: a quarter of it.")
	flag.StringVar(&o.nixosAnywhere, "nixos-anywhere", "nixos-anywhere", "Path of the nixos-anywhere executable used for fullInstall.")
	flag.DurationVar(&o.installTimeout, "install-timeout", install.DefaultTimeout, "Longest a nixos-anywhere run may take.")
	flag.DurationVar(&o.defaultInterval, "default-interval", 5*time.Minute, "Poll interval of configurations whose spec.interval is empty.")
	flag.DurationVar(&o.probeInterval, "probe-interval", time.Minute, "How often each Machine is probed.")
	flag.DurationVar(&o.factsInterval, "facts-interval", 24*time.Hour, "How often nixos-facter facts are collected without a request.")
	flag.DurationVar(&o.retryBase, "retry-base", 30*time.Second, "First delay before retrying a failed apply of unchanged inputs (doubles up to the interval, at least 10m).")
	flag.DurationVar(&o.operationWaitMargin, "operation-wait-margin", transport.DefaultWaitMargin, "How long the operator waits for an operation beyond its spec.timeout, health checks and confirm window (source transfer, reconnects) before recording it Failed with reason Timeout.")
	flag.StringVar(&o.sourceCacheDir, "source-cache-dir", "", "Directory for fetched Git objects (empty: memory).")
	flag.DurationVar(&o.sourceMinInterval, "source-min-interval", 10*time.Second, "Shortest time between two ls-remotes of one repository (a push webhook bypasses it).")
	flag.StringVar(&o.caSecret, "ca-secret", "nio-ca", "Name of the CA Secret in --namespace (created on first start).")
	flag.StringVar(&o.sshStateDir, "ssh-state-dir", transport.DefaultSSHStateDir, "Directory on hosts where SSH applies unpack sources.")
	flag.StringVar(&o.agentTLSDir, "agent-tls-dir", transport.DefaultAgentTLSDir, "The agent's --tls-dir on hosts, where SSH delivers its identity.")
	flag.StringVar(&o.webhookAddr, "webhook-bind-address", "", "Address of the push webhook receiver (empty: off).")
	flag.StringVar(&o.webhookSecret, "webhook-secret", "nio-webhook", "Secret in --namespace whose key `token` verifies webhook payloads (watched; the Role allows nio-webhook).")
	flag.IntVar(&o.webhookRefusedBurst, "webhook-refused-burst", webhook.DefaultRefusedBurst, "Refused webhook deliveries (no or a wrong signature, not a POST, oversize, a replay) one source may send in a row before it is answered 429; 0: no limit.")
	flag.DurationVar(&o.webhookRefusedInterval, "webhook-refused-interval", webhook.DefaultRefusedInterval, "A source earns one more refused delivery back per interval.")
	flag.StringVar(&o.webhookTrustedProxies, "webhook-trusted-proxies", "", "Comma-separated CIDRs of the reverse proxies (the Ingress controller's Pods) whose X-Forwarded-For names the source of a delivery; empty: the TCP peer is the source.")
	flag.DurationVar(&o.webhookReplayWindow, "webhook-replay-window", webhook.DefaultReplayWindow, "How long a handled push is remembered (by delivery ID; for GitHub, Gitea and Forgejo also by its signed body): a replay in the window triggers nothing; 0: not remembered.")
	bindLogFlags(flag.CommandLine, &o.logs)
	zapOpts := zap.Options{}
	zapOpts.BindFlags(flag.CommandLine)
	showVersion := flag.Bool("version", false, "Print the version and exit.")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	if err := run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.Error(err, "nio-operator failed")
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, o options) error {
	log := ctrl.Log.WithName("setup")
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := nio.AddToScheme(scheme); err != nil {
		return err
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	// managedFields and kubectl's last applied configuration are never read: they
	// would only weigh on the cache (1000s of objects, and the metadata of every
	// Secret and ConfigMap watched).
	cacheOpts := cache.Options{DefaultTransform: controller.CacheTransform()}
	if o.watchNamespaces != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range strings.Split(o.watchNamespaces, ",") {
			if ns = strings.TrimSpace(ns); ns != "" {
				cacheOpts.DefaultNamespaces[ns] = cache.Config{}
			}
		}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Cache:                   cacheOpts,
		Client:                  controller.ClientOptions(),
		Metrics:                 metricsOptions(o),
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        "nio-operator.nio.homystack.com",
		LeaderElectionNamespace: o.namespace,
		// A new leader starts at once when the old one stops cleanly.
		LeaderElectionReleaseOnCancel: true,
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}

	// The CA is read or created through the API server directly: the manager's cache
	// has not started yet, and must not hold every Secret of the namespace anyway.
	direct, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}
	ca, err := pki.LoadOrCreateCA(ctx, direct, o.namespace, o.caSecret, time.Now())
	if err != nil {
		return fmt.Errorf("operator CA: %w", err)
	}
	issuer := pki.NewIssuer(ca)
	creds := issuer.OperatorCredentials()
	if _, err := creds.Certificate(); err != nil {
		return fmt.Errorf("operator client certificate: %w", err)
	}

	sources, err := source.NewCache(source.Options{Dir: o.sourceCacheDir, MinInterval: o.sourceMinInterval, Logger: ctrl.Log.WithName("source")})
	if err != nil {
		return err
	}
	m := controller.NewMetrics(metrics.Registry)
	controller.RegisterSourceMetrics(metrics.Registry, sources)
	locks := &controller.HostLocks{}
	hosts := &hostconn.Factory{
		Client: mgr.GetClient(), Credentials: creds,
		SSH: transport.SSHConfig{StateDir: o.sshStateDir, AgentTLSDir: o.agentTLSDir},
	}
	defer hosts.Close() // the agent connections, one per Machine
	controller.RegisterAgentConnectionMetrics(metrics.Registry, hosts.AgentStats)
	recorder := mgr.GetEventRecorder("nio-operator")
	srcs := &controller.Sources{Cache: sources}
	trigger := controller.NewTrigger(mgr.GetClient(), srcs)
	trigger.WatchSources(ctx)
	opLogs := oplog.NewStore(o.logs.maxBytes)
	configs := &controller.NixosConfigurationReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), MetaReader: mgr.GetCache(), Recorder: recorder, Sources: srcs, Trigger: trigger, Logs: opLogs,
		Hosts: hosts, Locks: locks, PKI: issuer, Metrics: m,
		Installer:       &install.Runner{Binary: o.nixosAnywhere, Timeout: o.installTimeout},
		DefaultInterval: o.defaultInterval, RetryBase: o.retryBase, OperationWaitMargin: o.operationWaitMargin,
	}
	if err := configs.SetupWithManager(ctx, mgr, o.concurrency); err != nil {
		return fmt.Errorf("NixosConfiguration controller: %w", err)
	}
	fleets := &controller.NixosFleetReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Scheme: scheme, Recorder: recorder, Sources: srcs,
		Metrics: m, Trigger: trigger, DefaultInterval: o.defaultInterval,
	}
	// After the configurations: it uses their index by Machine.
	if err := fleets.SetupWithManager(ctx, mgr, max(o.concurrency/4, 1)); err != nil {
		return fmt.Errorf("NixosFleet controller: %w", err)
	}
	machines := &controller.MachineReconciler{
		Client: mgr.GetClient(), Recorder: recorder, Hosts: hosts, Locks: locks, PKI: issuer, Metrics: m,
		ProbeInterval: o.probeInterval, FactsInterval: o.factsInterval,
	}
	if err := machines.SetupWithManager(ctx, mgr, o.concurrency); err != nil {
		return fmt.Errorf("Machine controller: %w", err)
	}
	if err := setupWebhook(mgr, o, trigger); err != nil {
		return err
	}
	if err := setupLogServer(mgr, o, issuer, opLogs); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	log.Info("starting nio-operator", "version", version, "namespace", o.namespace, "watchNamespaces", o.watchNamespaces,
		"concurrency", o.concurrency, "leaderElection", o.leaderElect)
	if err := mgr.Start(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// metricsOptions serves the metrics, and with --pprof Go's profiles beside them.
func metricsOptions(o options) metricsserver.Options {
	opts := metricsserver.Options{BindAddress: o.metricsAddr}
	if o.pprof {
		opts.ExtraHandlers = map[string]http.Handler{
			"/debug/pprof/":        http.HandlerFunc(pprof.Index),
			"/debug/pprof/profile": http.HandlerFunc(pprof.Profile),
		}
	}
	return opts
}

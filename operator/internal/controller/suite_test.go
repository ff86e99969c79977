package controller

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zapcore"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host/hosttest"
	"github.com/homystack/nio/operator/internal/pki"
	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/operator/internal/testenv"
)

var (
	env *testenv.Env
	// logs holds everything the operators of this package logged (debug level
	// included), so tests can scan it for secrets.
	logs = &syncBuffer{}
)

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.WriteTo(logs), zap.UseDevMode(false), zap.Level(zapcore.DebugLevel)))
	testenv.Main(m, &env, func() {
		fmt.Fprintln(os.Stderr, "operator log tail:\n"+tailOf(logs.String(), 60))
		_ = os.WriteFile(os.TempDir()+"/nio-controller-test.log", []byte(logs.String()), 0o600)
	})
}

func tailOf(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// operator is one running manager with every controller, talking to fake hosts.
type operator struct {
	metrics   *Metrics
	trigger   *Trigger
	fleet     *hosttest.Fleet
	installer *hosttest.Installer
	cancel    context.CancelFunc
	done      chan error
}

// newNamespace makes a namespace for one test.
func newNamespace(t *testing.T) string { return env.Namespace(t, "ctrl") }

// startOperator runs the controllers until the test ends (or stop is called).
func startOperator(t *testing.T, ns string, fleet *hosttest.Fleet, installer *hosttest.Installer, sourceOpts ...func(*source.Options)) *operator {
	t.Helper()
	return startOperatorIn(t, []string{ns}, fleet, installer, sourceOpts...)
}

// startOperatorIn is startOperator watching several namespaces (one source cache).
func startOperatorIn(t *testing.T, namespaces []string, fleet *hosttest.Fleet, installer *hosttest.Installer, sourceOpts ...func(*source.Options)) *operator {
	t.Helper()
	return startOperatorWith(t, operatorOptions{namespaces: namespaces, fleet: fleet, installer: installer, sourceOpts: sourceOpts})
}

// operatorOptions are startOperatorWith's.
type operatorOptions struct {
	namespaces []string
	fleet      *hosttest.Fleet
	installer  *hosttest.Installer // nil: one that succeeds
	sourceOpts []func(*source.Options)
	// wrapClient, when set, wraps the manager's client (to make API calls fail).
	wrapClient func(client.WithWatch) client.Client
	// requests, when set, records every request the operator sends the API server.
	requests *requestLog
}

// startOperatorWith runs the controllers as o says until the test ends.
func startOperatorWith(t *testing.T, o operatorOptions) *operator {
	t.Helper()
	namespaces, fleet, installer, sourceOpts := o.namespaces, o.fleet, o.installer, o.sourceOpts
	// Each test's operator sees its own namespaces only: earlier tests' objects stay.
	watched := map[string]cache.Config{}
	for _, ns := range namespaces {
		watched[ns] = cache.Config{}
	}
	cfg := rest.CopyConfig(env.Config)
	if o.requests != nil {
		cfg.WrapTransport = o.requests.wrap
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Cache:                  cache.Options{DefaultNamespaces: watched},
		Scheme:                 env.Scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptrTo(true)},
		Client:                 ClientOptions(),
		NewClient: func(cfg *rest.Config, opts client.Options) (client.Client, error) {
			if o.wrapClient == nil {
				return client.New(cfg, opts)
			}
			c, err := client.NewWithWatch(cfg, opts)
			if err != nil {
				return nil, err
			}
			return o.wrapClient(c), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	fleet.Client = mgr.GetClient()
	if installer == nil {
		installer = &hosttest.Installer{Fleet: fleet}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ca, err := pki.LoadOrCreateCA(ctx, env.Client, "default", "nio-ca", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	so := source.Options{}
	for _, o := range sourceOpts {
		o(&so)
	}
	cache, err := source.NewCache(so)
	if err != nil {
		t.Fatal(err)
	}
	metrics := NewMetrics(prometheus.NewRegistry())
	locks := &HostLocks{}
	issuer := pki.NewIssuer(ca)
	rec := mgr.GetEventRecorder("nio-operator")
	sources := &Sources{Cache: cache}
	trigger := NewTrigger(mgr.GetClient(), sources)
	trigger.WatchSources(ctx)
	cr := &NixosConfigurationReconciler{
		Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), MetaReader: mgr.GetCache(), Recorder: rec, Sources: sources, Trigger: trigger, Hosts: fleet, Locks: locks,
		Installer: installer, PKI: issuer, Metrics: metrics, RetryBase: 2 * time.Second,
		OperationWaitMargin: 500 * time.Millisecond,
	}
	if err := cr.SetupWithManager(ctx, mgr, 4); err != nil {
		t.Fatal(err)
	}
	fr := &NixosFleetReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Recorder: rec, Sources: sources,
		Metrics: metrics, Trigger: trigger}
	if err := fr.SetupWithManager(ctx, mgr, 2); err != nil {
		t.Fatal(err)
	}
	mr := &MachineReconciler{Client: mgr.GetClient(), Recorder: rec, Hosts: fleet, Locks: locks, PKI: issuer, Metrics: metrics,
		ProbeInterval: 2 * time.Second, FactsRetry: 3 * time.Second}
	if err := mr.SetupWithManager(ctx, mgr, 4); err != nil {
		t.Fatal(err)
	}
	op := &operator{metrics: metrics, trigger: trigger, fleet: fleet, installer: installer, cancel: cancel, done: make(chan error, 1)}
	go func() { op.done <- mgr.Start(ctx) }()
	t.Cleanup(op.stop)
	return op
}

// stop stops the manager and waits for it (idempotent).
func (o *operator) stop() {
	if o.cancel == nil {
		return
	}
	o.cancel()
	o.cancel = nil
	<-o.done
}

func ptrTo[T any](v T) *T { return &v }

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func getConfig(t *testing.T, ns, name string) *nio.NixosConfiguration {
	t.Helper()
	c := &nio.NixosConfiguration{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, c); err != nil {
		t.Fatal(err)
	}
	return c
}

func getMachine(t *testing.T, ns, name string) *nio.Machine {
	t.Helper()
	m := &nio.Machine{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, m); err != nil {
		t.Fatal(err)
	}
	return m
}

// eventsOf lists the events regarding an object.
func eventsOf(t *testing.T, ns, name string) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func condition(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/homystack/nio/operator/test/harness"
)

// The test binary doubles as nio-operator: with this variable set it runs main.
const runMainEnv = "NIO_OPERATOR_TEST_RUN_MAIN"

var (
	// cp is the control plane the package's operators run against, installed with
	// install.sh --no-deployment (CRDs, namespace, ServiceAccount, RBAC).
	cp *harness.ControlPlane
	// hEnv is the harness run holding it.
	hEnv *harness.Env
	// saConfig authenticates as the operator's ServiceAccount.
	saConfig *rest.Config
)

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var narration bytes.Buffer
	e, err := harness.NewEnv(&narration)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	hEnv = e
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "%v\n%s", err, narration.String())
		_ = e.Cleanup.Run()
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if cp, err = harness.StartControlPlane(e); err != nil {
		return fail(err)
	}
	if err := cp.Install(ctx); err != nil {
		return fail(err)
	}
	kc, err := cp.ServiceAccountKubeconfig(ctx)
	if err != nil {
		return fail(err)
	}
	if saConfig, err = clientcmd.BuildConfigFromFlags("", kc); err != nil {
		return fail(err)
	}
	code := m.Run()
	if err := e.Cleanup.Run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}

// apiProxy sits between one operator process and kube-apiserver, authenticating as
// the operator's ServiceAccount, and records every request the operator makes.
type apiProxy struct {
	srv *httptest.Server
	mu  sync.Mutex
	log []string // "GET /api/v1/...?...", in order
}

// startAPIProxy starts a proxy and returns it with a kubeconfig that points the
// operator at it.
func startAPIProxy(t *testing.T) (*apiProxy, string) {
	t.Helper()
	rt, err := rest.TransportFor(saConfig)
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(saConfig.Host)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
		Transport: rt,
		// Watches stream: pass every event on at once.
		FlushInterval: -1,
		// The operator's connections end with it, mid-watch: not worth a line.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	p := &apiProxy{}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.log = append(p.log, r.Method+" "+r.URL.RequestURI())
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() { p.srv.CloseClientConnections(); p.srv.Close() })

	kc := clientcmdapi.NewConfig()
	kc.Clusters["proxy"] = &clientcmdapi.Cluster{Server: p.srv.URL}
	kc.AuthInfos["operator"] = &clientcmdapi.AuthInfo{}
	kc.Contexts["operator"] = &clientcmdapi.Context{Cluster: "proxy", AuthInfo: "operator", Namespace: harness.OperatorNamespace}
	kc.CurrentContext = "operator"
	path := filepath.Join(t.TempDir(), "operator.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return p, path
}

// requests returns the requests recorded so far.
func (p *apiProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.log...)
}

// operator is one nio-operator process with its webhook receiver and metrics.
type operator struct {
	*harness.Operator
	webhook, metrics string // base URLs
}

// startOperator runs the real nio-operator (this test binary) as the ServiceAccount,
// through kubeconfig, managing only namespace, with the webhook receiver and metrics
// on loopback ports; args are added.
func startOperator(t *testing.T, kubeconfig, namespace string, args ...string) *operator {
	t.Helper()
	hook, metrics := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	op, err := harness.StartOperator(ctx, hEnv, harness.OperatorOptions{
		Binary:     os.Args[0],
		Kubeconfig: kubeconfig,
		LogPath:    filepath.Join(t.TempDir(), "nio-operator.log"),
		Env:        []string{runMainEnv + "=1"},
		Args: append([]string{"--watch-namespaces=" + namespace, "--webhook-bind-address=" + hook,
			"--metrics-bind-address=" + metrics}, args...),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		op.Kill()
		if t.Failed() {
			out, _ := op.Log()
			t.Logf("nio-operator log:\n%s", out)
		}
	})
	return &operator{Operator: op, webhook: "http://" + hook, metrics: "http://" + metrics}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// metric reads one sample of the operator's /metrics, e.g.
// `nio_webhook_rejected_total{provider="generic",reason="signature"}`.
func (op *operator) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get(op.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(body.String(), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	t.Fatalf("no series %s in /metrics", series)
	return 0
}

// logLines counts the operator's log lines holding every one of subs.
func (op *operator) logLines(t *testing.T, subs ...string) int {
	t.Helper()
	log, err := op.Log()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
lines:
	for _, line := range strings.Split(log, "\n") {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue lines
			}
		}
		n++
	}
	return n
}

// testNamespace creates a namespace of its own for a test.
func testNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"}}
	if err := cp.Admin.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// eventually polls cond for up to 30 s.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

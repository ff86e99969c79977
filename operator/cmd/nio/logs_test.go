package main

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/logserver"
	"github.com/homystack/nio/operator/internal/oplog"
	"github.com/homystack/nio/operator/internal/pki"
)

// logEndpoint is the operator's log endpoint, in-process: the real handler, the
// real TokenReview and SubjectAccessReview against the control plane (as its
// administrator, standing in for the operator's auth-delegator binding).
type logEndpoint struct {
	store  *oplog.Store
	url    string
	port   int
	caFile string
}

func startLogEndpoint(t *testing.T) *logEndpoint { return startLogEndpointOn(t, "127.0.0.1") }

func startLogEndpointOn(t *testing.T, ip string) *logEndpoint {
	t.Helper()
	ca, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := pki.NewIssuer(ca).LogServerCredentials([]string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	store := oplog.NewStore(0)
	h := logserver.NewHandler(logserver.Options{Store: store, Reviewer: logserver.KubeReviewer{Client: env.Client}, Logger: logr.Discard(), Heartbeat: 200 * time.Millisecond})
	l, err := tls.Listen("tcp", net.JoinHostPort(ip, "0"), &tls.Config{GetCertificate: creds.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	return &logEndpoint{store: store, url: "https://127.0.0.1:" + strconv.Itoa(port), port: port, caFile: caFile}
}

func (e *logEndpoint) vars() map[string]string {
	return map[string]string{"NIO_OPERATOR_URL": e.url, "NIO_OPERATOR_CA": e.caFile}
}

func createConfiguration(t *testing.T, ns, name, machine string) {
	t.Helper()
	c := &nio.NixosConfiguration{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: nio.NixosConfigurationSpec{
		Flake: ".#worker", MachineRef: nio.LocalObjectReference{Name: machine},
		ConfigurationTemplate: nio.ConfigurationTemplate{GitRepo: "https://git.example.org/configs.git"},
	}}
	if err := env.Client.Create(context.Background(), c); err != nil {
		t.Fatal(err)
	}
}

var readConfigurations = rbacv1.PolicyRule{APIGroups: []string{nio.GroupVersion.Group}, Resources: []string{"nixosconfigurations", "machines"}, Verbs: []string{"get", "list"}}

// TestLogsFollowAnOperationToItsEndAndRefuseAUserWithoutRBAC: a user who may get
// the configuration follows its operation live, each line prefixed by its phase,
// to its outcome; a user without RBAC in that namespace gets nothing but a refusal.
func TestLogsFollowAnOperationToItsEndAndRefuseAUserWithoutRBAC(t *testing.T) {
	ns := env.Namespace(t, "logs")
	createConfiguration(t, ns, "worker-config", "worker-01")
	reader := tokenUser(t, ns, "reader", readConfigurations)
	stranger := tokenUser(t, ns, "stranger")
	ep := startLogEndpoint(t)
	op := ep.store.Begin(types.NamespacedName{Namespace: ns, Name: "worker-config"}, oplog.Info{ID: "op-1", Commit: "3f2a9c41b7e0aa", Action: "switch", StartTime: time.Now()})
	op.Phase("Building", "nix build .#worker")
	op.Line("building '/nix/store/abc-worker.drv'...")

	done := make(chan result, 1)
	go func() { done <- nioWith(t, ep.vars(), "", "--kubeconfig", reader, "logs", "-f", "worker-config") }()
	time.Sleep(500 * time.Millisecond) // the follower is attached and waiting
	op.Phase("Activating", "")
	op.Line("activating the configuration...")
	op.End("Succeeded", "")
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("nio logs -f did not end with the operation")
	}
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.err)
	}
	for _, want := range []string{"== Building: nix build .#worker", "[Building] building '/nix/store/abc-worker.drv'...", "[Activating] activating the configuration...", "== Succeeded"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}

	r = nioWith(t, ep.vars(), "", "--kubeconfig", stranger, "logs", "worker-config")
	if r.code != exitForbidden || strings.Contains(r.stdout, "building") {
		t.Fatalf("a user without RBAC: exit %d, stdout %q, stderr %s; want %d and nothing", r.code, r.stdout, r.err, exitForbidden)
	}
	// The endpoint itself refuses them too, whatever the CLI checks first.
	resp := rawLog(t, ep, tokenOf(t, stranger), ns, "worker-config")
	if resp != http.StatusForbidden {
		t.Fatalf("the endpoint answered a user without RBAC %d, want 403", resp)
	}
	if code := rawLog(t, ep, "not-a-token", ns, "worker-config"); code != http.StatusUnauthorized {
		t.Fatalf("the endpoint answered a bad token %d, want 401", code)
	}
}

func TestLogsPreviousAndAFailedOperationsExitCode(t *testing.T) {
	ns := env.Namespace(t, "logs")
	createConfiguration(t, ns, "web", "web-01")
	reader := tokenUser(t, ns, "reader", readConfigurations)
	ep := startLogEndpoint(t)
	key := types.NamespacedName{Namespace: ns, Name: "web"}

	r := nioWith(t, ep.vars(), "", "--kubeconfig", reader, "logs", "web")
	if r.code != exitNotFound {
		t.Fatalf("no operation yet: exit %d (%s), want %d", r.code, r.err, exitNotFound)
	}
	first := ep.store.Begin(key, oplog.Info{ID: "op-1"})
	first.Phase("Building", "")
	first.Line("error: builder failed")
	first.End("Failed", "build failed")
	ep.store.Begin(key, oplog.Info{ID: "op-2"}).Line("second")

	r = nioWith(t, ep.vars(), "", "--kubeconfig", reader, "logs", "web", "--previous")
	if r.code != exitFailed || !strings.Contains(r.stdout, "[Building] error: builder failed") || !strings.Contains(r.stdout, "== Failed: build failed") {
		t.Fatalf("--previous: exit %d\n%s%s", r.code, r.stdout, r.err)
	}
	r = nioWith(t, ep.vars(), "", "--kubeconfig", reader, "logs", "web")
	if r.code != 0 || !strings.Contains(r.stdout, "second") || strings.Contains(r.stdout, "builder failed") {
		t.Fatalf("current: exit %d\n%s%s", r.code, r.stdout, r.err)
	}
}

// TestLogsThroughTheAPIServersServiceProxy: in a cluster, nio logs reaches the
// endpoint through the API server's proxy to the Service nio-operator-logs, with
// the proxy access every authenticated user has (config/manager/logs-proxy-rbac.yaml);
// the API server drops Authorization, so the endpoint reads X-Nio-Token.
func TestLogsThroughTheAPIServersServiceProxy(t *testing.T) {
	ctx := context.Background()
	ns := env.Namespace(t, "logs")
	createConfiguration(t, ns, "worker-config", "worker-01")
	reader := tokenUser(t, ns, "reader", readConfigurations)
	// The API server refuses loopback endpoints: the endpoint listens on an
	// address of this machine's own.
	ip := localAddress(t)
	ep := startLogEndpointOn(t, ip)
	opNS := "nixos-operator-system"
	_ = env.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: opNS}})
	applyManifest(t, filepath.Join(env.Root, "operator", "config", "manager", "logs-proxy-rbac.yaml"))
	// No kubelet or endpoints controller here: the Service's endpoint is this
	// process, written by hand.
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: "nio-operator-logs"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "logs", Port: 9444, TargetPort: intstr.FromInt32(int32(ep.port)), Protocol: corev1.ProtocolTCP}}}}
	if err := env.Client.Create(ctx, svc); err != nil {
		t.Fatal(err)
	}
	// The API server proxies only to an endpoint that is a Pod's address: the
	// operator's Pod, standing (no kubelet runs it), with this process's address.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: "nio-operator-0", Labels: map[string]string{"app": "nixos-operator"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "manager", Image: "nio-operator"}}}}
	if err := env.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.PodIP, pod.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
	if err := env.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	port := int32(ep.port)
	slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: "nio-operator-logs-1", Labels: map[string]string{discoveryv1.LabelServiceName: "nio-operator-logs"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{ip}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: opNS, Name: pod.Name}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("logs"), Port: &port}}}
	if err := env.Client.Create(ctx, slice); err != nil {
		t.Fatal(err)
	}
	op := ep.store.Begin(types.NamespacedName{Namespace: ns, Name: "worker-config"}, oplog.Info{ID: "op-1"})
	op.Phase("Building", "")
	op.Line("through the proxy")
	op.End("Succeeded", "")

	// The API server reads EndpointSlices from its informer: a moment after the write.
	var r result
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		r = nioWith(t, nil, "", "--kubeconfig", reader, "logs", "-f", "worker-config")
		if r.code != exitError || time.Now().After(deadline) {
			break
		}
	}
	if r.code != 0 || !strings.Contains(r.stdout, "[Building] through the proxy") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.err)
	}
	stranger := tokenUser(t, ns, "stranger")
	if r := nioWith(t, nil, "", "--kubeconfig", stranger, "logs", "worker-config"); r.code != exitForbidden {
		t.Fatalf("a user without RBAC through the proxy: exit %d (%s)", r.code, r.err)
	}
}

// localAddress is a non-loopback IPv4 address of this machine.
func localAddress(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("no non-loopback IPv4 address for the Service's endpoint") // CI machines have it: never skip there
	}
	t.Skip("no non-loopback IPv4 address for the Service's endpoint")
	return ""
}

func ptr[T any](v T) *T { return &v }

func applyManifest(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var role rbacv1.Role
		var raw map[string]any
		if err := dec.Decode(&raw); err != nil {
			break
		}
		var obj client.Object
		switch raw["kind"] {
		case "Role":
			obj = &role
		case "RoleBinding":
			obj = &rbacv1.RoleBinding{}
		default:
			t.Fatalf("%s: unexpected kind %v", path, raw["kind"])
		}
		if err := fromMap(raw, obj); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Create(context.Background(), obj); err != nil {
			t.Fatal(err)
		}
	}
}

// Package testenv starts the real test control plane (kube-apiserver and etcd built
// into bin/k8s by `make k8s`) with NIO's CRDs installed, for envtest-based tests.
package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// Env is a running control plane.
type Env struct {
	// Config reaches the API server as an administrator.
	Config *rest.Config
	// Client is an uncached client with Scheme.
	Client client.Client
	// Scheme knows the built-in kinds and NIO's.
	Scheme *runtime.Scheme
	// Kubeconfig is the path of an admin kubeconfig file, for kubectl.
	Kubeconfig string
	// Root is the repository root.
	Root string

	env *envtest.Environment
	dir string
}

// RepoRoot finds the repository root (the directory holding go.work) above the
// working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testenv: no go.work above the working directory")
		}
		dir = parent
	}
}

// Assets is the directory holding kube-apiserver, etcd and kubectl:
// $KUBEBUILDER_ASSETS, or bin/k8s of the repository.
func Assets(root string) (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		dir = filepath.Join(root, "bin", "k8s")
	}
	for _, bin := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(dir, bin)); err != nil {
			return "", fmt.Errorf("testenv: %s not found in %s: run `make k8s` (or `make test`, which builds it)", bin, dir)
		}
	}
	return dir, nil
}

// Scheme returns a scheme with the built-in kinds and NIO's.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := nio.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Start starts kube-apiserver and etcd with the CRDs of operator/config/crd/bases.
// Call Stop when done (TestMain is the place: one control plane per package).
func Start() (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets, err := Assets(root)
	if err != nil {
		return nil, err
	}
	e := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "operator", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := e.Start()
	if err != nil {
		return nil, fmt.Errorf("testenv: start control plane: %w", err)
	}
	env := &Env{Config: cfg, Scheme: Scheme(), Root: root, env: e}
	if err := env.init(); err != nil {
		_ = env.Stop()
		return nil, err
	}
	return env, nil
}

func (env *Env) init() error {
	c, err := client.New(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		return fmt.Errorf("testenv: client: %w", err)
	}
	env.Client = c
	user, err := env.env.ControlPlane.AddUser(envtest.User{Name: "testenv-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("testenv: admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("testenv: kubeconfig: %w", err)
	}
	env.dir, err = os.MkdirTemp("", "nio-testenv-")
	if err != nil {
		return err
	}
	env.Kubeconfig = filepath.Join(env.dir, "kubeconfig")
	return os.WriteFile(env.Kubeconfig, kc, 0o600)
}

// Kubectl is the path of the kubectl built with the control plane.
func (env *Env) Kubectl() string {
	dir, _ := Assets(env.Root)
	return filepath.Join(dir, "kubectl")
}

// AddUser creates a user and returns a rest.Config for it (for RBAC tests).
func (env *Env) AddUser(name string, groups ...string) (*rest.Config, error) {
	u, err := env.env.ControlPlane.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return nil, err
	}
	return u.Config(), nil
}

// Stop stops the control plane and removes its files.
func (env *Env) Stop() error {
	if env.dir != "" {
		_ = os.RemoveAll(env.dir)
	}
	return env.env.Stop()
}

// Main is the body of a TestMain: it starts the control plane into *env, runs the
// package's tests, calls onFailure (if any) when they failed, stops the control
// plane and exits.
func Main(m *testing.M, env **Env, onFailure func()) {
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*env = e
	code := m.Run()
	if code != 0 && onFailure != nil {
		onFailure()
	}
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testenv: stop control plane:", err)
	}
	os.Exit(code)
}

var nsSeq atomic.Int64

// Namespace creates a namespace of its own for one test, named prefix-<n>.
func (env *Env) Namespace(t testing.TB, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", prefix, nsSeq.Add(1))}}
	if err := env.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("testenv: create namespace %s: %v", ns.Name, err)
	}
	return ns.Name
}

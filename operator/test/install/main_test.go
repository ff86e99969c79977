// Package install tests install.sh, the manifests under operator/config it installs,
// and the examples/ it points users at: against the real control plane (kube-apiserver
// and etcd from bin/k8s) with the kubectl built beside them, and with real Nix for the
// example flake.
package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/homystack/nio/operator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, nil) }

const (
	operatorNamespace = "nixos-operator-system"
	operatorSA        = "nio-operator"
	defaultImage      = "ghcr.io/homystack/nio-operator:latest"
)

// result is one run of install.sh.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\n--- stdout\n%s\n--- stderr\n%s", r.code, r.stdout, r.stderr)
}

// script runs install.sh with exactly the environment given (plus HOME and TMPDIR of
// its own), so nothing of the developer's kubectl setup leaks in. It checks that the
// script left nothing in its TMPDIR.
func script(t *testing.T, environ []string, args ...string) result {
	t.Helper()
	tmp := t.TempDir()
	cmd := exec.Command(filepath.Join(env.Root, "install.sh"), args...)
	cmd.Env = append([]string{"HOME=" + t.TempDir(), "TMPDIR=" + tmp}, environ...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run install.sh: %v", err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("install.sh left %d entries in TMPDIR (first: %s)", len(left), left[0].Name())
	}
	return r
}

// clusterEnv is the environment of a run against the test control plane.
func clusterEnv(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "KUBECTL=" + env.Kubectl(), "KUBECONFIG=" + env.Kubeconfig}, extra...)
}

// noClusterEnv is the environment of a run with kubectl but no cluster at all.
func noClusterEnv(t *testing.T, extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "KUBECTL=" + env.Kubectl(),
		"KUBECONFIG=" + filepath.Join(t.TempDir(), "no-such-kubeconfig")}, extra...)
}

// mustSucceed runs install.sh and fails the test unless it exits 0.
func mustSucceed(t *testing.T, environ []string, args ...string) result {
	t.Helper()
	r := script(t, environ, args...)
	if r.code != 0 {
		t.Fatalf("install.sh %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// mustFail runs install.sh, expects the exit code and a stderr naming the problem.
func mustFail(t *testing.T, code int, wantErr string, environ []string, args ...string) result {
	t.Helper()
	r := script(t, environ, args...)
	if r.code != code || !strings.Contains(r.stderr, wantErr) {
		t.Fatalf("install.sh %s: want exit %d and %q on stderr, got %s", strings.Join(args, " "), code, wantErr, r)
	}
	return r
}

// decodeManifests parses a multi-document YAML stream into objects.
func decodeManifests(t *testing.T, data string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatalf("manifests do not parse: %v", err)
		}
		if len(m) != 0 {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
}

// find returns the object of a kind and name, or nil.
func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// convert turns a decoded object into its typed form.
func convert[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &v); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return &v
}

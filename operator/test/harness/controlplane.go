package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/testenv"
)

// The names install.sh creates.
const (
	OperatorNamespace      = "nixos-operator-system"
	OperatorServiceAccount = "nio-operator"
)

// ControlPlane is a running kube-apiserver and etcd with an admin kubeconfig. It has
// no kubelet and no controller-manager: nothing runs Pods, which is why the operator
// runs as a process beside it.
type ControlPlane struct {
	// AdminKubeconfig is a kubeconfig of a system:masters user.
	AdminKubeconfig string
	// Kubectl is bin/k8s/kubectl.
	Kubectl string
	// Admin is an uncached client as the administrator, for assertions.
	Admin client.Client
	// Config reaches the API server as the administrator.
	Config *rest.Config

	env *Env
}

// StartControlPlane starts kube-apiserver and etcd from bin/k8s (or
// $KUBEBUILDER_ASSETS). No CRD is installed: install.sh does that.
func StartControlPlane(e *Env) (*ControlPlane, error) {
	assets, err := testenv.Assets(e.Root)
	if err != nil {
		return nil, err
	}
	te := &envtest.Environment{BinaryAssetsDirectory: assets}
	if _, err := te.Start(); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	e.Cleanup.Add("control plane", te.Stop)
	user, err := te.ControlPlane.AddUser(envtest.User{Name: "nio-e2e-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, fmt.Errorf("admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	cp := &ControlPlane{AdminKubeconfig: e.Path("admin.kubeconfig"), Kubectl: filepath.Join(assets, "kubectl"), Config: user.Config(), env: e}
	if err := os.WriteFile(cp.AdminKubeconfig, kc, 0o600); err != nil {
		return nil, err
	}
	cp.Admin, err = client.New(cp.Config, client.Options{Scheme: testenv.Scheme()})
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return cp, nil
}

// Run runs kubectl as the administrator, narrating the command (as a user would type
// it) and its output, and returns the output. A failure carries the output.
func (cp *ControlPlane) Run(ctx context.Context, args ...string) (string, error) {
	return cp.run(ctx, true, args...)
}

// Quiet is Run without narration, for assertions.
func (cp *ControlPlane) Quiet(ctx context.Context, args ...string) (string, error) {
	return cp.run(ctx, false, args...)
}

func (cp *ControlPlane) run(ctx context.Context, narrate bool, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, cp.Kubectl, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cp.AdminKubeconfig)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if narrate {
		cp.env.Printf("\n$ kubectl %s\n", strings.Join(args, " "))
	}
	err := cmd.Run()
	if narrate {
		cp.env.Printf("%s", out.String())
	}
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Install runs the real ./install.sh --no-deployment with KUBECTL=bin/k8s/kubectl
// against the control plane: CRDs, namespace, ServiceAccount and RBAC; the operator
// then runs as a process.
func (cp *ControlPlane) Install(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, filepath.Join(cp.env.Root, "install.sh"), "--no-deployment", "--kubeconfig", cp.AdminKubeconfig)
	cmd.Dir = cp.env.Root
	cmd.Env = append(os.Environ(), "KUBECTL="+cp.Kubectl)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cp.env.Printf("\n$ KUBECTL=%s ./install.sh --no-deployment --kubeconfig %s\n", cp.Kubectl, cp.AdminKubeconfig)
	err := cmd.Run()
	cp.env.Printf("%s", out.String())
	if err != nil {
		return fmt.Errorf("install.sh: %w: %s", err, strings.TrimSpace(out.String()))
	}
	// The CRDs must be served before anything is applied.
	for _, crd := range []string{"machines.nio.homystack.com", "nixosconfigurations.nio.homystack.com", "nixosfleets.nio.homystack.com"} {
		if _, err := cp.Quiet(ctx, "wait", "--for=condition=Established", "--timeout=60s", "crd/"+crd); err != nil {
			return err
		}
	}
	return nil
}

// ServiceAccountKubeconfig writes a kubeconfig that authenticates as the operator's
// ServiceAccount with a token from `kubectl create token`, so the operator process has
// exactly the rights install.sh's RBAC grants it.
func (cp *ControlPlane) ServiceAccountKubeconfig(ctx context.Context) (string, error) {
	token, err := cp.Quiet(ctx, "create", "token", OperatorServiceAccount, "-n", OperatorNamespace, "--duration", (24 * time.Hour).String())
	if err != nil {
		return "", fmt.Errorf("token for ServiceAccount %s/%s: %w", OperatorNamespace, OperatorServiceAccount, err)
	}
	cp.env.Printf("\n$ kubectl create token %s -n %s   (token written to a kubeconfig, not shown)\n", OperatorServiceAccount, OperatorNamespace)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["nio-e2e"] = &clientcmdapi.Cluster{Server: cp.Config.Host, CertificateAuthorityData: cp.Config.CAData}
	kc.AuthInfos[OperatorServiceAccount] = &clientcmdapi.AuthInfo{Token: strings.TrimSpace(token)}
	kc.Contexts["nio-operator"] = &clientcmdapi.Context{Cluster: "nio-e2e", AuthInfo: OperatorServiceAccount, Namespace: OperatorNamespace}
	kc.CurrentContext = "nio-operator"
	path := cp.env.Path("operator.kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("write operator kubeconfig: %w", err)
	}
	return path, nil
}

// Machine reads a Machine as the administrator.
func (cp *ControlPlane) Machine(ctx context.Context, ns, name string) (*nio.Machine, error) {
	m := &nio.Machine{}
	if err := cp.Admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, m); err != nil {
		return nil, err
	}
	return m, nil
}

// Configuration reads a NixosConfiguration as the administrator.
func (cp *ControlPlane) Configuration(ctx context.Context, ns, name string) (*nio.NixosConfiguration, error) {
	c := &nio.NixosConfiguration{}
	if err := cp.Admin.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, c); err != nil {
		return nil, err
	}
	return c, nil
}

package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/homystack/nio/operator/internal/testenv"
)

// env is the package's control plane: a real kube-apiserver and etcd.
var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, nil) }

// result is one run of the command.
type result struct {
	code        int
	stdout, err string
}

// nio runs the command in-process with the environment given (nothing of the
// test process's own).
func runNio(t *testing.T, vars map[string]string, args ...string) result {
	t.Helper()
	return nioWith(t, vars, "", args...)
}

func nioWith(t *testing.T, vars map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	s := streams{in: strings.NewReader(stdin), out: &out, err: &errOut}
	root := newRoot(s, func(k string) string { return vars[k] })
	root.SetArgs(args)
	code := exitOK
	if err := root.Execute(); err != nil {
		errOut.WriteString("nio: " + err.Error() + "\n")
		code = exitCodeOf(err)
	}
	return result{code: code, stdout: out.String(), err: errOut.String()}
}

// tokenUser creates a ServiceAccount in ns, binds it to a Role granting rules
// (none: no binding), and writes a kubeconfig with a token of it.
func tokenUser(t *testing.T, ns, name string, rules ...rbacv1.PolicyRule) string {
	t.Helper()
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := env.Client.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}
	if len(rules) > 0 {
		role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Rules: rules}
		rb := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: name},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}}
		if err := env.Client.Create(ctx, role); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Create(ctx, rb); err != nil {
			t.Fatal(err)
		}
	}
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: env.Config.Host, CertificateAuthorityData: env.Config.CAData}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: name, Namespace: ns}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUnknownCommandsAndFlagsExitWithUsage(t *testing.T) {
	for _, args := range [][]string{{"frobnicate"}, {"get", "--bogus"}, {"logs"}, {"get", "-o", "yaml", "--kubeconfig", env.Kubeconfig}} {
		if r := runNio(t, nil, args...); r.code != exitUsage {
			t.Errorf("nio %v: exit %d, want %d (usage); stderr %s", args, r.code, exitUsage, r.err)
		}
	}
}

func TestCompletionScriptsAreGenerated(t *testing.T) {
	for _, sh := range []string{"bash", "zsh", "fish", "powershell"} {
		r := runNio(t, nil, "completion", sh)
		if r.code != 0 || !strings.Contains(r.stdout, "nio") {
			t.Errorf("completion %s: exit %d, %d bytes; stderr %s", sh, r.code, len(r.stdout), r.err)
		}
	}
}

func TestHelpShowsExamplesAndExitCodes(t *testing.T) {
	r := runNio(t, nil, "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "Exit codes") || !strings.Contains(r.stdout, "nio logs -f") {
		t.Fatalf("--help: exit %d:\n%s", r.code, r.stdout)
	}
	r = runNio(t, nil, "logs", "--help")
	if !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "--previous") {
		t.Fatalf("logs --help lacks examples:\n%s", r.stdout)
	}
}

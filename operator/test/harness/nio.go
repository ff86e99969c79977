package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// NioRun is one run of the nio CLI.
type NioRun struct {
	Code   int
	Output string
}

// Nio runs the nio CLI with kubeconfig (the demo user's, see DemoUser, when empty) against the
// operator's log endpoint, narrating the command and its output. The operator runs
// as a process here, so nio reaches it at NIO_OPERATOR_URL, verified against the
// operator CA's certificate (NIO_OPERATOR_CA); in a cluster it goes through the API
// server's service proxy instead.
func (s *Stack) Nio(ctx context.Context, kubeconfig string, args ...string) (NioRun, error) {
	ca, err := s.operatorCAFile(ctx)
	if err != nil {
		return NioRun{}, err
	}
	if kubeconfig == "" {
		if kubeconfig, err = s.DemoUser(ctx); err != nil {
			return NioRun{}, err
		}
	}
	cmd := exec.CommandContext(ctx, s.Bin.Nio, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "NIO_OPERATOR_URL="+s.Operator.LogURL(), "NIO_OPERATOR_CA="+ca, "NO_COLOR=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	s.Printf("\n$ nio %s\n", strings.Join(args, " "))
	err = cmd.Run()
	s.Printf("%s", out.String())
	run := NioRun{Output: out.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			return run, fmt.Errorf("nio %s: %w", strings.Join(args, " "), err)
		}
		run.Code = ee.ExitCode()
	}
	return run, nil
}

// operatorCAFile writes the operator CA's certificate (not its key) to a file.
func (s *Stack) operatorCAFile(ctx context.Context) (string, error) {
	path := s.Path("operator-ca.crt")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	var sec corev1.Secret
	if err := s.Control.Admin.Get(ctx, client.ObjectKey{Namespace: OperatorNamespace, Name: "nio-ca"}, &sec); err != nil {
		return "", fmt.Errorf("operator CA Secret: %w", err)
	}
	if err := os.WriteFile(path, sec.Data[corev1.TLSCertKey], 0o644); err != nil {
		return "", err
	}
	return path, nil
}

// FollowBuildLog follows, with `nio logs -f`, the operation that applies commit to
// the guide's configuration, to its end: it waits until the operator attempts the
// commit, and runs nio again while it still shows the operation before (the log of
// the new one starts a moment after the status names it).
func (s *Stack) FollowBuildLog(ctx context.Context, commit string) (NioRun, error) {
	for {
		c, err := s.Control.Configuration(ctx, GuideNamespace, GuideConfiguration)
		if err != nil {
			return NioRun{}, err
		}
		if c.Status.LastAttemptedCommit == commit {
			break
		}
		select {
		case <-ctx.Done():
			return NioRun{}, fmt.Errorf("the operator did not attempt commit %s: %w", commit, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	for attempt := 0; ; attempt++ {
		run, err := s.Nio(ctx, "", "logs", "-f", GuideConfiguration, "-n", GuideNamespace)
		if err != nil || strings.Contains(run.Output, " of "+commit[:12]+",") || attempt == 10 {
			return run, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// UserKubeconfig makes a person for nio: a ServiceAccount of ns with a token (the
// log endpoint checks a bearer token; the admin's kubeconfig has a client
// certificate), bound, when reader, to a Role that may read NIO's kinds there.
// It returns the kubeconfig's path.
func (s *Stack) UserKubeconfig(ctx context.Context, ns, name string, reader bool) (string, error) {
	k := s.Control
	steps := [][]string{{"create", "serviceaccount", name, "-n", ns}}
	if reader {
		steps = append(steps,
			[]string{"create", "role", name, "-n", ns, "--verb=get,list,watch", "--resource=machines.nio.homystack.com,nixosconfigurations.nio.homystack.com,nixosfleets.nio.homystack.com"},
			[]string{"create", "rolebinding", name, "-n", ns, "--role=" + name, "--serviceaccount=" + ns + ":" + name})
	}
	for _, argv := range steps {
		if _, err := k.Run(ctx, argv...); err != nil {
			return "", err
		}
	}
	token, err := k.Quiet(ctx, "create", "token", name, "-n", ns, "--duration", (24 * time.Hour).String())
	if err != nil {
		return "", fmt.Errorf("token for ServiceAccount %s/%s: %w", ns, name, err)
	}
	s.Printf("\n$ kubectl create token %s -n %s   (token written to a kubeconfig, not shown)\n", name, ns)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["nio"] = &clientcmdapi.Cluster{Server: k.Config.Host, CertificateAuthorityData: k.Config.CAData}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: strings.TrimSpace(token)}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: "nio", AuthInfo: name, Namespace: ns}
	kc.CurrentContext = name
	path := s.Path(name + ".kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("write kubeconfig of %s: %w", name, err)
	}
	return path, nil
}

// DemoUser is the kubeconfig of "alice", who may read NIO's kinds in the guide's
// namespace (made once).
func (s *Stack) DemoUser(ctx context.Context) (string, error) {
	s.userOnce.Do(func() { s.user, s.userErr = s.UserKubeconfig(ctx, GuideNamespace, "alice", true) })
	return s.user, s.userErr
}

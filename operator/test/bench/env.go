package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/homystack/nio/operator/internal/pki"
	"github.com/homystack/nio/operator/internal/testenv"
	"github.com/homystack/nio/operator/internal/webhook"
)

const (
	operatorNamespace = "nio-bench-system"
	webhookSecretName = "nio-webhook"
	caSecretName      = "nio-ca"
)

// stack is one control plane with the real operator running against it.
type stack struct {
	env         *testenv.Env
	c           client.WithWatch
	op          *process
	metricsURL  string
	webhookURL  string
	webhookKey  []byte
	issuer      *pki.Issuer
	probePeriod time.Duration
}

type stackOptions struct {
	dir, bin      string
	concurrency   int
	probeInterval time.Duration
	extraEnv      []string
}

// startStack starts kube-apiserver and etcd with the CRDs, the operator's namespace
// and webhook Secret, and the real nio-operator binary with an admin kubeconfig
// (RBAC is not what the benchmark measures), then reads back the CA it created.
func startStack(ctx context.Context, o stackOptions) (_ *stack, err error) {
	env, err := testenv.Start()
	if err != nil {
		return nil, err
	}
	s := &stack{env: env, probePeriod: o.probeInterval}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	s.c, err = client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		return nil, err
	}
	if err := s.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}); err != nil {
		return nil, fmt.Errorf("create namespace: %w", err)
	}
	s.webhookKey = []byte("bench-webhook-token-" + strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := s.c.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: operatorNamespace, Name: webhookSecretName},
		Data:       map[string][]byte{"token": s.webhookKey},
	}); err != nil {
		return nil, fmt.Errorf("create webhook Secret: %w", err)
	}
	metricsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	probeAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	webhookAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	s.metricsURL = "http://" + metricsAddr + "/metrics"
	s.webhookURL = "http://" + webhookAddr + webhook.PathPrefix + "generic"
	env2 := append(os.Environ(), "KUBECONFIG="+env.Kubeconfig)
	env2 = append(env2, o.extraEnv...)
	args := []string{filepath.Join(o.bin, "nio-operator"),
		"--namespace", operatorNamespace,
		"--metrics-bind-address", metricsAddr,
		"--health-probe-bind-address", probeAddr,
		"--webhook-bind-address", webhookAddr,
		"--webhook-secret", webhookSecretName,
		"--ca-secret", caSecretName,
		"--concurrency", strconv.Itoa(o.concurrency),
		// Profiles on the metrics address, to see where CPU and memory go; serving
		// them changes nothing else.
		"--pprof",
	}
	if o.probeInterval > 0 {
		// Only when asked: the benchmark runs the operator's default otherwise.
		args = append(args, "--probe-interval", o.probeInterval.String())
	}
	s.op, err = startProcess("nio-operator", filepath.Join(o.dir, "operator.log"), env2, args...)
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, "http://"+probeAddr+"/readyz", s.op); err != nil {
		return nil, err
	}
	secret := &corev1.Secret{}
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: operatorNamespace, Name: caSecretName}, secret); err != nil {
		return nil, fmt.Errorf("read the operator's CA Secret: %w", err)
	}
	ca, err := pki.ParseCA(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey])
	if err != nil {
		return nil, fmt.Errorf("operator CA: %w", err)
	}
	s.issuer = pki.NewIssuer(ca)
	return s, nil
}

func (s *stack) stop() {
	s.op.stop(15 * time.Second)
	if s.env != nil {
		_ = s.env.Stop()
	}
}

// writeIdentity issues Machine namespace/name its server certificate from the
// operator's CA and writes the agent's TLS directory.
func (s *stack) writeIdentity(dir, namespace, name string) error {
	id, err := s.issuer.IssueMachineServer(namespace, name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for file, data := range map[string][]byte{"ca.crt": id.CAPEM, "tls.crt": id.CertPEM, "tls.key": id.KeyPEM} {
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// push POSTs a signed generic push for repoURL at commit to the operator's webhook.
func (s *stack) push(ctx context.Context, repoURL, commit string) error {
	body, err := json.Marshal(webhook.GenericPush{Repository: repoURL, Ref: "refs/heads/main", After: commit})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.webhookURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-NIO-Signature-256", webhook.Sign(s.webhookKey, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

func (s *stack) metrics(ctx context.Context) (map[string]float64, error) {
	return scrape(ctx, s.metricsURL)
}

func (s *stack) usage() procUsage {
	u, _ := readProc(s.op.pid())
	return u
}

func ensureNamespace(ctx context.Context, c client.Client, name string) error {
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

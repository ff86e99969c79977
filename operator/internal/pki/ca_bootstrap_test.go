package pki_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/homystack/nio/operator/internal/pki"
)

// Ten operator replicas start at once against a real API server. Each first sees no
// CA Secret (the test holds every one of them after its first Get until all ten
// have looked, so all ten really race to create); exactly one Create may succeed,
// and all ten must come back with that one CA.
func TestConcurrentCABootstrapLeavesExactlyOneCA(t *testing.T) {
	const replicas = 10
	ns := newNamespace(t)
	ctx := context.Background()

	var (
		sawMissing    sync.WaitGroup
		created       atomic.Int32
		alreadyExists atomic.Int32
	)
	sawMissing.Add(replicas)
	replica := func() client.Client {
		base, err := client.NewWithWatch(env.Config, client.Options{Scheme: env.Scheme})
		if err != nil {
			t.Fatal(err)
		}
		var firstGet sync.Once
		return interceptor.NewClient(base, interceptor.Funcs{
			Get: func(ctx context.Context, c client.WithWatch, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
				err := c.Get(ctx, key, obj, opts...)
				firstGet.Do(func() {
					if !apierrors.IsNotFound(err) {
						t.Errorf("first Get: want NotFound, got %v", err)
					}
					sawMissing.Done()
					sawMissing.Wait()
				})
				return err
			},
			Create: func(ctx context.Context, c client.WithWatch, obj client.Object, opts ...client.CreateOption) error {
				err := c.Create(ctx, obj, opts...)
				switch {
				case err == nil:
					created.Add(1)
				case apierrors.IsAlreadyExists(err):
					alreadyExists.Add(1)
				}
				return err
			},
		})
	}

	clients := make([]client.Client, replicas)
	for i := range clients {
		clients[i] = replica()
	}
	cas := make([]*pki.CA, replicas)
	errs := make([]error, replicas)
	var done sync.WaitGroup
	for i := range replicas {
		done.Go(func() {
			cas[i], errs[i] = pki.LoadOrCreateCA(ctx, clients[i], ns, pki.DefaultCASecretName, time.Now())
		})
	}
	done.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
	}
	if got := created.Load(); got != 1 {
		t.Errorf("successful creates = %d, want 1", got)
	}
	if got := alreadyExists.Load(); got != replicas-1 {
		t.Errorf("AlreadyExists answers = %d, want %d (every loser must read the winner back)", got, replicas-1)
	}
	for i, ca := range cas {
		if !bytes.Equal(ca.Cert.Raw, cas[0].Cert.Raw) {
			t.Errorf("replica %d got a different CA than replica 0", i)
		}
	}

	var secrets corev1.SecretList
	if err := env.Client.List(ctx, &secrets, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(secrets.Items) != 1 {
		t.Fatalf("secrets in %s = %d, want 1", ns, len(secrets.Items))
	}
	s := secrets.Items[0]
	if s.Name != pki.DefaultCASecretName || s.Type != corev1.SecretTypeTLS {
		t.Errorf("secret %s of type %s, want %s of type %s", s.Name, s.Type, pki.DefaultCASecretName, corev1.SecretTypeTLS)
	}
	if !bytes.Equal(s.Data[corev1.TLSCertKey], cas[0].CertPEM) {
		t.Error("the stored tls.crt is not the CA every replica returned")
	}
	if s.Immutable == nil || !*s.Immutable {
		t.Error("the CA secret must be immutable")
	}

	// A later start (a restart) loads the same CA, with a working key.
	again, err := pki.LoadOrCreateCA(ctx, env.Client, ns, pki.DefaultCASecretName, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Cert.Raw, cas[0].Cert.Raw) {
		t.Error("restart loaded a different CA")
	}
	keyPEM, err := again.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(keyPEM, s.Data[corev1.TLSPrivateKeyKey]) {
		t.Error("loaded CA key differs from the stored tls.key")
	}
}

func TestNewCAIsALongLivedP256CA(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA(now)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("not a CA: IsCA=%v keyUsage=%b", c.IsCA, c.KeyUsage)
	}
	if c.PublicKeyAlgorithm.String() != "ECDSA" {
		t.Errorf("key algorithm %s, want ECDSA", c.PublicKeyAlgorithm)
	}
	if life := c.NotAfter.Sub(now); life < 9*365*24*time.Hour {
		t.Errorf("CA valid for %s, want about 10 years", life)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
}

// A Secret of the CA's name that does not hold a CA is reported, never replaced:
// agents may already trust what was there.
func TestBrokenCASecretIsAnErrorNotOverwritten(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	broken := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "my-ca"},
		Data:       map[string][]byte{"tls.crt": []byte("not a certificate"), "tls.key": []byte("secret-key-material")},
	}
	if err := env.Client.Create(ctx, broken); err != nil {
		t.Fatal(err)
	}
	_, err := pki.LoadOrCreateCA(ctx, env.Client, ns, "my-ca", time.Now())
	if err == nil {
		t.Fatal("want an error for a Secret without a CA")
	}
	if bytes.Contains([]byte(err.Error()), []byte("secret-key-material")) {
		t.Errorf("error leaks the secret's content: %v", err)
	}
	var after corev1.Secret
	if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "my-ca"}, &after); err != nil {
		t.Fatal(err)
	}
	if string(after.Data["tls.crt"]) != "not a certificate" {
		t.Error("the broken Secret was overwritten")
	}
}

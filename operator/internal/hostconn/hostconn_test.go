package hostconn

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
)

// TestUnparsableSSHKeyIsAConfigurationError: a Secret whose key does not parse is
// the user's to fix (the controllers stall instead of retrying), and the error does
// not quote the Secret's content.
func TestUnparsableSSHKeyIsAConfigurationError(t *testing.T) {
	const garbage = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90LWEta2V5LXNlY3JldC12YWx1ZQ==\n-----END OPENSSH PRIVATE KEY-----\n"
	c := fake.NewClientBuilder().WithObjects(&corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "key", Namespace: "ns"},
		Data:       map[string][]byte{"ssh-privatekey": []byte(garbage)},
	}).Build()
	m := &nio.Machine{
		ObjectMeta: metav1.ObjectMeta{Name: "worker-01", Namespace: "ns"},
		Spec: nio.MachineSpec{Hostname: "worker-01", IPAddress: "192.0.2.1",
			SSHKeySecretRef: &nio.SSHKeySecretReference{Name: "key"}, Agent: nio.AgentSpec{Disabled: true}},
	}
	_, err := (&Factory{Client: c}).Open(context.Background(), m)
	if !errors.Is(err, outcome.ErrConfig) {
		t.Fatalf("Open = %v, want a configuration error", err)
	}
	if strings.Contains(err.Error(), "bm90LWEta2V5") {
		t.Fatalf("error quotes the key: %v", err)
	}
}

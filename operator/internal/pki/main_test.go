package pki_test

import (
	"testing"

	"github.com/homystack/nio/operator/internal/testenv"
)

// env is one real kube-apiserver + etcd for the package (the CA bootstrap tests).
var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, nil) }

// newNamespace creates a fresh namespace so tests do not see each other's Secrets.
func newNamespace(t *testing.T) string { return env.Namespace(t, "pki") }

// Package apischema tests the CRD schemas against a real kube-apiserver: the usage
// guide's manifests apply verbatim and get their defaults, and bad input is refused by
// the API server itself.
package apischema

import (
	"testing"

	"github.com/homystack/nio/operator/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) { testenv.Main(m, &env, nil) }

// newNamespace creates a namespace of its own for one test.
func newNamespace(t *testing.T) string { return env.Namespace(t, "apischema") }

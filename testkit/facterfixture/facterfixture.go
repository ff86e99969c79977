// Package facterfixture holds the one copy of a real nixos-facter report (a KVM VPS,
// x86_64-linux, 2 CPUs) that the agent's and the operator's tests serve or parse.
package facterfixture

import (
	_ "embed"
	"os"
	"path/filepath"
	"testing"
)

// Report is the report's JSON. Callers must not modify it.
//
//go:embed facter-kvm-vps.json
var Report []byte

// WriteFile writes the report into a temporary directory of t and returns its path,
// for stand-ins that cat a file.
func WriteFile(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "facter-kvm-vps.json")
	if err := os.WriteFile(p, Report, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

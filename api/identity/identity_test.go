package identity

import "testing"

func TestMachineDNSNameRoundTrip(t *testing.T) {
	for _, c := range []struct{ ns, name string }{{"default", "worker-01"}, {"prod", "web.1"}} {
		ns, name, err := ParseMachineDNSName(MachineDNSName(c.ns, c.name))
		if err != nil || ns != c.ns || name != c.name {
			t.Errorf("%s/%s: got %q %q %v", c.ns, c.name, ns, name, err)
		}
	}
	for _, bad := range []string{"worker.default", "default.machine.nio", ".default.machine.nio", "worker..machine.nio", "x.example.com"} {
		if _, _, err := ParseMachineDNSName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
